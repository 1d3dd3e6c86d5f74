"""Per-stage timing hooks: where a pipeline call spends its time, for benchmarks and for production metrics.

A pipeline calls each hook in ``pipe.stage_hooks`` with a :class:`StageEvent` after every stage it runs:

- ``text_encoder``: one prompt encoding (per prompt batch; the negative prompt is a second event);
- ``unet``: one UNet run, with the denoising ``step`` (host-device copies included on GPU backends);
- ``scheduler``: the scheduler's work for one ``step`` (``scale_model_input`` and ``step``, guidance arithmetic);
- ``vae_encoder`` / ``vae_decoder``: encoding the input image / decoding the latents;
- ``depth_estimator``: the depth estimate of depth-to-image.

:class:`StageTimings` is a ready hook that collects the events and summarises them::

    timings = StageTimings()
    pipe.stage_hooks.append(timings)
    pipe("a photo of a cat", num_inference_steps=20)
    timings.summary()  # {"unet": {"calls": 40, "total_s": ..., "mean_s": ..., ...}, ...}

With no hook registered a stage costs one list check. Engines run synchronously (their outputs are NumPy arrays on
the host), so wall-clock time around a stage is that stage's time on the GPU backends too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STAGES = ("text_encoder", "text_encoder_2", "unet", "scheduler", "vae_encoder", "vae_decoder", "depth_estimator")


@dataclass(frozen=True)
class StageEvent:
    """One stage of a pipeline call: its name, its wall-clock seconds, and the denoising step (else None)."""

    stage: str
    seconds: float
    step: int | None = None


StageHook = Callable[[StageEvent], None]


class StageTimings:
    """A stage hook that keeps every event; :meth:`summary` aggregates them per stage."""

    def __init__(self) -> None:
        self.events: list[StageEvent] = []

    def __call__(self, event: StageEvent) -> None:
        self.events.append(event)

    def clear(self) -> None:
        self.events.clear()

    def seconds(self, stage: str) -> list[float]:
        """Every duration recorded for ``stage``, in call order."""
        return [event.seconds for event in self.events if event.stage == stage]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per stage (in pipeline order): calls, total, mean, min and max seconds."""
        result: dict[str, dict[str, float]] = {}
        names = [*STAGES, *sorted({e.stage for e in self.events} - set(STAGES))]
        for stage in names:
            values = self.seconds(stage)
            if values:
                total = sum(values)
                result[stage] = {
                    "calls": len(values),
                    "total_s": total,
                    "mean_s": total / len(values),
                    "min_s": min(values),
                    "max_s": max(values),
                }
        return result


class Timed:
    """The pipelines' side: ``with self.timed("unet", step=i): ...`` reports to every hook in ``stage_hooks``."""

    stage_hooks: list[StageHook]

    @contextmanager
    def timed(self, stage: str, step: int | None = None) -> Iterator[None]:
        if not self.stage_hooks:
            yield
            return
        start = time.perf_counter()
        yield
        self.emit(stage, time.perf_counter() - start, step)

    def emit(self, stage: str, seconds: float, step: int | None = None) -> None:
        """Report a stage timed by the caller (one made of several pieces, like a scheduler step)."""
        event = StageEvent(stage, seconds, step)
        for hook in tuple(self.stage_hooks):
            hook(event)
