"""Ancestral sampling with Euler steps in sigma space (k-diffusion's ``sample_euler_ancestral``; Song et al. 2021,
ancestral sampling of the reverse SDE, in the sigma parameterisation of Karras et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .sigma_space import SigmaScheduler


def get_ancestral_step(sigma_from: np.float32, sigma_to: np.float32) -> tuple[np.float32, np.float32]:
    """Split the move sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh noise of
    std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (k-diffusion ``get_ancestral_step``, eta = 1)."""
    sigma_up = ns.torch_sqrt32(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
    sigma_up = min(sigma_up, sigma_to)  # equal mathematically at most; guards the sqrt below against rounding
    sigma_down = ns.torch_sqrt32(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        # diffusers raises NotImplementedError for "sample" at the first step; refuse it up front.
        self._setup_tables(accepted_predictions=("epsilon", "v_prediction"))

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Space ``num_inference_steps`` timesteps per config; sigmas (float32, length n + 1, ending in 0)."""
        n = self._check_num_inference_steps(num_inference_steps)
        timesteps, sigmas = self._spaced_sigmas(n)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Euler step from sigma_i down to sigma_down, then add noise of std sigma_up to land at sigma_{i+1}.
        Draws one noise array of ``model_output``'s shape every step (the last one is scaled by 0)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sample = sample.astype(np.float32, copy=False)
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        x0 = self._predict_x0(model_output, sample, sigma)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next)
        derivative = (sample - x0) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)
        noise = randn(model_output.shape, generator, model_output.dtype)
        prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
