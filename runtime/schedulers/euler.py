"""Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 2 with churn)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

logger = logging.getLogger("diffrt.schedulers")


class EulerDiscreteScheduler(Scheduler):
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
        ns.check_sigma_schedule(self.config)
        ns.check_prediction_type(prediction_type, name)
        check_choice("interpolation_type", interpolation_type, ("linear", "log_linear"), name)
        check_choice("timestep_type", timestep_type, ("discrete", "continuous"), name)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"), name)
        self.betas = ns.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, owner=name)
        if rescale_betas_zero_snr:
            self.betas = ns.rescale_zero_terminal_snr(self.betas)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24  # keeps sigma finite at zero terminal SNR
        sigmas = ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)[::-1]
        self.timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].astype(np.float32)
        if self._continuous_timesteps:
            self.timesteps = (0.25 * np.log(sigmas)).astype(np.float32)
        self.sigmas = np.concatenate([sigmas, np.zeros(1, np.float32)])
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None

    @property
    def _continuous_timesteps(self) -> bool:
        return self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latents (leading spacing starts below the highest training sigma)."""
        max_sigma = float(self.sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Divide by sqrt(sigma^2 + 1) so the model sees the variance-preserving input it was trained on."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Choose the inference schedule: ``num_inference_steps`` spaced per config, or explicit ``timesteps``
        or ``sigmas`` (as diffusers' pipelines accept them)."""
        cfg = self.config
        given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps, timesteps or sigmas.")
        resampled = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        if timesteps is not None and (resampled or self._continuous_timesteps):
            raise ConfigError(
                "timesteps cannot be given when the config resamples sigmas (karras/exponential/beta) or uses "
                "continuous timesteps; pass num_inference_steps or sigmas instead."
            )
        train_sigmas = ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas.astype(np.float64))
        if sigmas is not None:
            sigmas = np.asarray(sigmas, dtype=np.float32)
            self.num_inference_steps = len(sigmas) - 1
            timesteps = ns.sigma_to_t(sigmas[:-1], log_sigmas)
        else:
            if timesteps is not None:
                timesteps = np.asarray(timesteps, dtype=np.float32)
                n = len(timesteps)
            else:
                n = self._check_num_inference_steps(num_inference_steps)
                timesteps = ns.spaced_timesteps(
                    cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset, round_linspace=False
                )
                if cfg.timestep_spacing == "linspace":  # diffusers spaces linspace in float32 here
                    timesteps = np.linspace(0, cfg.num_train_timesteps - 1, n, dtype=np.float32)[::-1].copy()
            self.num_inference_steps = n
            if cfg.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
            else:
                sigmas = np.exp(np.linspace(log_sigmas[-1], log_sigmas[0], n + 1, dtype=np.float32))
            resampled_sigmas = ns.resample_sigmas(cfg, sigmas, n)
            if resampled_sigmas is not None:
                sigmas = resampled_sigmas
                timesteps = ns.sigma_to_t(sigmas, log_sigmas)
            last = float(train_sigmas[0]) if cfg.final_sigmas_type == "sigma_min" else 0.0
            sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.sigmas = sigmas.astype(np.float32)
        if self._continuous_timesteps:
            self.timesteps = (0.25 * np.log(self.sigmas[:-1])).astype(np.float32)
        else:
            self.timesteps = np.asarray(timesteps).astype(np.float32)
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
            sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5
        x0 = self._predict_x0(model_output, sample, sigma, sigma_hat)
        derivative = (sample - x0) / sigma_hat
        prev_sample = sample + derivative * (self.sigmas[self._step_index + 1] - sigma_hat)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)

    def _predict_x0(self, model_output, sample, sigma, sigma_hat):
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma_hat * model_output
        if kind == "v_prediction":  # c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1)
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return model_output

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x_t = x_0 + sigma_t * noise at each of ``timesteps`` (one per batch item)."""
        timesteps = np.atleast_1d(np.asarray(timesteps))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        sigma = self.sigmas[indices].astype(original_samples.dtype)
        sigma = sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
        return original_samples + noise * sigma
