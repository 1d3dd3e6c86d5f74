"""Latent-consistency sampling for rectified-flow models: each step takes the model's x0 estimate
x - sigma v and re-noises it to the next sigma with fresh noise (Luo et al. 2023, in flow-matching form).

The schedule is FlowMatchEulerDiscreteScheduler's (shift, dynamic shifting, shift_terminal, karras / exponential /
beta sigmas, custom sigmas / timesteps, invert_sigmas), with its precision notes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from .base import SchedulerOutput, randn
from .flow_match_euler import FlowMatchEulerDiscreteScheduler, scalar_times

f32 = np.float32

UPSCALE_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact")


class FlowMatchLCMScheduler(FlowMatchEulerDiscreteScheduler):
    _compatibles = ()
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        time_shift_type: str = "exponential",
        scale_factors: Sequence[float] | None = None,
        upscale_mode: str = "bicubic",
    ):
        self._setup_flow_tables()
        self.set_scale_factors(scale_factors, upscale_mode)

    def set_scale_factors(self, scale_factors: Sequence[float] | None, upscale_mode: str) -> None:
        """diffusers upscales x0 between steps by these factors (torch ``interpolate``); diffrt does not (yet),
        so only an empty list or None is accepted."""
        check_choice("upscale_mode", upscale_mode, UPSCALE_MODES, type(self).__name__)
        if scale_factors:
            raise ConfigError(
                f"scale_factors={list(scale_factors)!r} is not supported by diffrt's {type(self).__name__} "
                "(upscaling between steps needs torch's interpolate); accepted: null or an empty list."
            )
        self._scale_factors, self._upscale_mode = scale_factors, upscale_mode

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """x0 = x - sigma v, then (1 - sigma_next) x0 + sigma_next noise: the sample at the next sigma."""
        _, sigma, sigma_next = self._step_sigmas(timestep)
        x0 = sample.astype(f32) - scalar_times(sigma, model_output)
        prev = (f32(1) - sigma_next) * x0 + sigma_next * randn(x0.shape, generator, x0.dtype)
        self._step_index += 1
        return SchedulerOutput(prev.astype(model_output.dtype))
