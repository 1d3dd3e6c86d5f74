"""Euler's method in the EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2 with churn).

The sample is x = x_0 + sigma * noise and the network is wrapped in EDM's preconditioning (the paper's Table 1):
it sees c_in(sigma) x and the noise level c_noise(sigma) = log(sigma) / 4 (that is ``timesteps``), and its output
F is turned into the denoised estimate D = c_skip x + c_out F. ``EDMPreconditioning`` holds that wrapping and the
sigma schedules for both EDM schedulers (this one and EDM DPM-Solver).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

SIGMA_SCHEDULES = ("karras", "exponential")
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")


class EDMPreconditioning:
    """EDM's sigma schedules and network preconditioning (Karras et al. 2022, Table 1), for schedulers whose config
    has sigma_min, sigma_max, sigma_data, sigma_schedule, rho, num_train_timesteps and prediction_type."""

    sigmas: np.ndarray
    timesteps: np.ndarray

    def _check_edm_config(self) -> None:
        cfg, name = self.config, type(self).__name__
        check_choice("sigma_schedule", cfg.sigma_schedule, SIGMA_SCHEDULES, name)
        # diffusers takes "sample" at construction but fails at the first step
        ns.check_prediction_type(cfg.prediction_type, name, EDM_PREDICTION_TYPES)
        check_choice("final_sigmas_type", cfg.final_sigmas_type, ("zero", "sigma_min"), name)
        for field in ("sigma_min", "sigma_max"):
            if not cfg[field] > 0:  # the schedule takes log(sigma); a zero sigma_min makes the last step 0 / 0
                raise ConfigError(f"{field}={cfg[field]!r} is not supported for {name}; accepted: a positive number.")
        if cfg.sigma_schedule == "karras" and cfg.rho == 0:
            raise ConfigError(f"rho=0 is not supported for {name}'s karras schedule; accepted: a non-zero number.")
        if isinstance(cfg.num_train_timesteps, bool) or cfg.num_train_timesteps < 1:
            raise ConfigError(
                f"num_train_timesteps={cfg.num_train_timesteps!r} is not supported; accepted: a positive integer."
            )

    def _check_step_count(self, num_inference_steps) -> int:
        """Any positive integer: EDM schedules are continuous, so diffusers does not bound the count."""
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or num_inference_steps < 1
        ):
            raise ConfigError(
                f"num_inference_steps={num_inference_steps!r} is not supported by {type(self).__name__}; "
                "accepted: a positive integer."
            )
        return int(num_inference_steps)

    def _edm_sigmas(self, ramp: np.ndarray) -> np.ndarray:
        """Descending sigmas at positions ``ramp`` (0 = sigma_max, 1 = sigma_min), in the ramp's dtype (diffusers
        builds them in float64 for EDM Euler, float32 for EDM DPM-Solver).
        karras: evenly spaced in sigma^(1/rho) (eq. 5); exponential: evenly spaced in log-sigma (only the ramp's
        length counts), as k-diffusion's get_sigmas_exponential, always float32."""
        cfg = self.config
        if cfg.sigma_schedule == "exponential":
            log_sigmas = ns.torch_linspace(math.log(cfg.sigma_min), math.log(cfg.sigma_max), len(ramp))
            return ns.torch_exp32(log_sigmas)[::-1].astype(ramp.dtype)
        lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
        kind = ramp.dtype.type
        base = kind(hi) + ramp * kind(lo - hi)
        if cfg.rho in (2, 3):  # torch multiplies these powers out, rounding each product
            return base * base if cfg.rho == 2 else base * base * base
        return (base.astype(np.float64) ** cfg.rho).astype(ramp.dtype)  # float32: pow correctly rounded

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latents, sqrt(sigma_max^2 + 1) as diffusers states it."""
        return (self.config.sigma_max**2 + 1) ** 0.5

    # ----- preconditioning (Karras et al. 2022, Table 1) ---------------------------------------------------------
    def _variance(self, sigma) -> np.float32:
        """sigma^2 + sigma_data^2 in float32 (sigma_data^2 squared as a Python float, as diffusers does)."""
        sigma = np.float32(sigma)
        return sigma * sigma + np.float32(self.config.sigma_data**2)

    def precondition_inputs(self, sample: np.ndarray, sigma) -> np.ndarray:
        """c_in x with c_in = 1 / sqrt(sigma^2 + sigma_data^2): the network input at unit variance, in the sample's
        dtype (float16 latents stay float16 for the network, as in diffusers)."""
        scaled = sample * (np.float32(1) / ns.torch_sqrt32(self._variance(sigma)))
        return scaled.astype(np.float16) if sample.dtype == np.float16 else scaled

    def precondition_noise(self, sigma) -> np.ndarray:
        """c_noise = log(sigma) / 4, the noise-level input the network takes (float32, at least 1-D)."""
        with np.errstate(divide="ignore"):
            return np.float32(0.25) * ns.torch_log32(np.atleast_1d(np.asarray(sigma, dtype=np.float32)))

    def precondition_outputs(self, sample: np.ndarray, model_output: np.ndarray, sigma) -> np.ndarray:
        """The denoised estimate D = c_skip x + c_out F, with c_skip = sigma_data^2 / (sigma^2 + sigma_data^2) and
        c_out = ±sigma sigma_data / sqrt(sigma^2 + sigma_data^2) (negative for v-prediction)."""
        sigma, variance = np.float32(sigma), self._variance(sigma)
        sigma_data_sq = np.float32(self.config.sigma_data**2)
        c_skip = (np.float32(1) / variance) * sigma_data_sq  # diffusers' number / tensor is reciprocal * number
        signed = sigma if self.config.prediction_type == "epsilon" else -sigma
        c_out = signed * np.float32(self.config.sigma_data) / ns.torch_sqrt32(variance)
        return c_skip * sample + c_out * model_output

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """The network input at ``timestep``: ``precondition_inputs`` at its sigma."""
        if self._step_index is None:
            self._init_step_index(timestep)
        return self.precondition_inputs(sample, self.sigmas[self._step_index])

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x = x_0 + sigma * noise at each of ``timesteps`` (one per batch item); after ``set_begin_index`` at the
        begin (or current) step instead, as diffusers does."""
        timesteps = np.atleast_1d(np.asarray(timesteps))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        sigma = self.sigmas.astype(original_samples.dtype)[indices]
        return original_samples + noise * sigma.reshape((-1,) + (1,) * (original_samples.ndim - 1))

    def _set_schedule(self, sigmas: np.ndarray, last: float) -> None:
        """``sigmas`` (float32) become the timesteps' noise levels, followed by the final sigma ``last``."""
        self.timesteps = self.precondition_noise(sigmas)
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)


