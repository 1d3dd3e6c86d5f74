"""DPM-Solver-2 in sigma space, as k-diffusion's ``sample_dpm_2`` (Lu et al. 2022, Algorithm 1 with r = 1/2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import noise_schedule as ns
from . import second_order as so
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .sigma_space import SigmaScheduler


class KDPM2DiscreteScheduler(SigmaScheduler):
    """Each step sigma_i -> sigma_{i+1} takes two ``step`` calls: an Euler step to the log-midpoint
    sigma_mid = sqrt(sigma_i sigma_{i+1}), then a full step from sigma_i along the slope found at sigma_mid.
    ``timesteps`` interleaves t_i with the fractional timestep of each sigma_mid."""

    _compatibles = KARRAS_SCHEDULERS

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        # diffusers accepts "sample" here but raises NotImplementedError at the first step; refuse it up front
        self._setup_tables(accepted_predictions=("epsilon", "v_prediction"))
        self.sample = None  # set_timesteps builds the interleaved schedule and its midpoint tables

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is the first (Euler to the midpoint) stage."""
        return self.sample is None

    def set_timesteps(self, num_inference_steps: int, num_train_timesteps: int | None = None) -> None:
        """Choose the inference schedule: ``num_inference_steps`` spaced per config (over ``num_train_timesteps``
        training steps when given)."""
        n = self._check_num_inference_steps(num_inference_steps)
        timesteps, sigmas = self._spaced_sigmas(n, round_karras=True, num_train_timesteps=num_train_timesteps)
        self.log_sigmas = np.log(self._train_sigmas())
        sigmas = np.append(sigmas, 0.0).astype(np.float32)
        t_mid = self._set_sigma_tables(sigmas).astype(timesteps.dtype)
        # (2n - 1,): t_0, then (midpoint timestep, t_{i+1}) pairs; float64 where sigmas were resampled, as diffusers
        pairs = np.stack([t_mid, timesteps[1:]], axis=1).ravel()
        self.timesteps = np.concatenate([timesteps[:1], pairs])
        self.num_inference_steps = n
        self.sample = None
        self._step_index = None
        self._begin_index = None

    def _set_sigma_tables(self, sigmas: np.ndarray) -> np.ndarray:
        """Fill the (2n + 2,) interleaved ``sigmas`` / ``sigmas_interpol`` tables from the n + 1 step sigmas;
        return the n - 1 midpoint timesteps. Entry i of sigma_mid pairs sigma_i with sigma_{i-1}."""
        sigma_mid = so.log_midpoint(sigmas, np.roll(sigmas, 1))  # entry 0 (no predecessor) is never read
        self.sigmas, self.sigmas_interpol = so.stage_table(sigmas), so.stage_table(sigma_mid)
        return so.sigma_to_t32(sigma_mid[1:-1], self.log_sigmas)

    def _stage_sigmas(self) -> tuple[np.float32, np.float32, np.float32 | None, np.float32 | None]:
        """(sigma_i, sigma_mid, sigma to land on, sigma_up) of the current stage, from the interleaved tables."""
        i = self._step_index
        if self.state_in_first_order:
            return self.sigmas[i], self.sigmas_interpol[i + 1], None, None
        return self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i], None

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Divide by sqrt(sigma^2 + 1) at the sigma the model is evaluated at (sigma_i, then sigma_mid)."""
        self._start_step(timestep)
        sigma, sigma_mid, _, _ = self._stage_sigmas()
        sigma = sigma if self.state_in_first_order else sigma_mid
        return sample / (ns.torch_sqrt32(sigma**2 + 1))

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Stage 1: x_mid = x + d(x, sigma_i) (sigma_mid - sigma_i), remembering x.
        Stage 2: x_next = x + d(x_mid, sigma_mid) (sigma_next - sigma_i) [+ sigma_up * noise when ancestral]."""
        self._start_step(timestep)
        sample = sample.astype(np.float32, copy=False)
        sigma, sigma_mid, sigma_next, sigma_up = self._stage_sigmas()
        if self.state_in_first_order:
            x0 = self._predict_x0(model_output, sample, sigma)
            prev_sample = sample + (sample - x0) / sigma * (sigma_mid - sigma)
            self.sample = sample
        else:
            x0 = self._predict_x0(model_output, sample, sigma_mid)
            prev_sample = self.sample + (sample - x0) / sigma_mid * (sigma_next - sigma)
            self.sample = None
            if sigma_up is not None:  # ancestral: fresh noise for the variance the deterministic step left out
                prev_sample = prev_sample + randn(model_output.shape, generator, model_output.dtype) * sigma_up
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
