"""A call's own state. One pipeline object serves many threads at once; everything a call sets lives here.

- :class:`CallState`: the settings diffusers' callbacks read through the pipeline (``pipe.guidance_scale``,
  ``pipe.num_timesteps``...) and may change (``pipe._guidance_scale = 0.0`` for dynamic guidance,
  ``pipe._interrupt = True`` to stop). The pipeline answers those names for the call running in the asking
  thread (:class:`CallScope`), so callbacks keep working unchanged while other threads run other calls.
- :class:`Call`: the working set: the checked arguments, the call's copy of the scheduler, its noise stream and
  its encoded prompts.
- :class:`DenoisingTensors`: what each denoising step feeds the UNet, under the names callbacks address them by.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..adapters import EMPTY_FEEDS, AdapterFeeds
from ..errors import ConfigError
from ..schedulers import Scheduler
from .arguments import PromptArguments
from .feature_cache import FeatureCache


@dataclass
class CallState:
    """One call's settings as its callbacks see them through the pipeline."""

    guidance_scale: float
    guidance_rescale: float = 0.0
    clip_skip: int | None = None
    guidance_embedding: bool = False
    """The UNet takes the guidance scale as an input (``time_cond_proj_dim``: LCM), so no guidance is run."""
    num_timesteps: int = 0
    interrupt: bool = False
    denoising_start: float | None = None
    denoising_end: float | None = None

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs only above 1, and not for UNets that take the guidance scale as input (LCM)."""
        return self.guidance_scale > 1 and not self.guidance_embedding


class CallScope:
    """Which :class:`CallState` a pipeline's properties answer for, per thread: the running call's, or after it the
    last finished one's (diffusers' attributes outlive the call). A call made from inside another call's callback
    hands the outer call its state back when it ends."""

    def __init__(self, idle: CallState) -> None:
        self.idle = idle  # what a thread that has made no call yet reads: the pipeline's defaults
        self._local = threading.local()

    @property
    def state(self) -> CallState:
        return getattr(self._local, "state", None) or self.idle

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The extent of one call in this thread (:meth:`use` sets its state once it has one)."""
        depth = getattr(self._local, "depth", 0)
        outer = getattr(self._local, "state", None) if depth else None
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if outer is not None:
                self._local.state = outer

    def use(self, state: CallState) -> None:
        self._local.state = state


class CallSettings:
    """The settings diffusers' callbacks read (and may set) on the pipeline, answered for the call running in the
    asking thread: ``guidance_scale``, ``_guidance_scale``, ``do_classifier_free_guidance``, ``num_timesteps``,
    ``interrupt`` / ``_interrupt``. The pipeline keeps its :class:`CallScope` in ``_calls``."""

    _calls: CallScope

    def running(self):
        return self._calls.running()

    @property
    def guidance_scale(self) -> float:
        return self._calls.state.guidance_scale

    @property
    def _guidance_scale(self) -> float:
        return self._calls.state.guidance_scale

    @_guidance_scale.setter
    def _guidance_scale(self, value: float) -> None:
        """Callbacks set it (diffusers' dynamic guidance recipe: 0 stops guidance from the next step on)."""
        self._calls.state.guidance_scale = float(value)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._calls.state.do_classifier_free_guidance

    @property
    def num_timesteps(self) -> int:
        return self._calls.state.num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._calls.state.interrupt

    @property
    def _interrupt(self) -> bool:
        return self._calls.state.interrupt

    @_interrupt.setter
    def _interrupt(self, value: bool) -> None:
        """Callbacks set it to stop the running call: its remaining steps are skipped."""
        self._calls.state.interrupt = bool(value)


@dataclass
class Call:
    """One call's working set, made once from its arguments and handed down by name."""

    args: PromptArguments
    state: CallState
    scheduler: Scheduler
    """The call's own copy of the pipeline's scheduler: it holds per-run state (timesteps, step index, history)."""
    generator: np.random.Generator
    batch: int
    """Images made: prompts x num_images_per_prompt."""
    prompt_embeds: np.ndarray  # (batch, tokens, hidden), each prompt's copies adjacent
    negative_prompt_embeds: np.ndarray | None = None  # same shape; None without guidance
    pooled_prompt_embeds: np.ndarray | None = None  # SDXL: (batch, projection_dim)
    negative_pooled_prompt_embeds: np.ndarray | None = None
    timestep_cond: np.ndarray | None = None  # LCM: the guidance-scale embedding (batch, time_cond_proj_dim)
    lora: AdapterFeeds = EMPTY_FEEDS
    """The LoRA factors this call feeds its networks (its adapter set, fixed when it starts)."""
    feature_cache: FeatureCache | None = None
    """DeepCache: the deep UNet features this call's shallow steps reuse (None: every step runs the whole UNet)."""

    def guided(self, positive: np.ndarray, negative: np.ndarray | None) -> np.ndarray:
        """What the UNet sees: [negative; positive] stacked under guidance, else the positive alone."""
        return np.concatenate([negative, positive]) if self.state.do_classifier_free_guidance else positive

    def doubled(self, tensor: np.ndarray) -> np.ndarray:
        """``tensor`` (batch, ...) repeated for both halves of a guided UNet batch."""
        return np.concatenate([tensor] * 2) if self.state.do_classifier_free_guidance else tensor


@dataclass
class DenoisingTensors:
    """The tensors of the denoising loop. Batches are the UNet's (doubled under guidance) except ``latents`` and
    ``negative_prompt_embeds``. Callbacks name them as diffusers does; each pipeline says which it offers."""

    latents: np.ndarray  # (batch, C, h, w)
    prompt_embeds: np.ndarray  # (UNet batch, tokens, hidden)
    negative_prompt_embeds: np.ndarray | None = None
    mask: np.ndarray | None = None  # inpainting: (UNet batch, 1, h, w), 1 where repainted
    masked_image_latents: np.ndarray | None = None  # inpainting: (UNet batch, C, h, w)
    depth_mask: np.ndarray | None = None  # depth-to-image: (UNet batch, 1, h, w) in [-1, 1]
    add_text_embeds: np.ndarray | None = None  # SDXL: pooled text embeddings (UNet batch, projection_dim)
    add_time_ids: np.ndarray | None = None  # SDXL: sizes, crop corner, score (UNet batch, 5 or 6)

    def named(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in names}

    def replace(self, outputs: dict[str, Any] | None, allowed: tuple[str, ...]) -> None:
        """Take the tensors a callback returned, those it may replace; other names are ignored, as in diffusers."""
        if outputs is not None and not isinstance(outputs, dict):
            raise ConfigError(
                f"callback_on_step_end returned {type(outputs).__name__}; accepted: None or a dict of tensors by name "
                f"(any of {', '.join(allowed)})."
            )
        for name, value in (outputs or {}).items():
            if name in allowed:
                setattr(self, name, np.asarray(value, dtype=np.float32))
