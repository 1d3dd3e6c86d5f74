"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

A consistency model maps a noisy sample at any noise level straight to clean data. Each step takes that estimate,
with the boundary-condition scalings that make the map the identity at sigma_min (the paper's eq. 7 and appendix C),
and re-noises it to the next, lower level of a Karras schedule (Karras et al. 2022, eq. 5) in the variance-exploding
parameterisation x = x0 + sigma * noise. The model's time input is 250 log(sigma).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn


def karras_sigmas_at(ramp: np.ndarray, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """Karras et al. 2022, eq. 5, at arbitrary positions ``ramp`` in [0, 1] (0 -> sigma_max, 1 -> sigma_min)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray) -> np.ndarray:
    """The model's time input for noise level sigma: 1000 * 0.25 * log(sigma) (Karras et al. 2022, Table 1)."""
    return 1000 * 0.25 * np.log(np.asarray(sigmas, dtype=np.float64) + 1e-44)


class CMStochasticIterativeScheduler(Scheduler):
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 40,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        s_noise: float = 1.0,
        rho: float = 7.0,
        clip_denoised: bool = True,
    ):
        if num_train_timesteps < 2:  # the schedule's ramp divides by num_train_timesteps - 1
            raise ConfigError(f"num_train_timesteps={num_train_timesteps} is not supported; accepted: 2 or more.")
        self.init_noise_sigma = sigma_max
        # Until set_timesteps: the training discretisation, float64 without a final sigma, as diffusers keeps it.
        self.sigmas = karras_sigmas_at(np.linspace(0, 1, num_train_timesteps), sigma_min, sigma_max, rho)
        self.timesteps = sigma_to_t(self.sigmas)
        self.num_inference_steps = None
        self.custom_timesteps = False
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps: int | None = None, timesteps: Sequence[int] | None = None) -> None:
        """Pick training steps (``num_inference_steps`` evenly, ``leading``-style, or descending custom integer
        ``timesteps`` below num_train_timesteps), map them to Karras sigmas and to the model's time input
        250 log(sigma) (float64, as diffusers keeps them), and end the sigmas (float32, n + 1) with sigma_min."""
        cfg = self.config
        total = cfg.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps or timesteps.")
        if timesteps is not None:
            steps = np.asarray(timesteps)
            if steps.ndim != 1 or len(steps) == 0 or not np.array_equal(steps, np.round(steps)):
                raise ConfigError(f"timesteps={timesteps!r} is not supported; accepted: a list of integers.")
            if np.any(np.diff(steps) >= 0):
                raise ConfigError(f"timesteps={list(timesteps)} is not supported; accepted: strictly descending.")
            if steps[0] >= total:
                raise ConfigError(
                    f"timesteps={list(timesteps)} starts at or after num_train_timesteps ({total}); accepted: "
                    f"integers below {total}."
                )
            steps = steps.astype(np.int64)
            self.custom_timesteps = True
        else:
            n = self._check_num_inference_steps(num_inference_steps)
            steps = (np.arange(0, n) * (total // n)).round()[::-1].astype(np.int64)
            self.custom_timesteps = False
        sigmas = karras_sigmas_at(steps[::-1] / (total - 1), cfg.sigma_min, cfg.sigma_max, cfg.rho)
        self.timesteps = sigma_to_t(sigmas)
        self.sigmas = np.concatenate([sigmas, [cfg.sigma_min]]).astype(np.float32)
        self.num_inference_steps = len(steps)
        self._step_index = None
        self._begin_index = None

    def _scalar(self, value: float):
        """A constant in the precision of the sigma table (float32 after set_timesteps, float64 before)."""
        return self.sigmas.dtype.type(value)

    def _sqrt(self, x):
        """Square root in the table's precision (float32 through ``ns.torch_sqrt32``, where torch's kernel rounds)."""
        return ns.torch_sqrt32(x)[()] if self.sigmas.dtype == np.float32 else np.sqrt(x)

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Divide by sqrt(sigma^2 + sigma_data^2): the model's c_in (Karras et al. 2022, Table 1)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        scale = self._sqrt(sigma * sigma + self._scalar(self.config.sigma_data**2))
        return sample / scale.astype(sample.dtype)

    def get_scalings_for_boundary_condition(self, sigma) -> tuple:
        """(c_skip, c_out) that make the consistency function the identity at sigma_min (Song et al. 2023,
        appendix C): c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = (sigma - sigma_min) sd / sqrt(sigma^2
        + sd^2). Operations in diffusers' order (its python-number / tensor divides as reciprocal, then multiplies)."""
        cfg, s = self.config, self._scalar
        offset = sigma - s(cfg.sigma_min)
        c_skip = s(1) / (offset * offset + s(cfg.sigma_data**2)) * s(cfg.sigma_data**2)
        c_out = offset * s(cfg.sigma_data) / self._sqrt(sigma * sigma + s(cfg.sigma_data**2))
        return c_skip, c_out

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Denoise to the consistency estimate (clipped to [-1, 1] when ``clip_denoised``), then add fresh noise
        of std sqrt(sigma_next^2 - sigma_min^2). A one-step schedule draws no noise."""
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
            raise ConfigError(
                f"timestep={timestep!r} is an integer index; accepted: one of scheduler.timesteps (float values)."
            )
        cfg, s = self.config, self._scalar
        if self._step_index is None:
            self._init_step_index(timestep)
        self._check_step_in_range()
        i = self._step_index
        sigma = self.sigmas[i]
        sigma_next = self.sigmas[i + 1] if i + 1 < cfg.num_train_timesteps else self.sigmas[-1]
        c_skip, c_out = self.get_scalings_for_boundary_condition(sigma)
        dtype = model_output.dtype
        work = np.float32 if dtype == np.float16 else dtype
        denoised = c_out.astype(work) * model_output.astype(work) + c_skip.astype(work) * sample.astype(work)
        if cfg.clip_denoised:
            denoised = np.clip(denoised, -1, 1)
        if len(self.timesteps) > 1:
            noise = randn(model_output.shape, generator, work)
        else:
            noise = np.zeros(model_output.shape, work)
        sigma_hat = min(max(sigma_next, s(cfg.sigma_min)), s(cfg.sigma_max))
        spread = self._sqrt(sigma_hat * sigma_hat - s(cfg.sigma_min**2))
        prev_sample = denoised + noise * np.asarray(cfg.s_noise, work) * spread.astype(work)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(dtype))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x = x0 + sigma * noise at each of ``timesteps`` (one per batch item), looked up in the schedule."""
        timesteps = np.atleast_1d(np.asarray(timesteps))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        sigma = self.sigmas.astype(original_samples.dtype)[indices]
        return original_samples + noise * sigma.reshape(sigma.shape + (1,) * (original_samples.ndim - 1))
