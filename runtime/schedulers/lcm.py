"""Latent Consistency Model multistep sampling (Luo et al. 2023, "Latent Consistency Models", Algorithm 3)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .alpha_bar import AlphaBarScheduler
from .base import SchedulerOutput, randn

logger = logging.getLogger("diffrt.schedulers")


class LCMSchedulerOutput(SchedulerOutput):
    """``pred_original_sample`` holds LCM's boundary-conditioned x0 estimate, which diffusers calls ``denoised``."""

    @property
    def denoised(self) -> np.ndarray | None:
        return self.pred_original_sample


class LCMScheduler(AlphaBarScheduler):
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,  # recorded but unused: the schedule comes from original_inference_steps
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",  # recorded but unused, as in diffusers
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        ns.check_prediction_type(prediction_type, name)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        self._setup_tables()
        self.custom_timesteps = False
        self._step_index = None
        self._begin_index = None

    # ----- the timestep schedule -----------------------------------------------------------------------------
    def _origin_timesteps(self, original_inference_steps: int | None, strength: float) -> tuple[np.ndarray, int]:
        """The distillation schedule (ascending, every N // original_steps, ending at N - 1) cut to ``strength``,
        and the original step count."""
        total = self.config.num_train_timesteps
        steps = self.config.original_inference_steps if original_inference_steps is None else original_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= total:
            raise ConfigError(
                f"original_inference_steps={steps!r} is not supported by {type(self).__name__}; "
                f"accepted: an integer from 1 to num_train_timesteps ({total})."
            )
        k = total // int(steps)
        return np.arange(1, int(steps * strength) + 1, dtype=np.int64) * k - 1, int(steps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        """``num_inference_steps`` evenly spaced (by index) picks from the ``original_inference_steps`` distillation
        schedule, or explicit ``timesteps``. ``strength`` < 1 (image-to-image) keeps only the noisiest part of it."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps or timesteps.")
        if num_inference_steps is not None:
            num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"strength={strength!r} is not supported; accepted: a number in (0, 1].")
        origin, original_steps = self._origin_timesteps(original_inference_steps, strength)
        if timesteps is not None:
            timesteps = self._check_custom_timesteps(timesteps, origin, original_steps, strength)
            self.num_inference_steps = len(timesteps)
            self.custom_timesteps = True
            t_start = self.num_inference_steps - min(int(self.num_inference_steps * strength), self.num_inference_steps)
            timesteps = timesteps[t_start * self.order :]
        else:
            n = num_inference_steps
            if n > len(origin) or n > original_steps:  # the schedule is a subset of the origin schedule
                raise ConfigError(
                    f"num_inference_steps={n} is not supported by {type(self).__name__} with "
                    f"original_inference_steps={original_steps} and strength={strength}; accepted: at most "
                    f"{min(len(origin), original_steps)} (int(original_inference_steps * strength))."
                )
            self.num_inference_steps = n
            indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
            timesteps = origin[::-1][indices]
        self.timesteps = np.asarray(timesteps, dtype=np.int64)
        self._step_index = None
        self._begin_index = None

    def _check_custom_timesteps(self, timesteps, origin, original_steps, strength) -> np.ndarray:
        timesteps = np.asarray(timesteps, dtype=np.int64)
        total = self.config.num_train_timesteps
        if timesteps.ndim != 1 or len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0) or timesteps[0] >= total:
            raise ConfigError(
                f"timesteps={timesteps.tolist()} is not supported; accepted: a strictly descending list of "
                f"integers below num_train_timesteps ({total})."
            )
        if strength == 1.0 and timesteps[0] != total - 1:
            logger.warning("Custom timesteps start at %d, not num_train_timesteps - 1 (%d).", timesteps[0], total - 1)
        off_schedule = sorted(set(timesteps[1:].tolist()) - set(origin.tolist()), reverse=True)
        if off_schedule:
            logger.warning("Custom timesteps %s are not on the distillation schedule.", off_schedule)
        if len(timesteps) > original_steps:
            logger.warning("%d custom timesteps exceed original_inference_steps (%d).", len(timesteps), original_steps)
        return timesteps

    # ----- one step ------------------------------------------------------------------------------------------
    def get_scalings_for_boundary_condition_discrete(self, timestep: int) -> tuple[np.float32, np.float32]:
        """Consistency-model boundary condition (Song et al. 2023, eq. 7 with sigma_data = 0.5): c_skip -> 1 and
        c_out -> 0 as t -> 0, with t scaled by ``timestep_scaling`` so both are near their limits already."""
        self.sigma_data = 0.5
        t = np.float32(timestep) * np.float32(self.config.timestep_scaling)  # float32, as diffusers' tensor math
        c_skip = np.float32(self.sigma_data**2) / (t**2 + np.float32(self.sigma_data**2))
        c_out = t / (t**2 + np.float32(self.sigma_data**2)) ** np.float32(0.5)
        return c_skip, c_out

    def _prev_alpha_prod(self, prev_timestep: int) -> np.float32:
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> LCMSchedulerOutput:
        """Map x_t to the trajectory's origin with the consistency function, then (unless this is the last step)
        re-noise it to the next timestep with fresh noise."""
        i = self._start_step(timestep)
        t = int(timestep)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        alpha_prod_t, alpha_prod_prev = self.alphas_cumprod[t], self._prev_alpha_prod(prev_t)
        sample = sample.astype(np.float32, copy=False)
        x0 = self.clip_x0(self.predict_x0(model_output.astype(np.float32, copy=False), sample, alpha_prod_t))
        c_skip, c_out = self.get_scalings_for_boundary_condition_discrete(t)
        denoised = c_out * x0 + c_skip * sample
        if i != self.num_inference_steps - 1:
            noise = randn(model_output.shape, generator, model_output.dtype).astype(np.float32, copy=False)
            prev_sample = ns.torch_sqrt32(alpha_prod_prev) * denoised + ns.torch_sqrt32(1 - alpha_prod_prev) * noise
        else:
            prev_sample = denoised
        self._step_index += 1
        return LCMSchedulerOutput(prev_sample.astype(model_output.dtype), denoised.astype(model_output.dtype))
