"""DDPM for parallel sampling (ParaDiGMS, Shih et al. 2023): DDPMScheduler plus ``batch_step_no_noise``, the
posterior mean of every batch item at its own timestep; the parallel pipeline pre-samples and adds the noise."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS
from .ddpm import LEARNED_VARIANCES, DDPMScheduler


class DDPMParallelScheduler(DDPMScheduler):
    """DDPMScheduler's config, timesteps and ``step``, unchanged."""

    _compatibles = KARRAS_SCHEDULERS
    _is_ode_scheduler = False  # the parallel pipeline adds its pre-sampled noise

    def batch_step_no_noise(self, model_output: np.ndarray, timesteps: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The DDPM posterior mean (Ho et al. 2020, eq. 7) of each ``sample[i]`` from ``timesteps[i]`` to
        ``timesteps[i] - N // n``, n = num_inference_steps (before set_timesteps, n = N: one training step back).

        model_output: (B, C, ...) or (B, 2C, ...) with a learned variance (ignored here); sample: (B, C, ...);
        timesteps: (B,) integer training timesteps."""
        if self.custom_timesteps:  # diffusers would stride by a stale or absent step count
            raise ConfigError(
                "DDPMParallelScheduler.batch_step_no_noise steps t -> t - num_train_timesteps // num_inference_steps; "
                "after set_timesteps(timesteps=...) that is undefined; accepted: set_timesteps(num_inference_steps)."
            )
        channels = sample.shape[1]
        if self.config.variance_type in LEARNED_VARIANCES and model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]
        n = self.num_inference_steps or self.config.num_train_timesteps
        stride = self.config.num_train_timesteps // n
        alpha_bar, alpha_bar_prev = ns.alpha_bars_per_item(self.alphas_cumprod, timesteps, stride, model_output.ndim)
        alpha = alpha_bar / alpha_bar_prev
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - ns.torch_sqrt32(1 - alpha_bar) * model_output) / ns.torch_sqrt32(alpha_bar)
        elif kind == "v_prediction":
            x0 = ns.torch_sqrt32(alpha_bar) * sample - ns.torch_sqrt32(1 - alpha_bar) * model_output
        else:
            x0 = model_output
        x0 = self.clip_x0(x0)
        x0_coeff = ns.torch_sqrt32(alpha_bar_prev) * (1 - alpha) / (1 - alpha_bar)
        sample_coeff = ns.torch_sqrt32(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        return (x0_coeff * x0 + sample_coeff * sample).astype(model_output.dtype)
