"""Shared base of the schedulers that step on the discrete alpha_bar table: DDPM, DDIM, PNDM, LCM and TCD.

They work on variance-preserving samples x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020,
eq. 4) at integer training timesteps; this base holds the table, the x0 estimate from each prediction type, the
clipping / thresholding of x0, and the forward process.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler


class AlphaBarScheduler(Scheduler):
    """Subclasses call ``_setup_tables`` from ``__init__``."""

    abstract = True
    init_noise_sigma = 1.0

    def _setup_tables(self, accepted: tuple[str, ...] = ns.BETA_SCHEDULES) -> None:
        cfg = self.config
        self.betas = ns.betas_from_config(cfg, type(self).__name__, accepted)
        self.alphas = (1.0 - self.betas).astype(np.float32)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)  # (num_train_timesteps,) float32
        if "set_alpha_to_one" in cfg:  # alpha_bar "before" t = 0: exactly 1 (a clean end) or alpha_bar_0
            self.final_alpha_cumprod = np.float32(1.0) if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = np.arange(cfg.num_train_timesteps, dtype=np.int64)[::-1].copy()
        self.num_inference_steps = None

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in the schedule (-1 after the last), or t - 1 before set_timesteps."""
        if not (getattr(self, "custom_timesteps", False) or self.num_inference_steps):
            return int(timestep) - 1
        matches = np.flatnonzero(self.timesteps == int(timestep))
        if len(matches) == 0:
            raise ConfigError(f"timestep={timestep!r} is not in this scheduler's timesteps; pass one of them.")
        index = int(matches[0])
        return -1 if index == len(self.timesteps) - 1 else int(self.timesteps[index + 1])

    def predict_x0(self, model_output: np.ndarray, sample: np.ndarray, alpha_bar: np.float32) -> np.ndarray:
        """x_0 from the model output at a timestep with cumulative alpha ``alpha_bar`` (epsilon / v / sample)."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - ns.torch_sqrt32(1 - alpha_bar) * model_output) / ns.torch_sqrt32(alpha_bar)
        if kind == "v_prediction":  # v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)
            return ns.torch_sqrt32(alpha_bar) * sample - ns.torch_sqrt32(1 - alpha_bar) * model_output
        return model_output

    def clip_x0(self, x0: np.ndarray) -> np.ndarray:
        """Dynamic thresholding when configured, else static clipping to +-clip_sample_range when configured."""
        cfg = self.config
        if cfg.get("thresholding"):
            return ns.dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
        if cfg.get("clip_sample"):
            return np.clip(x0, -cfg.clip_sample_range, cfg.clip_sample_range)
        return x0

    def _sqrt_alpha_bars(self, timesteps, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) per batch item, shaped to broadcast against ``like``."""
        t = np.asarray(timesteps)
        if not np.issubdtype(t.dtype, np.integer):
            if not np.array_equal(t, np.round(t)):
                raise ConfigError(f"timesteps={t.tolist()} are not integers; accepted: integer training timesteps.")
            t = t.astype(np.int64)
        a = self.alphas_cumprod.astype(like.dtype)[t.reshape(-1)]
        a = a.reshape(a.shape + (1,) * (like.ndim - 1))
        return a**0.5, (1 - a) ** 0.5

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """Forward process q(x_t | x_0) at each of ``timesteps`` (one per batch item)."""
        sqrt_a, sqrt_b = self._sqrt_alpha_bars(timesteps, original_samples)
        return sqrt_a * original_samples + sqrt_b * noise

    def get_velocity(self, sample: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x_0, the v-prediction training target."""
        sqrt_a, sqrt_b = self._sqrt_alpha_bars(timesteps, sample)
        return sqrt_a * noise - sqrt_b * sample
