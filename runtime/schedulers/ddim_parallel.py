"""DDIM for parallel sampling (ParaDiGMS, Shih et al. 2023): DDIMScheduler plus ``batch_step_no_noise``, one
deterministic DDIM step for every batch item at its own timestep, so a window of timesteps denoises in one model
call and the pipeline solves for the whole trajectory by Picard iteration."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS
from .ddim import DDIMScheduler


class DDIMParallelScheduler(DDIMScheduler):
    """DDIMScheduler's config, timesteps and ``step``, unchanged."""

    _compatibles = KARRAS_SCHEDULERS
    _is_ode_scheduler = True  # the parallel pipeline adds no noise of its own for this scheduler

    def batch_step_no_noise(
        self,
        model_output: np.ndarray,
        timesteps: np.ndarray,
        sample: np.ndarray,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> np.ndarray:
        """The eta = 0 DDIM update of each ``sample[i]`` from ``timesteps[i]`` to ``timesteps[i] - N // n``; returns
        the previous samples. Before t = 0, alpha_bar is 1 whatever ``set_alpha_to_one`` says, as in diffusers.

        model_output, sample: (B, ...), timesteps: (B,) integer training timesteps."""
        self._require_timesteps()
        if eta != 0.0:
            raise ConfigError(
                f"DDIMParallelScheduler.batch_step_no_noise got eta={eta!r}; accepted: eta=0.0 (the parallel "
                "pipeline pre-samples the noise of every timestep itself)."
            )
        stride = self.config.num_train_timesteps // self.num_inference_steps
        alpha_bar, alpha_bar_prev = ns.alpha_bars_per_item(self.alphas_cumprod, timesteps, stride, model_output.ndim)
        sqrt_a, sqrt_b = ns.torch_sqrt32(alpha_bar), ns.torch_sqrt32(1 - alpha_bar)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (sample - sqrt_b * model_output) / sqrt_a, model_output
        elif kind == "v_prediction":
            x0, eps = sqrt_a * sample - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * sample
        else:
            x0, eps = model_output, (sample - sqrt_a * model_output) / sqrt_b
        x0 = self.clip_x0(x0)
        if use_clipped_model_output:  # re-derive eps from the clipped x0, as step does
            eps = (sample - sqrt_a * x0) / sqrt_b
        prev_sample = ns.torch_sqrt32(alpha_bar_prev) * x0 + ns.torch_sqrt32(1 - alpha_bar_prev) * eps
        return prev_sample.astype(model_output.dtype)
