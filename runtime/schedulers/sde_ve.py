"""Predictor-corrector sampling of the variance-exploding SDE (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", Algorithm 2; NCSN++ models).

The model predicts the score grad log p(x; sigma). Time t runs from 1 down to ``sampling_eps``; the noise levels are
geometric, sigma(t) = sigma_min (sigma_max / sigma_min)^t. The predictor (``step_pred``) is reverse diffusion on the
discrete sigmas: x + (sigma_i^2 - sigma_{i-1}^2) score + sqrt(sigma_i^2 - sigma_{i-1}^2) z. The corrector
(``step_correct``) is Langevin dynamics whose step size follows the signal-to-noise ratio ``snr`` (Algorithm 4).
Unlike the other schedulers there is no ``step``: the score-SDE pipeline calls ``set_timesteps``, ``set_sigmas``,
then for each timestep ``correct_steps`` corrector steps and one predictor step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

f32 = np.float32


@dataclass
class SdeVeOutput(SchedulerOutput):
    """``step_pred``'s result: the sample and its mean before the noise (the pipeline returns the mean at the end)."""

    prev_sample_mean: np.ndarray | None = None

    def __iter__(self):  # unpacks like diffusers' return_dict=False tuple
        yield self.prev_sample
        yield self.prev_sample_mean


class ScoreSdeVeScheduler(Scheduler):
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
    ):
        self.init_noise_sigma = sigma_max
        self.timesteps: np.ndarray | None = None
        self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

    def set_timesteps(self, num_inference_steps: int, sampling_eps: float | None = None) -> None:
        """n continuous times from 1 down to ``sampling_eps`` (default: the config's), float32."""
        n = self._check_steps(num_inference_steps)
        eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
        self.timesteps = ns.torch_linspace(1, eps, n)
        self.num_inference_steps = n

    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """``sigmas``: sigma(t) at each timestep (the model's noise-level input); ``discrete_sigmas``: n levels
        evenly spaced in log sigma (the predictor's table). Sets the timesteps first if there are none."""
        cfg = self.config
        sigma_min = cfg.sigma_min if sigma_min is None else sigma_min
        sigma_max = cfg.sigma_max if sigma_max is None else sigma_max
        sampling_eps = cfg.sampling_eps if sampling_eps is None else sampling_eps
        n = self._check_steps(num_inference_steps)
        if self.timesteps is None:
            self.set_timesteps(n, sampling_eps)
        ratio = np.float64(f32(sigma_max / sigma_min))  # torch raises the float32-rounded ratio to each float32 t
        self.sigmas = f32(sigma_min) * np.power(ratio, self.timesteps.astype(np.float64)).astype(np.float32)
        self.discrete_sigmas = ns.torch_exp32(ns.torch_linspace(math.log(sigma_min), math.log(sigma_max), n))

    def _check_steps(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(
                f"num_inference_steps={n!r} is not supported by {type(self).__name__}; accepted: 1 or more."
            )
        return int(n)

    def get_adjacent_sigma(self, timesteps: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The discrete sigma one level below each index in ``timesteps`` (0 below the lowest)."""
        below = self.discrete_sigmas[np.maximum(timesteps - 1, 0)]
        return np.where(timesteps == 0, np.zeros_like(t, dtype=np.float32), below)

    def step_pred(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SdeVeOutput:
        """Reverse-diffusion predictor at continuous time ``timestep`` (the score ``model_output`` at this level).
        Draws one noise array of ``sample``'s shape."""
        dtype, batch = sample.dtype, sample.shape[0]
        t = np.full(batch, timestep, dtype=np.float32)
        index = (t * f32(len(self.timesteps) - 1)).astype(np.int64)  # truncates, as torch's .long()
        if index.max() >= len(self.discrete_sigmas):
            raise ConfigError(
                f"timestep={float(timestep)} indexes past the {len(self.discrete_sigmas)} discrete sigmas; call "
                "set_sigmas with the same step count as set_timesteps."
            )
        sigma = self.discrete_sigmas[index]
        adjacent = self.get_adjacent_sigma(index, t)
        diffusion = ns.torch_sqrt32(sigma * sigma - adjacent * adjacent).reshape((batch,) + (1,) * (sample.ndim - 1))
        model_output, sample = model_output.astype(np.float32, copy=False), sample.astype(np.float32, copy=False)
        drift = -(diffusion * diffusion * model_output)  # the reverse SDE's drift term; dt is negative
        noise = randn(sample.shape, generator)
        mean = sample - drift
        return SdeVeOutput(prev_sample=(mean + diffusion * noise).astype(dtype), prev_sample_mean=mean.astype(dtype))

    def step_correct(
        self, model_output: np.ndarray, sample: np.ndarray, generator: np.random.Generator | int | None = None
    ) -> SchedulerOutput:
        """One Langevin corrector step: step size 2 (snr |z| / |score|)^2 from the batch-mean norms of fresh noise z
        and of the score ``model_output``. Draws one noise array of ``sample``'s shape."""
        dtype, batch = sample.dtype, sample.shape[0]
        noise = randn(sample.shape, generator)
        model_output, sample = model_output.astype(np.float32, copy=False), sample.astype(np.float32, copy=False)
        grad_norm, noise_norm = _mean_norm(model_output), _mean_norm(noise)
        step_size = f32(self.config.snr) * noise_norm / grad_norm
        step_size = np.full(batch, step_size * step_size * f32(2), dtype=np.float32)
        step_size = step_size.reshape((batch,) + (1,) * (sample.ndim - 1))
        mean = sample + step_size * model_output
        return SchedulerOutput((mean + ns.torch_sqrt32(step_size * f32(2)) * noise).astype(dtype))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray | None, timesteps: np.ndarray) -> np.ndarray:
        """x0 + discrete_sigmas[t] * noise at integer indices ``timesteps`` into the discrete sigmas (one per batch
        item); ``noise`` None draws it (from a fresh generator)."""
        index = np.asarray(timesteps).astype(np.int64).reshape(-1)
        sigma = self.discrete_sigmas[index].reshape((-1,) + (1,) * (original_samples.ndim - 1))
        if noise is None:
            noise = randn(original_samples.shape, None)
        return (noise * sigma + original_samples).astype(original_samples.dtype)


def _mean_norm(x: np.ndarray) -> np.float32:
    """Mean over the batch of each item's L2 norm, float32 (each norm rounded once from float64; torch accumulates
    in float32 lanes, so the two can differ in the last bit)."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    norms = np.sqrt(np.sum(flat * flat, axis=1)).astype(np.float32)
    return np.sum(norms, dtype=np.float32) / f32(len(norms))
