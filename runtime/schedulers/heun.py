"""Heun's second-order method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import noise_schedule as ns
from . import second_order as so
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .sigma_space import SigmaScheduler


class HeunDiscreteScheduler(SigmaScheduler):
    """Each step sigma_i -> sigma_{i+1} takes two ``step`` calls: an Euler predictor, then the trapezoidal
    corrector with the model evaluated at sigma_{i+1}. ``timesteps`` lists t_{i+1} twice (corrector, next
    predictor); the last step to sigma = 0 is a plain Euler step."""

    _compatibles = KARRAS_SCHEDULERS

    order = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._setup_tables(accepted_betas=(*ns.BETA_SCHEDULES, "exp"))
        self.prev_derivative = self.dt = self.sample = None  # set_timesteps builds the interleaved schedule

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (Euler) stage."""
        return self.dt is None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        num_train_timesteps: int | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Choose the inference schedule: ``num_inference_steps`` spaced per config (over ``num_train_timesteps``
        training steps when given), or explicit ``timesteps``."""
        n = self._check_schedule_arguments(num_inference_steps, timesteps)
        timesteps, sigmas = self._spaced_sigmas(n, timesteps, num_train_timesteps=num_train_timesteps)
        sigmas = np.append(sigmas, 0.0).astype(np.float32)
        # (2n,): sigma_0, then sigma_1..sigma_{n-1} twice, then 0; timesteps (2n - 1,) likewise without the 0
        self.sigmas = np.append(so.repeat_after_first(sigmas[:-1]), sigmas[-1:])
        self.timesteps = so.repeat_after_first(np.asarray(timesteps)).astype(np.float32)
        self.num_inference_steps = n
        self.prev_derivative = self.dt = self.sample = None
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Predictor: x' = x + d(x, sigma_i) dt, remembering x, d and dt.
        Corrector: x + (d + d(x', sigma_{i+1})) / 2 dt.
        ``generator`` is unused (deterministic sampler); accepted so every scheduler steps alike."""
        self._start_step(timestep)
        sample = sample.astype(np.float32, copy=False)
        first = self.state_in_first_order
        i = self._step_index if first else self._step_index - 1
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = self._predict_x0(model_output, sample, sigma if first else sigma_next)
        if self.config.clip_sample:
            x0 = np.clip(x0, -self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative = (sample - x0) / sigma
            self.prev_derivative, self.dt, self.sample = derivative, sigma_next - sigma, sample
            prev_sample = sample + derivative * self.dt
        else:
            derivative = (self.prev_derivative + (sample - x0) / sigma_next) / 2
            prev_sample = self.sample + derivative * self.dt
            self.prev_derivative = self.dt = self.sample = None
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
