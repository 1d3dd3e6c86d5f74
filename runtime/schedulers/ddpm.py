"""Ancestral sampling of the DDPM reverse process (Ho et al. 2020, eqs. 6-7), on any subsequence of timesteps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .alpha_bar import AlphaBarScheduler
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")


class DDPMScheduler(AlphaBarScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        name = type(self).__name__
        ns.check_prediction_type(prediction_type, name)
        check_choice("variance_type", variance_type, VARIANCE_TYPES, name)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        self._setup_tables(accepted=(*ns.BETA_SCHEDULES, "sigmoid", "laplace"))
        self.custom_timesteps = False

    def set_timesteps(self, num_inference_steps: int | None = None, timesteps: Sequence[int] | None = None) -> None:
        """Run ``num_inference_steps`` spaced per config, or the given descending integer ``timesteps``."""
        cfg = self.config
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ConfigError("set_timesteps takes one of num_inference_steps or timesteps, not both.")
            timesteps = np.asarray(timesteps, dtype=np.int64)
            if np.any(np.diff(timesteps) >= 0) or timesteps[0] >= cfg.num_train_timesteps:
                raise ConfigError(
                    f"timesteps={timesteps.tolist()} is not supported; accepted: strictly descending integers "
                    f"below num_train_timesteps ({cfg.num_train_timesteps})."
                )
            self.custom_timesteps, self.num_inference_steps = True, len(timesteps)
            self.timesteps = timesteps
            return
        n = self._check_num_inference_steps(num_inference_steps)
        spaced = ns.spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        self.custom_timesteps, self.num_inference_steps = False, n
        self.timesteps = spaced.astype(np.int64)

    def _alpha_bars(self, t: int) -> tuple[np.float32, np.float32]:
        prev_t = self.previous_timestep(t)
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        return self.alphas_cumprod[int(t)], alpha_bar_prev

    def _noise_std(self, t: int, predicted_variance: np.ndarray | None):
        """Standard deviation of the noise added at ``t`` per ``variance_type`` (an array when learned)."""
        kind = self.config.variance_type
        alpha_bar, alpha_bar_prev = self._alpha_bars(t)
        beta = 1 - alpha_bar / alpha_bar_prev
        posterior = max((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, np.float32(1e-20))  # beta tilde, eq. 7
        if kind in LEARNED_VARIANCES and predicted_variance is None:
            raise ConfigError(
                f"variance_type={kind!r} needs a model output with twice the sample's channels (prediction, "
                "variance); this one has the sample's channel count."
            )
        if kind == "fixed_small":
            return ns.torch_sqrt32(posterior)
        if kind == "fixed_small_log":
            return ns.torch_exp32(0.5 * ns.torch_log32(posterior))
        if kind == "fixed_large":
            return ns.torch_sqrt32(beta)
        if kind == "fixed_large_log":  # diffusers takes sqrt of this log-variance (NaN); we exponentiate it
            return ns.torch_exp32(0.5 * ns.torch_log32(beta))
        if kind == "learned":
            return predicted_variance**0.5
        frac = (predicted_variance + 1) / 2  # learned_range: interpolate log-variances (Nichol & Dhariwal, eq. 15)
        return ns.torch_exp32(0.5 * (frac * ns.torch_log32(beta) + (1 - frac) * ns.torch_log32(posterior)))

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Sample x_{t'} ~ q(x_{t'} | x_t, x_0 = x0_hat) for the next scheduled t' (posterior mean, eq. 7)."""
        t = int(timestep)
        channels = sample.shape[1]
        predicted_variance = None
        if self.config.variance_type in LEARNED_VARIANCES and model_output.shape[1] == 2 * channels:
            model_output, predicted_variance = model_output[:, :channels], model_output[:, channels:]
        alpha_bar, alpha_bar_prev = self._alpha_bars(t)
        alpha, beta = alpha_bar / alpha_bar_prev, 1 - alpha_bar / alpha_bar_prev
        x0 = self.clip_x0(self.predict_x0(model_output, sample, alpha_bar))
        x0_coeff = ns.torch_sqrt32(alpha_bar_prev) * beta / (1 - alpha_bar)
        sample_coeff = ns.torch_sqrt32(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            noise = randn(model_output.shape, generator, model_output.dtype)
            prev_sample = prev_sample + self._noise_std(t, predicted_variance) * noise
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
