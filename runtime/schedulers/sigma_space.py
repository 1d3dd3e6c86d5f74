"""Shared base of the k-diffusion-style schedulers: Euler, Euler ancestral, LMS, Heun, KDPM2, KDPM2 ancestral.

They work on variance-exploding samples x = x_0 + sigma * noise with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)
(Karras et al. 2022), feeding the model x / sqrt(sigma^2 + 1). This base holds the training table, the
spacing -> interpolation -> (karras / exponential / beta) resampling that turns a step count into sigmas, the input
scaling, the x0 estimate for each prediction type, and the forward process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler


class SigmaScheduler(Scheduler):
    """Subclasses call ``_setup_tables`` from ``__init__``; ``self.sigmas`` holds the sigma of each ``timesteps``
    entry, followed by the final sigma."""

    abstract = True
    sigmas: np.ndarray

    def _setup_tables(
        self,
        accepted_betas: tuple[str, ...] = ns.BETA_SCHEDULES,
        accepted_predictions: tuple[str, ...] = ns.PREDICTION_TYPES,
    ) -> None:
        cfg, name = self.config, type(self).__name__
        ns.check_sigma_schedule(cfg)
        ns.check_prediction_type(cfg.prediction_type, name, accepted_predictions)
        check_choice("timestep_spacing", cfg.timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        self.betas = ns.betas_from_config(cfg, name, accepted_betas)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)
        if cfg.get("rescale_betas_zero_snr"):
            self.alphas_cumprod[-1] = 2.0**-24  # keeps sigma finite at zero terminal SNR
        # until set_timesteps: the training schedule, noisiest first, then sigma = 0
        total = cfg.num_train_timesteps
        self.timesteps = np.linspace(0, total - 1, total)[::-1].astype(np.float32)
        self.sigmas = np.concatenate([self._train_sigmas()[::-1], np.zeros(1, np.float32)])
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None

    def _train_sigmas(self) -> np.ndarray:
        """Training sigmas, ascending in t, float32 (the table schedules interpolate)."""
        return ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _spaced_timesteps(self, n: int, total: int | None = None) -> np.ndarray:
        """n float32 timesteps, descending, spaced per config over ``total`` training steps (default: the config's)
        (linspace stays fractional, as diffusers keeps it)."""
        cfg = self.config
        total = total or cfg.num_train_timesteps
        if cfg.timestep_spacing == "linspace":  # diffusers spaces linspace in float32 for these schedulers
            return np.linspace(0, total - 1, n, dtype=np.float32)[::-1].copy()
        return ns.spaced_timesteps(cfg.timestep_spacing, n, total, cfg.steps_offset).astype(np.float32)

    def _spaced_sigmas(
        self,
        n: int,
        timesteps: Sequence[float] | None = None,
        round_karras: bool = False,
        num_train_timesteps: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps (n,), sigmas (n,) without the final sigma) for n steps, or for explicit ``timesteps``:
        interpolated from the training table, then resampled (karras / exponential / beta) when configured, with
        timesteps read back from the resampled sigmas. ``round_karras`` rounds Karras timesteps (KDPM2's rule)."""
        cfg = self.config
        if timesteps is None:
            timesteps = self._spaced_timesteps(n, self._check_train_steps(num_train_timesteps))
        else:
            timesteps = np.asarray(timesteps, dtype=np.float32)
        train = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(len(train)), train)
        resampled = ns.resample_sigmas(cfg, sigmas, n)
        if resampled is not None:
            sigmas = resampled
            timesteps = ns.sigma_to_t(sigmas, np.log(train))  # float32 log-sigmas, as diffusers interpolates
            if round_karras and cfg.use_karras_sigmas:
                timesteps = timesteps.round()
        return timesteps, sigmas

    @staticmethod
    def _check_train_steps(num_train_timesteps) -> int | None:
        """``set_timesteps(num_train_timesteps=...)``: space the schedule over that many training steps."""
        if num_train_timesteps is None:
            return None
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
            raise ConfigError(f"num_train_timesteps={num_train_timesteps!r} is not supported; accepted: an integer.")
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps={num_train_timesteps!r} is not supported; accepted: 1 or more.")
        return int(num_train_timesteps)

    def _check_schedule_arguments(self, num_inference_steps, timesteps) -> int:
        """Exactly one of ``num_inference_steps`` / ``timesteps``; explicit timesteps exclude resampled sigmas.
        Returns the step count."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps or timesteps.")
        if timesteps is None:
            return self._check_num_inference_steps(num_inference_steps)
        if cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas") or cfg.get("use_beta_sigmas"):
            raise ConfigError(
                "timesteps cannot be given when the config resamples sigmas (karras/exponential/beta); "
                "pass num_inference_steps instead."
            )
        return len(timesteps)

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latents (leading spacing starts below the highest training sigma)."""
        max_sigma = np.float32(self.sigmas.max())
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(max_sigma)
        return float(np.sqrt(max_sigma * max_sigma + np.float32(1)))  # float32 throughout, as diffusers' tensor

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Divide by sqrt(sigma^2 + 1) so the model sees the variance-preserving input it was trained on."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / (ns.torch_sqrt32(sigma**2 + 1))

    def _predict_x0(self, model_output: np.ndarray, sample: np.ndarray, sigma, sigma_hat=None) -> np.ndarray:
        """x0 from the model output at noise level ``sigma`` (``sigma_hat``: Euler's churned level, for epsilon)."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - (sigma if sigma_hat is None else sigma_hat) * model_output
        if kind == "v_prediction":  # c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1)
            return model_output * (-sigma / ns.torch_sqrt32(sigma**2 + 1)) + sample / (sigma**2 + 1)
        return model_output

    def get_velocity(self, sample: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) sample. As diffusers' Euler does, alpha_bar is read at the
        *position* of each timestep in ``timesteps`` (one per batch item), not at the training timestep."""
        timesteps = np.atleast_1d(np.asarray(timesteps))
        if np.issubdtype(timesteps.dtype, np.integer) and not np.issubdtype(self.timesteps.dtype, np.integer):
            raise ConfigError(
                "get_velocity takes timesteps from scheduler.timesteps, not integer indices (e.g. from enumerate)."
            )
        a = self.alphas_cumprod.astype(sample.dtype)[[self.index_for_timestep(t) for t in timesteps]]
        a = a.reshape(a.shape + (1,) * (sample.ndim - 1))
        return a**0.5 * noise - (1 - a) ** 0.5 * sample

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
