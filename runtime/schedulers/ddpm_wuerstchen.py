"""DDPM on a continuous cosine schedule, as Wuerstchen and Stable Cascade sample (Pernias et al. 2023).

Time is a ratio t in [0, 1] (1 = pure noise) rather than a training-step index; alpha_bar(t) is the cosine schedule
of Nichol & Dhariwal 2021 (eq. 17), normalised to 1 at t = 0 and clamped to [1e-4, 0.9999], with t optionally
warped by ``scaler``. Each step is ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) between adjacent ratios.
The pipelines pass one ratio per batch item and run every timestep but the last (t = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

f32 = np.float32


def torch_power32(x: np.ndarray, exponent: float) -> np.ndarray:
    """float32 x ** exponent as torch evaluates it: repeated products for 2 and 3, a square root for 0.5, else
    correctly rounded (through float64)."""
    if exponent == 2:
        return x * x
    if exponent == 3:
        return x * x * x
    if exponent == 0.5:
        return ns.torch_sqrt32(x)
    return np.power(np.asarray(x, dtype=np.float64), exponent).astype(np.float32)


class DDPMWuerstchenScheduler(Scheduler):
    init_noise_sigma = 1.0

    def __init__(self, scaler: float = 1.0, s: float = 0.008):
        self._init_alpha_cumprod = self._cosine(np.array([0.0], dtype=np.float32))
        self.timesteps: np.ndarray | None = None

    def _cosine(self, t: np.ndarray) -> np.ndarray:
        """cos^2((t + s) / (1 + s) * pi / 2) in float32, in diffusers' operation order."""
        s = np.array([self.config.s], dtype=np.float32)
        angle = (t + s) / (f32(1) + s) * f32(math.pi) * f32(0.5)
        root = ns.torch_cos32(angle)
        return root * root

    def alpha_cumprod(self, t: np.ndarray) -> np.ndarray:
        """alpha_bar at ratio(s) ``t`` (float32, one per batch item)."""
        t = np.asarray(t, dtype=np.float32)
        scaler = self.config.scaler
        if scaler > 1:
            t = f32(1) - torch_power32(f32(1) - t, scaler)
        elif scaler < 1:
            t = torch_power32(t, scaler)
        return np.clip(self._cosine(t) / self._init_alpha_cumprod, f32(0.0001), f32(0.9999))

    def set_timesteps(self, num_inference_steps: int | None = None, timesteps: Sequence[float] | None = None) -> None:
        """Ratios from 1 down to 0 in ``num_inference_steps`` equal steps (n + 1 values), or custom ``timesteps``."""
        if timesteps is None:
            n = num_inference_steps
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ConfigError(
                    f"num_inference_steps={n!r} is not supported by {type(self).__name__}; accepted: a positive "
                    "integer (or custom timesteps)."
                )
            self.timesteps = ns.torch_linspace(1.0, 0.0, n + 1)
        else:
            self.timesteps = np.asarray(timesteps, dtype=np.float32).reshape(-1)
        self.num_inference_steps = len(self.timesteps) - 1

    def previous_timestep(self, timestep: np.ndarray) -> np.ndarray:
        """The ratio after ``timestep`` (the schedule entry nearest its first item), one per batch item."""
        if self.timesteps is None:
            raise ConfigError(f"{type(self).__name__}.step was called before set_timesteps(num_inference_steps).")
        t = np.atleast_1d(np.asarray(timestep, dtype=np.float32))
        index = int(np.abs(self.timesteps - t[0]).argmin())
        if index + 1 >= len(self.timesteps):
            raise ConfigError(
                f"timestep={float(t[0])} is the last of the schedule; accepted: every timestep but the last "
                "(the pipelines run timesteps[:-1])."
            )
        return np.repeat(self.timesteps[index + 1], len(t))

    def step(
        self,
        model_output: np.ndarray,
        timestep: np.ndarray,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One ancestral DDPM step from ratio t to the next one in the schedule: the posterior mean from the noise
        prediction plus fresh noise of the posterior std (none when the next ratio is 0). Draws one noise array of
        ``sample``'s shape every step."""
        dtype = model_output.dtype
        t = np.atleast_1d(np.asarray(timestep, dtype=np.float32))
        prev_t = self.previous_timestep(t)
        shape = (len(t),) + (1,) * (sample.ndim - 1)
        alpha_bar = self.alpha_cumprod(t).reshape(shape)
        alpha_bar_prev = self.alpha_cumprod(prev_t).reshape(shape)
        model_output, sample = model_output.astype(np.float32, copy=False), sample.astype(np.float32, copy=False)
        alpha = alpha_bar / alpha_bar_prev
        eps_scale = ns.torch_sqrt32(f32(1) - alpha_bar)
        mean = ns.torch_sqrt32(f32(1) / alpha) * (sample - (f32(1) - alpha) * model_output / eps_scale)
        noise = randn(mean.shape, generator)
        std = ns.torch_sqrt32((f32(1) - alpha) * (f32(1) - alpha_bar_prev) / (f32(1) - alpha_bar)) * noise
        prev_sample = mean + std * (prev_t != 0).astype(np.float32).reshape(shape)
        return SchedulerOutput(prev_sample.astype(dtype))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise at ratio(s) ``timesteps`` (one per batch item)."""
        t = np.atleast_1d(np.asarray(timesteps, dtype=np.float32))
        alpha_bar = self.alpha_cumprod(t).reshape((len(t),) + (1,) * (original_samples.ndim - 1))
        noisy = ns.torch_sqrt32(alpha_bar) * original_samples + ns.torch_sqrt32(f32(1) - alpha_bar) * noise
        return noisy.astype(original_samples.dtype)
