"""Ancestral DDPM sampling as unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents") runs it for its prior and decoder, and Kandinsky 2.1 for its prior.

The DDPM posterior step (Ho et al. 2020, eqs. 6-7) between any two training timesteps t and prev_timestep (the
pipelines pass the next timestep of the schedule), on the cosine schedule, with the posterior std either fixed (the
"small" variance, via its log) or interpolated in log space by the model (Nichol & Dhariwal 2021, eq. 15).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .alpha_bar import AlphaBarScheduler
from .base import SchedulerOutput, randn

VARIANCE_TYPES = ("fixed_small_log", "learned_range")

f32 = np.float32


class UnCLIPScheduler(AlphaBarScheduler):
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: str = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        beta_schedule: str = "squaredcos_cap_v2",
    ):
        name = type(self).__name__
        check_choice("beta_schedule", beta_schedule, ("squaredcos_cap_v2",), name)
        # diffusers accepts the next two at construction and raises at the first step; refuse them up front
        check_choice("prediction_type", prediction_type, ("epsilon", "sample"), name)
        check_choice("variance_type", variance_type, VARIANCE_TYPES, name)
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps={num_train_timesteps} is not supported; accepted: 1 or more.")
        self.betas = ns.betas_for_alpha_bar(num_train_timesteps)
        self.alphas = (f32(1) - self.betas).astype(np.float32)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)
        self.timesteps = np.arange(num_train_timesteps, dtype=np.int64)[::-1].copy()
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """n integer timesteps evenly spread over [0, N - 1], both ends included (n >= 2)."""
        n = self._check_num_inference_steps(num_inference_steps)
        total = self.config.num_train_timesteps
        if n < 2:  # the spacing divides by n - 1 (diffusers: ZeroDivisionError)
            raise ConfigError(
                f"num_inference_steps={n} is not supported by {type(self).__name__}; accepted: 2 or more."
            )
        ratio = (total - 1) / (n - 1)
        self.timesteps = (np.arange(0, n) * ratio).round()[::-1].astype(np.int64)
        self.num_inference_steps = n

    def _coefficients(self, t: int, prev_timestep: int) -> tuple:
        """(alpha_bar_t, alpha_bar_prev, beta, alpha) of the step t -> prev_timestep (alpha_bar = 1 before 0)."""
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else f32(1)
        if prev_timestep == t - 1:
            return alpha_bar, alpha_bar_prev, self.betas[t], self.alphas[t]
        beta = f32(1) - alpha_bar / alpha_bar_prev
        return alpha_bar, alpha_bar_prev, beta, f32(1) - beta

    def _log_variance(self, t: int, prev_timestep: int, predicted_variance: np.ndarray | None):
        """Posterior std for fixed_small_log (exp(0.5 log max(var, 1e-20))), or the model's log-variance for
        learned_range: frac * log(beta) + (1 - frac) * log(posterior variance), frac = (v + 1) / 2."""
        alpha_bar, alpha_bar_prev, beta, _ = self._coefficients(t, prev_timestep)
        variance = (f32(1) - alpha_bar_prev) / (f32(1) - alpha_bar) * beta
        if self.config.variance_type == "fixed_small_log":
            return ns.torch_exp32(f32(0.5) * ns.torch_log32(max(variance, f32(1e-20))))
        frac = (predicted_variance + f32(1)) / f32(2)
        return frac * ns.torch_log32(beta) + (f32(1) - frac) * ns.torch_log32(variance)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        prev_timestep: int | None = None,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One posterior step from ``timestep`` to ``prev_timestep`` (default timestep - 1). A model output with
        twice the sample's channels carries the variance (learned_range). Draws one noise array of the sample's
        shape unless timestep is 0."""
        t = int(timestep)
        prev_timestep = t - 1 if prev_timestep is None else int(prev_timestep)
        if not 0 <= t < self.config.num_train_timesteps or prev_timestep >= t:
            raise ConfigError(
                f"timestep={t}, prev_timestep={prev_timestep} is not supported; accepted: 0 <= prev_timestep < "
                f"timestep < num_train_timesteps ({self.config.num_train_timesteps}), or prev_timestep=-1 at the end."
            )
        dtype = model_output.dtype
        model_output, sample = model_output.astype(np.float32, copy=False), sample.astype(np.float32, copy=False)
        predicted_variance = None
        if self.config.variance_type == "learned_range" and model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = np.split(model_output, 2, axis=1)
        elif self.config.variance_type == "learned_range" and t > 0:
            raise ConfigError(
                f"variance_type='learned_range' needs a model output with twice the sample's channels (the variance "
                f"half); got {model_output.shape[1]} channels for a sample with {sample.shape[1]}."
            )
        alpha_bar, alpha_bar_prev, beta, alpha = self._coefficients(t, prev_timestep)
        if self.config.prediction_type == "epsilon":
            x0 = (sample - ns.torch_sqrt32(f32(1) - alpha_bar) * model_output) / ns.torch_sqrt32(alpha_bar)
        else:
            x0 = model_output
        if self.config.clip_sample:
            x0 = np.clip(x0, -self.config.clip_sample_range, self.config.clip_sample_range)
        x0_coeff = ns.torch_sqrt32(alpha_bar_prev) * beta / (f32(1) - alpha_bar)
        sample_coeff = ns.torch_sqrt32(alpha) * (f32(1) - alpha_bar_prev) / (f32(1) - alpha_bar)
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            noise = randn(model_output.shape, generator)
            std = self._log_variance(t, prev_timestep, predicted_variance)
            if self.config.variance_type == "learned_range":
                std = ns.torch_exp32(f32(0.5) * std)
            prev_sample = prev_sample + std * noise
        return SchedulerOutput(prev_sample.astype(dtype), x0.astype(dtype))