class EDMEulerScheduler(EDMPreconditioning, Scheduler):
    _compatibles = ()
    order = 1

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
    ):
        self._check_edm_config()
        self.num_inference_steps = None
        # until set_timesteps: the schedule at num_train_timesteps + 1 points
        ramp = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
        self._set_ramp(ramp)
        self._step_index = None
        self._begin_index = None

    def _set_ramp(self, ramp: np.ndarray) -> None:
        sigmas = self._edm_sigmas(ramp).astype(np.float32)
        self._set_schedule(sigmas, sigmas[-1] if self.config.final_sigmas_type == "sigma_min" else 0.0)

    def set_timesteps(self, num_inference_steps: int | None = None, sigmas: Sequence[float] | None = None) -> None:
        """``num_inference_steps`` sigmas from sigma_max down to sigma_min, or the schedule at custom ramp positions
        ``sigmas`` (values in [0, 1], 0 = sigma_max: diffusers reads this argument as positions, not noise levels);
        then the final sigma (0 or the last one, per ``final_sigmas_type``)."""
        if sigmas is None:
            n = self._check_step_count(num_inference_steps)
            ramp = ns.torch_linspace64(0, 1, n)
        else:
            ramp = np.asarray(sigmas, dtype=np.float64)
            if ramp.ndim != 1 or len(ramp) == 0 or not np.isfinite(ramp).all():
                raise ConfigError(
                    f"sigmas={sigmas!r} is not supported by {type(self).__name__}; accepted: a non-empty 1-D list "
                    "of finite ramp positions (0 = sigma_max, 1 = sigma_min)."
                )
        self._set_ramp(ramp)
        self.num_inference_steps = num_inference_steps  # None for custom sigmas, as diffusers keeps it
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
        pred_original_sample: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One Euler step from sigma_i to sigma_{i+1} on dx/dsigma = (x - D) / sigma; ``s_churn`` > 0 first raises
        the noise to sigma_hat = sigma (1 + gamma) with fresh noise. ``pred_original_sample`` replaces D."""
        if np.issubdtype(np.asarray(timestep).dtype, np.integer):
            raise ConfigError(
                f"timestep={timestep!r} is an integer; {type(self).__name__}.step takes one of scheduler.timesteps "
                "(not an index from enumerate)."
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        sample = sample.astype(np.float32, copy=False)
        sigma = self.sigmas[self._step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(gamma + 1)
        if gamma > 0:
            eps = randn(model_output.shape, generator, model_output.dtype) * np.float32(s_noise)
            sample = sample + eps * ns.torch_sqrt32(sigma_hat * sigma_hat - sigma * sigma)
        x0 = pred_original_sample
        if x0 is None:
            x0 = self.precondition_outputs(sample, model_output, sigma_hat)
        derivative = (sample - x0) / sigma_hat
        prev_sample = sample + derivative * (self.sigmas[self._step_index + 1] - sigma_hat)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
