"""The server's state, apart from HTTP: its settings, the models it holds, their queues, the jobs it remembers."""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines import SessionSettings
from .errors import ServeError
from .jobs import Job, JobSpec, ModelQueue, check_spec
from .metrics import Metrics
from .models import ServedModel

log = logging.getLogger("diffrt.serve")


@dataclass
class ServeConfig:
    """What the server allows and how it runs. Sizes are also bounded by each package's own exported range."""

    max_queue: int = 32
    """Jobs that may wait per model; more are refused with 429 and a Retry-After."""
    max_batch: int = 4
    """Jobs of one model that run at once (their UNet runs share one batch per step)."""
    step_batching: bool = True
    api_keys: tuple[str, ...] = ()
    max_side: int = 2048
    max_pixels: int = 1024 * 1024
    """Most pixels (width x height) of the images one request makes."""
    max_steps: int = 150
    max_n: int = 8
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    """Most pixels an uploaded image may declare; checked from its header, before it is decoded."""
    request_timeout_s: float | None = None
    """Default deadline of a request (queue wait included); a request may ask for less."""
    shutdown_deadline_s: float = 30.0
    default_steps: int = 20
    preview_every: int = 1
    """Previews every this many steps, for progress endpoints: the package's tiny VAE decoder when it has one
    (``diffrt export --preview-vae``), else a linear latent-to-RGB map (microseconds)."""
    keep_jobs: int = 256
    """Finished jobs (with their images) remembered for GET /v1/jobs/{id}, at most this many..."""
    keep_jobs_s: float = 900.0
    """...and for at most this many seconds after they finish."""
    provider: str = "auto"
    threads: int | None = None
    session_settings: SessionSettings | None = None
    loras: Mapping[str, Mapping[str, str | os.PathLike]] = field(default_factory=dict)
    """Per model name: {adapter name: LoRA file} loaded at start; requests pick them with ``adapters``."""


class Server:
    """Models by name, each with its queue; the jobs submitted to them."""

    def __init__(self, models: Mapping[str, str | os.PathLike], config: ServeConfig | None = None) -> None:
        if not models:
            raise ValueError("a server needs at least one model package; accepted: {name: package folder}")
        self.paths = {name: Path(path) for name, path in models.items()}
        self.config = config or ServeConfig()
        self.metrics = Metrics()
        self.queues: dict[str, ModelQueue] = {}
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.current_model = next(iter(self.paths))
        self.load_error: str | None = None
        self.started = time.time()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """Which server answered (/readyz): a replica's name behind a load balancer."""
        self._lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._ready = threading.Event()
        self.draining = False
        self._shutdown_lock = threading.Lock()
        self._stopped = False

    # ----- start and stop ---------------------------------------------------------------------------------------
    def start(self, background: bool = True) -> None:
        """Load every model (once); in a background thread by default, so /healthz answers while they load."""
        with self._lock:
            if self._loading is not None:
                return
            self._loading = threading.Thread(target=self._load, name="diffrt-load", daemon=True)
            self._loading.start()
        if not background:
            self.wait_ready()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        if self.load_error is not None:
            raise RuntimeError(self.load_error)
        return self._ready.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.load_error is None

    def _load(self) -> None:
        config = self.config
        settings = config.session_settings
        if settings is None and config.threads is not None:
            settings = SessionSettings(intra_op_threads=config.threads)
        try:
            for name, path in self.paths.items():
                start = time.perf_counter()
                model = ServedModel(
                    name,
                    path,
                    provider=config.provider,
                    session_settings=settings,
                    step_batching=config.step_batching,
                )
                for adapter, file in config.loras.get(name, {}).items():
                    model.base.load_lora_weights(str(file), adapter_name=adapter)
                if config.loras.get(name):
                    model.base.disable_lora()  # requests choose adapters themselves
                model.base.stage_hooks.append(self.metrics.stage_hook(name))
                if model.batcher is not None:
                    model.batcher.hooks.append(self.metrics.batch_hook(name))
                workers = config.max_batch
                self.queues[name] = ModelQueue(model, workers, config.max_queue, self.metrics)
                log.info("model %s loaded from %s in %.1f s", name, path, time.perf_counter() - start)
        except Exception as error:  # reported by /readyz and every request
            self.load_error = f"loading the models failed: {type(error).__name__}: {error}"
            log.error(self.load_error)
        self._ready.set()

    def drain(self) -> None:
        """Refuse new jobs from now on (SIGTERM): running and queued ones go on."""
        self.draining = True
        for q in self.queues.values():
            q.stop_accepting()

    def shutdown(self, deadline_s: float | None = None) -> None:
        """Take no new jobs, let running ones finish within the deadline, cancel the rest, stop the workers."""
        self.drain()
        with self._shutdown_lock:  # a second caller (SIGTERM, then the app's lifespan) waits for the first
            if self._stopped:
                return
            deadline = self.config.shutdown_deadline_s if deadline_s is None else deadline_s
            threads = [threading.Thread(target=q.shutdown, args=(deadline,)) for q in self.queues.values()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            self._stopped = True

    # ----- jobs -------------------------------------------------------------------------------------------------
    def queue(self, model: str | None) -> ModelQueue:
        if self.load_error is not None:
            raise ServeError(503, self.load_error)
        if not self._ready.is_set():
            raise ServeError(
                503, "the models are still loading; retry when /readyz answers 200", None, {"Retry-After": "5"}
            )
        name = model or self.current_model
        if name not in self.queues:
            raise ServeError(
                404 if model else 422,
                f"model {name!r} is not served here; accepted: {', '.join(self.queues)}",
                "model",
            )
        return self.queues[name]

    def model(self, name: str | None) -> ServedModel:
        return self.queue(name).model

    def submit(self, spec: JobSpec) -> Job:
        if self.draining:
            raise ServeError(503, "the server is shutting down and takes no new jobs; retry on another replica")
        q = self.queue(spec.model)
        check_spec(q.model, spec)
        job = Job(spec)
        q.submit(job)
        with self._lock:
            self.jobs[job.id] = job
            self._evict()
        return job

    def _evict(self) -> None:
        """Forget the oldest finished jobs beyond ``keep_jobs``, and finished jobs older than ``keep_jobs_s``."""
        now = time.time()
        for job_id, job in list(self.jobs.items()):
            old = job.finished_state and job.finished is not None and now - job.finished > self.config.keep_jobs_s
            if old or (len(self.jobs) > self.config.keep_jobs and job.finished_state):
                del self.jobs[job_id]

    def forget(self, job: Job) -> None:
        """A job whose result was delivered in its response (the synchronous APIs): nothing to keep."""
        with self._lock:
            self.jobs.pop(job.id, None)

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ServeError(404, f"job {job_id!r} is not known here (finished jobs are kept for a while)", "id")
        return job

    def cancel(self, job: Job, why: str = "cancelled") -> None:
        self.queues[job.spec.model].cancel(job, why)

    def running_jobs(self) -> list[Job]:
        return [job for q in self.queues.values() for job in q.running]

    def queued_count(self) -> int:
        return sum(q.depth for q in self.queues.values())

    def info(self) -> dict[str, Any]:
        return {name: {"path": str(q.model.path), "sha256": q.model.info.sha256} for name, q in self.queues.items()}
