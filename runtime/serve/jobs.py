"""Jobs and the queue that runs them: one bounded queue per model, workers that run whole pipeline calls, and the
events each job publishes (queued position, step i of n, ETA, preview, done / failed / cancelled).

A model has ``max_batch`` workers: that many of its jobs run at once, each a pipeline call in its own thread, and
their UNet runs meet in the model's step batcher. A job waits in the queue (``max_queue`` at most; a full queue is
refused with 429 and a Retry-After) until a worker is free. Cancelling takes effect at the next step boundary: the
job's step callback raises, the call unwinds, the worker takes the next job. A deadline is checked the same way.
AUTOMATIC1111's ``interrupt`` is gentler, as in the web UI: the remaining steps are skipped and the image so far is
decoded and returned.
"""

from __future__ import annotations

import collections
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from ..errors import DiffrtError, NonFiniteError
from .errors import ServeError
from .models import ServedModel

log = logging.getLogger("diffrt.serve")

STATES = ("queued", "running", "done", "failed", "cancelled")
SHUTTING_DOWN = "stopped by the server shutting down"


def _cancel_status(why: str) -> int:
    """499 (client closed request) for a job its client cancelled; 503 for one the server stopped."""
    return 503 if why == SHUTTING_DOWN else 499


class JobStopped(Exception):
    """Raised from a job's step callback to stop its call: cancelled, past its deadline, or the server stopping."""

    def __init__(self, state: str, status: int, message: str) -> None:
        super().__init__(message)
        self.state, self.status, self.message = state, status, message


@dataclass
class JobSpec:
    """What one request asks for, checked by the API layer; the pipeline checks the rest when the job starts."""

    model: str
    task: str  # txt2img / img2img / inpaint
    prompt: str
    negative_prompt: str | None = None
    n: int = 1
    width: int | None = None
    height: int | None = None
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    scheduler: tuple[str, tuple[tuple[str, Any], ...]] = ("", ())
    adapters: dict[str, Any] | None = None
    strength: float = 0.8
    eta: float = 0.0
    image: PIL.Image.Image | None = None
    mask: PIL.Image.Image | None = None
    timeout_s: float | None = None
    preview_every: int = 0
    """Publish a low-cost preview every this many steps (0: none)."""

    def call_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt or None,
            "num_images_per_prompt": self.n,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "generator": self.seed,
            "eta": self.eta,
            "adapters": self.adapters,
            "output_type": "pil",
        }
        if self.task == "txt2img":
            kwargs.update(height=self.height, width=self.width)
        else:
            kwargs.update(image=self.image, strength=self.strength)
            if self.task == "inpaint":
                kwargs.update(mask_image=self.mask, height=self.height, width=self.width)
        return kwargs


