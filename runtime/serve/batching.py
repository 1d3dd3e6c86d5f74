"""Step-level batching: the concurrent calls of one model share one UNet run per denoising step.

Each request runs its own pipeline call in its own thread, exactly as it would alone: its own scheduler copy, step
count, guidance scale, noise stream, prompt embeddings and adapters. Only the UNet run is shared. The pipeline's
``unet`` is a :class:`StepBatcher`, which looks like an engine: a call hands it its feeds and blocks; the batcher's
thread gathers the calls waiting at the same moment whose feeds can be stacked, runs the UNet once on the stacked
rows and gives each call its own rows back. A call joins the batch at its first UNet run and leaves it after its
last; between steps it does only scheduler arithmetic, so the batcher waits (a few milliseconds at most,
``max_wait_s``) for every member of the same size before it runs, which keeps concurrent calls in step.

What can share a run:

- the same latent size and the same feeds (guidance doubles a call's rows; a call without guidance brings single
  rows: both stack);
- the same LoRA factors (they are graph inputs for the whole run, not per row): calls with different adapter sets
  run apart;
- timesteps: a UNet exported with one timestep per sample (``timestep`` of shape ``(batch,)``, diffrt's export)
  stacks calls at any step; one that takes a scalar timestep (older packages, other exporters) stacks only calls at
  the same timestep.

The rows a run stacks are independent in every network diffrt exports (no layer mixes samples), so each call gets
what its own run would give, to float rounding of the batched kernels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engines import Engine

BatchHook = Callable[[int, int, float], None]
"""Called after each shared run with (calls, rows, seconds)."""


@dataclass(eq=False)
class _Waiting:
    feeds: Mapping[str, np.ndarray]
    outputs: tuple[str, ...] | None
    size_key: tuple
    key: tuple
    rows: int
    member: int
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class StepBatcher:
    """An engine in front of the UNet engine that stacks the runs of concurrent calls (see the module's text).

    ``max_rows``: most UNet rows one run takes (a call bigger than that runs alone); ``max_wait_s``: how long the
    first call waiting may wait for the other members of its size; ``hooks`` hear of every run.
    """

    def __init__(self, engine: Engine, max_rows: int | None = None, max_wait_s: float = 0.05) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.hooks: list[BatchHook] = []
        spec = engine.inputs.get("timestep")
        self.per_sample_timestep = spec is not None and len(spec.shape) == 1
        self._batched = {name for name, info in engine.inputs.items() if info.shape and info.shape[0] == "batch"}
        if self.per_sample_timestep:
            self._batched.add("timestep")
        self._cv = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._members: dict[int, tuple] = {}  # thread id -> size key of a call between its UNet runs
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="diffrt-step-batcher", daemon=True)
        self._thread.start()

    # ----- the Engine protocol -----------------------------------------------------------------------------------
    @property
    def inputs(self):
        return self.engine.inputs

    @property
    def outputs(self):
        return self.engine.outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, feeds: Mapping[str, np.ndarray], output_names=None) -> dict[str, np.ndarray]:
        """Run the UNet on ``feeds`` with whichever other calls are at a step now; this call's rows only."""
        rows = int(np.asarray(feeds["sample"]).shape[0])
        size_key, key = self._keys(feeds)
        outputs = tuple(output_names) if output_names is not None else None
        item = _Waiting(feeds, outputs, size_key, (key, outputs), rows, threading.get_ident())
        with self._cv:
            if self._closed:
                raise RuntimeError("the step batcher is closed (the server is shutting down)")
            self._members[item.member] = size_key
            self._waiting.append(item)
            self._cv.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def leave(self) -> None:
        """The calling thread's call has run its last UNet step (or stopped): nobody waits for it any more."""
        with self._cv:
            if self._members.pop(threading.get_ident(), None) is not None:
                self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    # ----- grouping ---------------------------------------------------------------------------------------------
    def _keys(self, feeds: Mapping[str, np.ndarray]) -> tuple[tuple, tuple]:
        """(size key, full key): calls of one size wait for each other; calls of one full key stack."""
        size, full = [], []
        for name in sorted(feeds):
            value = np.asarray(feeds[name])
            if name in self._batched:
                part = (name, value.shape[1:], value.dtype.str)
                size.append(part)
                full.append(part)
            elif name == "timestep":  # a scalar timestep: only calls at the same timestep stack
                full.append((name, float(value.reshape(-1)[0]) if value.size else None, value.shape))
            else:  # run-wide inputs (LoRA factors): the same arrays, which the adapter feeds cache hands out
                full.append((name, id(feeds[name]), value.shape))
        return tuple(size), tuple(full)

    def _take(self) -> list[_Waiting] | None:
        """The next group to run, once its size's members are all waiting or the first has waited long enough;
        None when closed. Called with the condition held."""
        while True:
            if self._closed:
                return None
            if not self._waiting:
                self._cv.wait()
                continue
            first = self._waiting[0]
            expected = sum(1 for key in self._members.values() if key == first.size_key)
            here = sum(1 for w in self._waiting if w.size_key == first.size_key)
            left = first.arrived + self.max_wait_s - time.monotonic()
            if here < expected and left > 0:
                self._cv.wait(timeout=left)
                continue
            group, rows = [], 0
            for item in self._waiting:
                if item.key != first.key:
                    continue
                if group and self.max_rows is not None and rows + item.rows > self.max_rows:
                    break
                group.append(item)
                rows += item.rows
            for item in group:
                self._waiting.remove(item)
            return group

    def _loop(self) -> None:
        while True:
            with self._cv:
                group = self._take()
            if group is None:
                with self._cv:
                    for item in self._waiting:
                        item.error = RuntimeError("the step batcher is closed (the server is shutting down)")
                        item.done.set()
                    self._waiting.clear()
                return
            start = time.perf_counter()
            try:
                results = self._run(group)
            except BaseException as error:  # every waiting call hears of it; the batcher lives on
                for item in group:
                    item.error = error
                    item.done.set()
                continue
            seconds = time.perf_counter() - start
            for item, result in zip(group, results):
                item.result = result
                item.done.set()
            for hook in tuple(self.hooks):
                try:
                    hook(len(group), sum(item.rows for item in group), seconds)
                except Exception:  # a metrics hook never stops the UNet
                    pass

    def _run(self, group: list[_Waiting]) -> list[dict[str, np.ndarray]]:
        if len(group) == 1:
            item = group[0]
            return [self.engine.run(item.feeds, item.outputs)]
        first = group[0].feeds
        feeds = {
            name: np.concatenate([np.asarray(item.feeds[name]) for item in group])
            if name in self._batched
            else first[name]
            for name in first
        }
        out = self.engine.run(feeds, group[0].outputs)
        results, start = [], 0
        for item in group:
            results.append({name: value[start : start + item.rows] for name, value in out.items()})
            start += item.rows
        return results
