"""Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 2 with churn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .sigma_space import SigmaScheduler


class EulerDiscreteScheduler(SigmaScheduler):
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
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ):
        name = type(self).__name__
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"), name)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"), name)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), name)
        self._setup_tables()
        if self._continuous_timesteps:
            self.timesteps = (0.25 * np.log(self.sigmas[:-1])).astype(np.float32)

    @property
    def _continuous_timesteps(self) -> bool:
        """v-prediction models trained on continuous time take t = log(sigma) / 4 (the EDM convention)."""
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Choose the inference schedule: ``num_inference_steps`` spaced per config, or explicit ``timesteps``
        or ``sigmas`` (as diffusers' pipelines accept them)."""
        cfg = self.config
        if sum(x is not None for x in (num_inference_steps, timesteps, sigmas)) != 1:
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps, timesteps or sigmas.")
        if timesteps is not None and self._continuous_timesteps:
            raise ConfigError("timesteps cannot be given with continuous timesteps; pass num_inference_steps.")
        train = self._train_sigmas()
        if sigmas is not None:
            sigmas = np.asarray(sigmas, dtype=np.float32)
            n = len(sigmas) - 1
            timesteps = ns.sigma_to_t(sigmas[:-1], np.log(train))
        else:
            n = self._check_schedule_arguments(num_inference_steps, timesteps)
            if cfg.interpolation_type == "linear":
                timesteps, sigmas = self._spaced_sigmas(n, timesteps)
            else:  # evenly spaced in log-sigma over the whole training range, then resampled if configured
                timesteps = self._spaced_timesteps(n) if timesteps is None else np.asarray(timesteps, np.float32)
                log_train = np.log(train)
                sigmas = np.exp(np.linspace(log_train[-1], log_train[0], n + 1, dtype=np.float32))
                resampled = ns.resample_sigmas(cfg, sigmas, n)
                if resampled is not None:
                    sigmas, timesteps = resampled, ns.sigma_to_t(resampled, log_train)
            last = float(train[0]) if cfg.final_sigmas_type == "sigma_min" else 0.0
            sigmas = np.concatenate([sigmas, [last]])
        self.sigmas = sigmas.astype(np.float32)
        if self._continuous_timesteps:
            self.timesteps = (0.25 * np.log(self.sigmas[:-1])).astype(np.float32)
        else:
            self.timesteps = np.asarray(timesteps).astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

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
        """One Euler step from sigma_i to sigma_{i+1}; ``s_churn`` > 0 first raises the noise to sigma_hat."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sample = sample.astype(np.float32, copy=False)
        sigma = self.sigmas[self._step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(gamma + 1)
        if gamma > 0:
            eps = randn(model_output.shape, generator, model_output.dtype) * s_noise
            sample = sample + eps * ns.torch_sqrt32(sigma_hat**2 - sigma**2)
        x0 = self._predict_x0(model_output, sample, sigma, sigma_hat)
        derivative = (sample - x0) / sigma_hat
        prev_sample = sample + derivative * (self.sigmas[self._step_index + 1] - sigma_hat)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
