"""Heun's second-order method on a rectified-flow ODE (SD3-style models, fixed ``shift``).

Each step sigma_i -> sigma_{i+1} takes two ``step`` calls: an Euler predictor, then the trapezoidal corrector
with the model evaluated at sigma_{i+1} (Karras et al. 2022, Algorithm 2, with optional churn). The last step, to
sigma 0, is a plain Euler step. Precision as diffusers: the inference grid and its shift in NumPy float64, rounded
to float32 once; the training table, timesteps = sigmas * N and every step in torch float32.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from . import second_order as so
from .base import Scheduler, SchedulerOutput, randn
from .flow_match_euler import check_integer_timestep, scalar_times, shift_sigmas, times_scalar, training_sigmas

f32 = np.float32


class FlowMatchHeunDiscreteScheduler(Scheduler):
    """``timesteps`` (2n - 1,) list t_1..t_{n-1} twice (corrector, then next predictor); ``sigmas`` (2n,) likewise,
    then 0."""

    _compatibles = ()
    order = 2
    init_noise_sigma = 1.0  # not in diffusers' class; flow-matching pipelines draw unit noise
    sigmas: np.ndarray

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        n = num_train_timesteps
        self.sigmas = training_sigmas(n, shift)
        self.timesteps = self.sigmas * f32(n)
        self.sigma_min, self.sigma_max = float(self.sigmas[-1]), float(self.sigmas[0])
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None
        self.prev_derivative = self.dt = self.sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (Euler) stage."""
        return self.dt is None

    def _sigma_to_t(self, sigma):
        return sigma * self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        """``num_inference_steps`` evenly spaced sigmas between the training table's ends, shifted per config."""
        n_train = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ConfigError(f"num_inference_steps={num_inference_steps!r} is not supported; accepted: an integer.")
        if num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps={num_inference_steps!r} is not supported; accepted: 1 or more.")
        n = int(num_inference_steps)
        grid = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), n) / n_train
        sigmas = shift_sigmas(grid, self.config.shift).astype(f32)
        self.timesteps = so.repeat_after_first(sigmas * f32(n_train))
        self.sigmas = np.append(so.repeat_after_first(sigmas), f32(0))
        self.num_inference_steps = n
        self.prev_derivative = self.dt = self.sample = None
        self._step_index = None
        self._begin_index = None

    def scale_noise(self, sample: np.ndarray, timestep: float, noise: np.ndarray) -> np.ndarray:
        """Flow-matching forward process sigma noise + (1 - sigma) sample at ``timestep`` (one for the batch). As
        in diffusers this fixes the step index (the begin index when set), so stepping continues from there."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return scalar_times(sigma, noise) + scalar_times(f32(1) - sigma, sample)

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """A predictor or corrector stage with velocity ``model_output``. ``s_churn`` > 0 first raises the noise
        level to sigma_hat = sigma (1 + gamma) for sigma in [s_tmin, s_tmax] (drawing noise in both stages)."""
        name = type(self).__name__
        check_integer_timestep(timestep, name)
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise ConfigError(f"{name}.step: step {i} is past the end of the {len(self.timesteps)}-entry schedule.")
        first = self.state_in_first_order
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        x = sample.astype(f32)
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * f32(gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, model_output.dtype)
            eps = times_scalar(noise, s_noise)
            x = x + times_scalar(eps, ns.torch_sqrt32(sigma_hat * sigma_hat - sigma * sigma))
        if first:
            derivative = (x - (x - times_scalar(model_output, sigma))) / sigma_hat
            self.prev_derivative, self.dt, self.sample = derivative, sigma_next - sigma_hat, x
            dt = self.dt
        else:
            derivative = (x - (x - times_scalar(model_output, sigma_next))) / sigma_next
            derivative = f32(0.5) * (self.prev_derivative + derivative)
            dt, x = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None
        self._step_index += 1
        return SchedulerOutput((x + derivative * dt).astype(model_output.dtype))
