"""Denoising diffusion implicit models (Song et al. 2021, eq. 12): a non-Markovian sampler; eta = 0 is
deterministic, eta = 1 is DDPM's ancestral sampler on the same timesteps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .alpha_bar import AlphaBarScheduler
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn


class DDIMScheduler(AlphaBarScheduler):
    _compatibles = KARRAS_SCHEDULERS
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
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        ns.check_prediction_type(prediction_type, name)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        self._setup_tables()

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        n = self._check_num_inference_steps(num_inference_steps)
        self.num_inference_steps = n
        spaced = ns.spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        self.timesteps = spaced.astype(np.int64)

    def _alpha_bars(self, timestep: int) -> tuple[np.float32, np.float32]:
        # the previous timestep is t - N // n whatever the spacing, as diffusers steps it
        prev_t = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        return self.alphas_cumprod[timestep], alpha_bar_prev

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | int | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """x_{t-1} = sqrt(a_{t-1}) x0 + sqrt(1 - a_{t-1} - sigma_t^2) eps + sigma_t z, sigma_t = eta * sigma_DDPM."""
        self._require_timesteps()
        alpha_bar, alpha_bar_prev = self._alpha_bars(int(timestep))
        kind = self.config.prediction_type
        x0 = self.predict_x0(model_output, sample, alpha_bar)
        if kind == "epsilon":
            eps = model_output
        elif kind == "v_prediction":
            eps = ns.torch_sqrt32(alpha_bar) * model_output + ns.torch_sqrt32(1 - alpha_bar) * sample
        else:
            eps = (sample - ns.torch_sqrt32(alpha_bar) * x0) / ns.torch_sqrt32(1 - alpha_bar)
        x0 = self.clip_x0(x0)
        if use_clipped_model_output:  # re-derive eps from the clipped x0 (as in GLIDE)
            eps = (sample - ns.torch_sqrt32(alpha_bar) * x0) / ns.torch_sqrt32(1 - alpha_bar)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)  # eq. 16
        std = eta * ns.torch_sqrt32(variance)
        prev_sample = ns.torch_sqrt32(alpha_bar_prev) * x0 + ns.torch_sqrt32(1 - alpha_bar_prev - std**2) * eps
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ConfigError("DDIMScheduler.step takes generator or variance_noise, not both.")
            if variance_noise is None:
                variance_noise = randn(model_output.shape, generator, model_output.dtype)
            prev_sample = prev_sample + std * variance_noise
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
