"""DDIM inversion (Song et al. 2021, eq. 12 run backwards; Mokady et al. 2023, "Null-text Inversion"): the
deterministic DDIM update taken from alpha_bar at t - N // n up to alpha_bar at t, so an image's latents walk up
the noise schedule to the noise that DDIM would denoise back into them (for editing by inversion)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import SchedulerOutput
from .ddim import DDIMScheduler

logger = logging.getLogger("diffrt.schedulers")


class DDIMInverseScheduler(DDIMScheduler):
    """DDIMScheduler's tables and timesteps, ascending, stepped from the previous timestep to the given one."""

    _compatibles = ()
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        set_alpha_to_zero: bool | None = None,
    ):
        ns.check_prediction_type(prediction_type, type(self).__name__)
        self._setup_tables()
        self.timesteps = self.timesteps[::-1].copy()  # ascending: inversion walks up the schedule
        if set_alpha_to_zero is not None:
            # diffusers' deprecated spelling; despite its name its value is taken as set_alpha_to_one's
            logger.warning("DDIMInverseScheduler: set_alpha_to_zero is deprecated; use set_alpha_to_one.")
            set_alpha_to_one = set_alpha_to_zero
        # alpha_bar before t = 0, where the first inversion step starts: exactly 1 (a clean image) or alpha_bar_0
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    @property
    def initial_alpha_cumprod(self) -> np.float32:
        """diffusers' name for the alpha_bar the first step starts from (DDIM's final one)."""
        return self.final_alpha_cumprod

    def set_timesteps(self, num_inference_steps: int) -> None:
        """DDIM's ``leading`` / ``trailing`` timesteps, ascending (diffusers offers no ``linspace`` here)."""
        check_choice("timestep_spacing", self.config.timestep_spacing, ("leading", "trailing"), type(self).__name__)
        super().set_timesteps(num_inference_steps)
        self.timesteps = self.timesteps[::-1].copy()

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, with x0 and eps read from the model at t - N // n
        (``generator`` is unused: inversion is deterministic)."""
        self._require_timesteps()
        timestep = int(timestep)
        if not 0 <= timestep < self.config.num_train_timesteps:
            raise ConfigError(
                f"timestep={timestep} is not supported; accepted: a training timestep from 0 to "
                f"{self.config.num_train_timesteps - 1} (one of scheduler.timesteps)."
            )
        alpha_bar_next, alpha_bar = self._alpha_bars(timestep)  # DDIM's (current, previous), the other way round
        sqrt_a, sqrt_b = ns.torch_sqrt32(alpha_bar), ns.torch_sqrt32(1 - alpha_bar)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (sample - sqrt_b * model_output) / sqrt_a, model_output
        elif kind == "v_prediction":
            x0, eps = sqrt_a * sample - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * sample
        else:
            if sqrt_b == 0:  # diffusers divides by zero here and returns inf, then NaN
                raise ConfigError(
                    f"prediction_type='sample' cannot step {type(self).__name__} from alpha_bar = 1 (timestep "
                    f"{timestep}): the noise it implies is 0/0. With set_alpha_to_one=True every inversion starts "
                    "there; set set_alpha_to_one=False."
                )
            x0, eps = model_output, (sample - sqrt_a * model_output) / sqrt_b
        x0 = self.clip_x0(x0)
        prev_sample = ns.torch_sqrt32(alpha_bar_next) * x0 + ns.torch_sqrt32(1 - alpha_bar_next) * eps
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
