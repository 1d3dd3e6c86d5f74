"""CogVideoX's SDE-DPM-Solver++(2M) sampler (Lu et al. 2022, "DPM-Solver++"), on CogVideoX's SNR-shifted alpha_bar
table and DDIM's timesteps.

The caller carries the multistep history: each ``step`` takes the previous step's x0 estimate and the timestep it
was made at, and returns the new x0 next to the sample, as diffusers' CogVideoX pipelines drive it::

    old_x0, timesteps = None, scheduler.timesteps
    for i, t in enumerate(timesteps):
        latents, old_x0 = scheduler.step(model(latents, t), old_x0, t, timesteps[i - 1] if i else None, latents)
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, as_generator, randn
from .cogvideox_ddim import CogVideoXDDIMScheduler, compute_dtype, table_sqrt


class CogVideoXDPMScheduler(CogVideoXDDIMScheduler):
    """Same config, table and timesteps as CogVideoXDDIMScheduler; only ``step`` differs (and its arguments, in
    diffusers' order). Pipelines that treat the two differently test for this class first, as diffusers' do."""

    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def _half_log_snr(self, alpha_bar):
        """lambda = log(sqrt(alpha_bar / (1 - alpha_bar))), in the table's precision (-inf at zero SNR, inf at 1)."""
        snr_root = table_sqrt(alpha_bar / (1 - alpha_bar))
        return ns.torch_log32(snr_root) if snr_root.dtype == np.float32 else np.log(snr_root)

    @staticmethod
    def _exp(x, minus_one: bool = False):
        """exp(x) or expm1(x) in the precision of ``x`` (float32 as ``ns.torch_exp32`` / ``torch_expm1_32``)."""
        if x.dtype == np.float32:
            return (ns.torch_expm1_32 if minus_one else ns.torch_exp32)(x)
        return np.expm1(x) if minus_one else np.exp(x)

    def step(
        self,
        model_output: np.ndarray,
        old_pred_original_sample: np.ndarray | None,
        timestep: int,
        timestep_back: int | None,
        sample: np.ndarray,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | int | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One DPM-Solver++ SDE step from ``timestep`` to the next scheduled one, in log-SNR time h:

        x_{t'} = sigma_t'/sigma_t e^-h x_t + alpha_t' (1 - e^-2h) D + sigma_t' sqrt(1 - e^-2h) z,

        with D = x0 (first order: at the first step, without ``old_pred_original_sample``, and into the last step)
        or D = (1 + 1/2r) x0 - 1/2r old_x0 with r = h_back / h (second order, ``old_pred_original_sample`` made at
        ``timestep_back``). Two noise draws are taken per step, the first one used only by the first-order
        update, so one seed gives diffusers' draw sequence. ``eta`` and ``use_clipped_model_output`` are accepted
        and ignored, as in diffusers."""
        self._require_timesteps()
        if variance_noise is not None:  # diffusers would silently draw its own instead
            raise ConfigError(
                "CogVideoXDPMScheduler.step draws its noise from generator; variance_noise is not supported, "
                "accepted: variance_noise=None."
            )
        t = int(timestep)
        alpha_bar, alpha_bar_prev = self._alpha_bars(t)
        with np.errstate(divide="ignore", over="ignore"):  # alpha_bar 1 (final) or 0 (zero SNR): lambda = +-inf
            lam, lam_next = self._half_log_snr(alpha_bar), self._half_log_snr(alpha_bar_prev)
            h = lam_next - lam
            decay = table_sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * self._exp(-h)
            x0_gain = -self._exp(-2 * h, minus_one=True) * table_sqrt(alpha_bar_prev)
            noise_std = table_sqrt(1 - alpha_bar_prev) * table_sqrt(1 - self._exp(-2 * h))

        work = compute_dtype(sample)
        rng = as_generator(generator)  # one Generator for both draws (an int seed must not repeat the draw)
        x0 = self._predict_x0(model_output, sample, alpha_bar)
        noise = randn(sample.shape, rng, sample.dtype)
        last_step = t - self.config.num_train_timesteps // self.num_inference_steps < 0
        if old_pred_original_sample is None or last_step:
            prev_sample = work(decay) * sample + work(x0_gain) * x0 + work(noise_std) * noise
            return SchedulerOutput(prev_sample.astype(sample.dtype), x0.astype(sample.dtype))
        if timestep_back is None:  # diffusers fails on an index here
            raise ConfigError(
                "CogVideoXDPMScheduler.step got old_pred_original_sample without timestep_back; pass the timestep "
                "that x0 estimate was made at (the previous entry of scheduler.timesteps)."
            )
        with np.errstate(divide="ignore"):
            h_back = lam - self._half_log_snr(self.alphas_cumprod[int(timestep_back)])
            half_inv_r = 1 / (2 * (h_back / h))
        denoised = work(1 + half_inv_r) * x0 - work(half_inv_r) * old_pred_original_sample
        noise = randn(sample.shape, rng, sample.dtype)
        prev_sample = work(decay) * sample + work(x0_gain) * denoised + work(noise_std) * noise
        return SchedulerOutput(prev_sample.astype(sample.dtype), x0.astype(sample.dtype))