@dataclass(eq=False)
class Job:
    spec: JobSpec
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    step: int = 0
    total_steps: int = 0
    images: list[PIL.Image.Image] = field(default_factory=list)
    error: ServeError | None = None
    interrupted: bool = False
    seconds_per_step: float | None = None
    _cancel: str | None = None  # why, once asked
    _events: list[dict[str, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    # The latest preview, drawn only when someone asks for it (a tiny-VAE decode costs a few ms per step; most
    # previews are never fetched): a ready image, or the function that draws it.
    _preview: PIL.Image.Image | Callable[[], PIL.Image.Image | None] | None = None

    @property
    def preview(self) -> PIL.Image.Image | None:
        """The latest progress preview, drawn on first access; None before the first."""
        with self._cond:
            if callable(self._preview):
                self._preview = self._preview()
            return self._preview

    @preview.setter
    def preview(self, value: PIL.Image.Image | Callable[[], PIL.Image.Image | None] | None) -> None:
        with self._cond:
            self._preview = value

    @property
    def finished_state(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def deadline(self) -> float | None:
        return None if self.spec.timeout_s is None else self.created + self.spec.timeout_s

    def eta_s(self) -> float | None:
        if self.finished_state:
            return 0.0
        if self.seconds_per_step is None or not self.total_steps:
            return None
        return self.seconds_per_step * max(self.total_steps - self.step, 0)

    def publish(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._events.append({"seq": len(self._events), **event})
            self._cond.notify_all()
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener()

    def events_since(self, seq: int) -> list[dict[str, Any]]:
        with self._cond:
            return self._events[seq:]

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.finished_state, timeout)

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (from any thread) after each event; returns the function that stops it."""
        with self._cond:
            self._listeners.append(listener)

        def stop() -> None:
            with self._cond:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.spec.model,
            "task": self.spec.task,
            "state": self.state,
            "step": self.step,
            "total_steps": self.total_steps,
            "eta_s": self.eta_s(),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "seed": self.spec.seed,
            "error": None if self.error is None else self.error.body()["error"],
        }


class Previewer:
    """A low-cost preview of latents: the package's tiny VAE decoder when it has one (``pipe.decode_preview``: a
    ``--preview-vae`` graph, or the package's own AutoencoderTiny); else a linear map from latent channels to RGB,
    fitted per model by least squares on the (final latents, decoded image) pairs of the jobs it has finished, and a
    grey-scale view of the first latent channel until one has."""

    def __init__(self) -> None:
        self._map: np.ndarray | None = None
        self._lock = threading.Lock()

    def learn(self, latents: np.ndarray, images: list[PIL.Image.Image]) -> None:
        if self._map is not None or not images:
            return
        c, h, w = latents.shape[1:]
        rgb = np.stack([np.asarray(im.convert("RGB").resize((w, h), PIL.Image.BOX), np.float32) / 255 for im in images])
        x = latents[: len(rgb)].transpose(0, 2, 3, 1).reshape(-1, c)
        x = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1)
        solution, *_ = np.linalg.lstsq(x, rgb.reshape(-1, 3), rcond=None)
        with self._lock:
            self._map = solution.astype(np.float32)

    def image(self, latents: np.ndarray, pipe: Any = None) -> PIL.Image.Image:
        decoded = self.decoded(latents[:1], pipe)
        if decoded is not None:
            return decoded
        first = latents[0]
        if self._map is None:
            channel = first[0]
            span = float(channel.max() - channel.min()) or 1.0
            gray = (channel - channel.min()) / span
            return PIL.Image.fromarray((gray * 255).astype(np.uint8)).convert("RGB")
        c = first.shape[0]
        x = first.transpose(1, 2, 0).reshape(-1, c)
        rgb = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1) @ self._map
        rgb = np.clip(rgb.reshape(first.shape[1], first.shape[2], 3), 0, 1)
        return PIL.Image.fromarray((rgb * 255).astype(np.uint8))

    @staticmethod
    def decoded(latents: np.ndarray, pipe: Any) -> PIL.Image.Image | None:
        """The first image drawn by the pipeline's tiny preview decoder; None without one, or when it fails."""
        decode = getattr(pipe, "decode_preview", None)
        if decode is None:
            return None
        try:
            images = decode(latents)
        except Exception:  # a preview never fails a job
            log.warning("preview decoder failed; previews fall back to the linear map", exc_info=True)
            return None
        return images[0] if images else None


class ModelQueue:
    """The bounded queue of one model and the workers that run its jobs."""

    def __init__(self, model: ServedModel, workers: int, max_queue: int, metrics: Any = None) -> None:
        self.model = model
        self.max_queue = max_queue
        self.metrics = metrics
        self.previewer = Previewer()
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._running: set[Job] = set()
        self._accepting = True
        self._stopping = False
        self._durations: collections.deque[float] = collections.deque(maxlen=20)
        self._threads = [
            threading.Thread(target=self._work, name=f"diffrt-{model.name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # ----- submitting -------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cv:
            if not self._accepting:
                raise ServeError(503, "the server is shutting down and takes no new jobs; retry on another replica")
            if len(self._waiting) >= self.max_queue:
                retry = max(1, round(self.expected_wait_s()))
                raise ServeError(
                    429,
                    f"the queue of model {self.model.name!r} is full ({self.max_queue} jobs waiting); retry after "
                    f"{retry} s",
                    None,
                    {"Retry-After": str(retry)},
                )
            self._waiting.append(job)
            self._cv.notify()
            position = len(self._waiting)
        self._gauge()
        job.publish({"type": "queued", "position": position})
        return job

    def expected_wait_s(self) -> float:
        """Seconds a job submitted now would wait: the jobs ahead over the workers, at the recent job time."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return mean * (len(self._waiting) + 1) / max(len(self._threads), 1)

    def position(self, job: Job) -> int | None:
        with self._cv:
            for i, waiting in enumerate(self._waiting):
                if waiting is job:
                    return i + 1
        return None

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> list[Job]:
        with self._cv:
            return list(self._running)

    def cancel(self, job: Job, why: str = "cancelled") -> None:
        """Stop ``job``: taken out of the queue now, or stopped at its next step boundary when running."""
        with self._cv:
            if job in self._waiting:
                self._waiting.remove(job)
                queued = True
            else:
                queued = False
                if not job.finished_state:
                    job._cancel = why
        if queued:
            self._gauge()
            self._finish(job, "cancelled", ServeError(_cancel_status(why), f"job {job.id} was {why} while queued"))

    # ----- running ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running.add(job)
            self._gauge()
            try:
                self._run(job)
            except BaseException as error:  # a worker never dies of a job
                log.exception("job %s: unexpected failure", job.id)
                if not job.finished_state:
                    self._finish(
                        job, "failed", ServeError(500, f"job {job.id} failed: {type(error).__name__}: {error}")
                    )
            finally:
                with self._cv:
                    self._running.discard(job)
                    self._cv.notify_all()
                self._gauge()

    def _run(self, job: Job) -> None:
        spec, model = job.spec, self.model
        if job.deadline is not None and time.time() > job.deadline:
            self._finish(
                job, "failed", ServeError(504, f"job {job.id} passed its deadline of {spec.timeout_s:g} s while queued")
            )
            return
        job.state, job.started = "running", time.time()
        job.publish({"type": "started"})
        batcher = model.batcher
        last_step = [time.perf_counter()]
        final: dict[str, np.ndarray] = {}

        def on_step(pipe: Any, i: int, t: Any, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            now = time.perf_counter()
            total = int(pipe.num_timesteps)
            job.step, job.total_steps = i + 1, total
            took = now - last_step[0]
            last_step[0] = now
            job.seconds_per_step = took if job.seconds_per_step is None else 0.7 * job.seconds_per_step + 0.3 * took
            if i + 1 >= total and batcher is not None:
                batcher.leave()
            final["latents"] = tensors["latents"]
            self._check_stop(job)
            if job.interrupted:
                pipe._interrupt = True
                if batcher is not None:
                    batcher.leave()
            event: dict[str, Any] = {"type": "step", "step": i + 1, "total": total, "eta_s": job.eta_s()}
            if spec.preview_every and ((i + 1) % spec.preview_every == 0 or i + 1 == total):
                latents = np.array(tensors["latents"], copy=True)
                job.preview = functools.partial(self.previewer.image, latents, pipe)
                event["preview"] = True
            job.publish(event)
            return {}

        try:
            pipe = model.pipeline(spec.task, spec.scheduler)
            kwargs = spec.call_kwargs()
            output = pipe(**kwargs, callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
        except JobStopped as stop:
            self._finish(job, stop.state, ServeError(stop.status, stop.message))
            return
        except ServeError as error:
            self._finish(job, "failed", error)
            return
        except NonFiniteError as error:
            self._finish(job, "failed", ServeError(422, str(error).rstrip("."), "guidance_scale"))
            return
        except DiffrtError as error:
            self._finish(job, "failed", ServeError(422, str(error).rstrip("."), _field_of(str(error))))
            return
        finally:
            if batcher is not None:
                batcher.leave()
        job.images = list(output.images)
        if "latents" in final:
            try:
                self.previewer.learn(final["latents"], job.images)
            except Exception:  # a preview never fails a job
                pass
        self._durations.append(time.time() - job.started)
        self._finish(job, "done", None)

    def _check_stop(self, job: Job) -> None:
        if job._cancel is not None:
            raise JobStopped("cancelled", _cancel_status(job._cancel), f"job {job.id} was {job._cancel}")
        if job.deadline is not None and time.time() > job.deadline:
            raise JobStopped("failed", 504, f"job {job.id} passed its deadline of {job.spec.timeout_s:g} s")

    def _finish(self, job: Job, state: str, error: ServeError | None) -> None:
        job.error = error
        job.finished = time.time()
        with job._cond:
            job.state = state
        if self.metrics is not None:
            self.metrics.job_finished(self.model.name, job)
        event: dict[str, Any] = {"type": state}
        if error is not None:
            event["error"] = error.body()["error"]
        job.publish(event)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue(self.model.name, len(self._waiting), len(self._running))

    # ----- stopping ---------------------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        with self._cv:
            self._accepting = False

    def shutdown(self, deadline_s: float) -> None:
        """Take no new jobs; let queued and running jobs finish until ``deadline_s`` has passed, then cancel what
        is left (at its next step) and wait for the workers."""
        self.stop_accepting()
        end = time.monotonic() + deadline_s
        with self._cv:
            self._cv.wait_for(lambda: not self._waiting and not self._running, max(0.0, end - time.monotonic()))
            left = list(self._waiting) + list(self._running)
        for job in left:
            self.cancel(job, SHUTTING_DOWN)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=max(1.0, end - time.monotonic() + 10))
        self.model.close()


def _field_of(message: str) -> str | None:
    """The argument a pipeline error names first (``height=...`` -> ``height``), mapped to the API's field."""
    first = message.split(" ", 1)[0]
    if "=" not in first:
        return None
    head = first.split("=", 1)[0]
    names = {"num_inference_steps": "steps", "num_images_per_prompt": "n", "mask_image": "mask"}
    return names.get(head, head) if head.isidentifier() else None


def check_spec(model: ServedModel, spec: JobSpec) -> None:
    """What the package decides, checked before the job is queued: the task and scheduler exist for this model,
    the size is within what it was exported for, the images fit its batch."""
    pipe = model.pipeline(spec.task, spec.scheduler)
    try:
        if spec.height is not None and spec.width is not None:
            pipe.check_size(spec.height, spec.width)
    except DiffrtError as error:
        raise ServeError(422, str(error).rstrip("."), _field_of(str(error))) from None
    try:
        pipe.limits.check_batch(spec.n, pipe._limits_source)
    except DiffrtError as error:
        raise ServeError(422, str(error).rstrip("."), "n") from None


__all__ = ["Job", "JobSpec", "JobStopped", "ModelQueue", "Previewer", "STATES", "check_spec"]
