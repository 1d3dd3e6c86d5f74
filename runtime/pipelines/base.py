"""What every pipeline shares: loading from an engine package, ``from_pipe``, ``__call__`` made from the class's
arguments, outputs and the progress bar."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engines import Engine, SessionSettings
from ..errors import ConfigError
from ..package import EnginePackage
from ..progress import ProgressBar
from ..schedulers import Scheduler
from ..timing import StageHook, Timed
from .arguments import CallArguments, call_taking
from .inputs import Limits


@dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, a (B, H, W, C) float array in [0, 1], or latents, per ``output_type``."""

    images: Any


@dataclass
class StableDiffusionPipelineOutput(ImagePipelineOutput):
    nsfw_content_detected: list[bool] | None = None
    """Always None: engine packages carry no safety checker."""


class DiffusionPipeline(Timed):
    """Base of the runtime pipelines. Subclasses name the networks they run in ``networks``, their call's argument
    class in ``arguments`` and do the work in ``generate(args)``; ``pipe(...)`` takes diffusers' arguments, binds
    them into one checked ``arguments`` object and calls ``generate`` with it.

    The object holds only what every call shares (package, engines, default scheduler, hooks), so one pipeline
    serves concurrent calls from several threads; each call's state lives in the call.

    ``stage_hooks`` holds callables that receive a :class:`~diffrt.runtime.timing.StageEvent` after each stage of a
    call (text encoder, each UNet run, each scheduler step, VAE); see :mod:`diffrt.runtime.timing`.
    """

    networks: ClassVar[tuple[str, ...]] = ()
    optional_networks: ClassVar[tuple[str, ...]] = ()
    arguments: ClassVar[type[CallArguments]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "arguments" in cls.__dict__:  # each class that declares its arguments gets its own signature
            cls.__call__ = call_taking(cls.arguments, cls)

    def generate(self, args: CallArguments) -> Any:
        """Run one call on its checked arguments."""
        raise NotImplementedError

    def running(self) -> contextlib.AbstractContextManager:
        """The extent of one call (pipelines whose callbacks read per-call settings track it per thread)."""
        return contextlib.nullcontext()

    def __init__(self, package: EnginePackage, scheduler: Scheduler | None = None, limits: Limits | None = None):
        package.require(self.networks, type(self).__name__)
        self.package = package
        self.limits = limits if limits is not None else Limits.of_range(package.shape_range)
        """What one call may ask for (sizes, batch, input pixels); by default the package's declared range."""
        self.scheduler = scheduler if scheduler is not None else package.scheduler()
        for name in self.networks:  # sessions are created here, once; calls reuse them
            setattr(self, name, package.engine(name))
        for name in self.optional_networks:
            setattr(self, name, package.engine(name) if package.has(name) else None)
        self._progress_bar_config: dict[str, Any] = {}
        self.stage_hooks: list[StageHook] = []

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        provider: str = "auto",
        session_settings: SessionSettings | None = None,
        scheduler: Scheduler | None = None,
        limits: Limits | None = None,
    ) -> DiffusionPipeline:
        """Open an engine package. ``provider`` picks the backend ("auto", "tensorrt", "cuda", "cpu", or an ONNX
        Runtime provider name); ``session_settings`` sets threads, precision and the rest for every engine;
        ``limits`` bounds what a call may ask (default: the sizes and batch the package was exported for)."""
        package = EnginePackage(path, provider=provider, session_settings=session_settings)
        return cls(package, scheduler=scheduler, limits=limits)

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline, scheduler: Scheduler | None = None) -> DiffusionPipeline:
        """A pipeline of this class over ``pipe``'s package: engines already created are reused, not reloaded."""
        if not isinstance(pipe, DiffusionPipeline):
            raise ConfigError(f"pipe={type(pipe).__name__} is not supported; accepted: a diffrt pipeline.")
        return cls(pipe.package, scheduler=scheduler if scheduler is not None else pipe.scheduler, limits=pipe.limits)

    @property
    def components(self) -> dict[str, Engine | Scheduler | Any]:
        names = (*self.networks, *self.optional_networks, "scheduler", "tokenizer")
        return {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}

    @property
    def vae_scale_factor(self) -> int:
        return self.package.vae_scale_factor

    # ----- progress bar, as diffusers configures it -------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """``disable=True`` silences the bar; ``desc`` labels it; ``file`` redirects it."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, total: int) -> ProgressBar:
        allowed = {k: v for k, v in self._progress_bar_config.items() if k in ("disable", "desc", "file")}
        return ProgressBar(total=total, **allowed)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={type(v).__name__}" for k, v in self.components.items())
        return f"{type(self).__name__}({str(self.package.path)!r}, {parts})"
