"""Euler ancestral sampling for rectified-flow models (LTX-Video), as ComfyUI's ``sample_euler_ancestral_RF``.

The model predicts a velocity v under x_sigma = (1 - sigma) x0 + sigma noise, so x0 = x - sigma v. Each step goes
deterministically down to sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta) in (x, x0) space, then rescales
by alpha_next / alpha_down and adds just enough fresh noise to land on sigma_next's marginal (the flow analogue of
k-diffusion's ancestral step). ``eta = 0`` is plain Euler (DDIM-like); the final step to sigma 0 returns x0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn
from .flow_match_euler import FlowMatchEulerDiscreteScheduler  # builds the default schedule

logger = logging.getLogger("diffrt.schedulers")

f32 = np.float32


class LTXEulerAncestralRFScheduler(Scheduler):
    _compatibles = ("FlowMatchEulerDiscreteScheduler",)
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, eta: float = 1.0, s_noise: float = 1.0):
        self.sigmas: np.ndarray | None = None
        self.timesteps: np.ndarray | None = None
        self.num_inference_steps = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        timesteps: Sequence[float] | None = None,
        mu: float | None = None,
        **kwargs: object,
    ) -> None:
        """Explicit ComfyUI-style ``sigmas`` (or ``timesteps``, read as sigmas), ending at 0, with timesteps
        sigma * num_train_timesteps; or, given only ``num_inference_steps`` (and ``mu``), the flow-match Euler
        schedule this config describes (shift, dynamic shifting, karras / exponential / beta, ...). Other keyword
        arguments are ignored, as diffusers ignores them (pipelines pass their own extras)."""
        name = type(self).__name__
        if kwargs:
            logger.warning("%s.set_timesteps ignores %s.", name, ", ".join(sorted(kwargs)))
        if sigmas is None and timesteps is None:
            if num_inference_steps is None:
                raise ConfigError(f"{name}.set_timesteps needs sigmas, timesteps or num_inference_steps.")
            flow = FlowMatchEulerDiscreteScheduler.from_config(self.config)
            flow.set_timesteps(num_inference_steps, mu=mu)
            self.sigmas, self.timesteps = flow.sigmas, flow.timesteps
            self.num_inference_steps = flow.num_inference_steps
        else:
            given = np.asarray(sigmas if sigmas is not None else timesteps, dtype=np.float32)
            if given.ndim != 1 or len(given) < 1:
                raise ConfigError(f"sigmas has shape {given.shape}; accepted: a 1-D list of sigmas ending at 0.")
            if abs(float(given[-1])) > 1e-6:
                logger.warning("%s: the last sigma is %.6f, not 0 as ComfyUI's RF sampler expects.", name, given[-1])
            if num_inference_steps is not None and num_inference_steps != len(given) - 1:
                logger.warning(
                    "%s: num_inference_steps=%d does not match len(sigmas) - 1 = %d; using the latter.",
                    name,
                    num_inference_steps,
                    len(given) - 1,
                )
            self.sigmas = given
            self.timesteps = given * f32(self.config.num_train_timesteps)
            self.num_inference_steps = len(given) - 1
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One Euler ancestral RF step from sigmas[i] to sigmas[i + 1]; past the end of the schedule it returns
        ``sample`` unchanged, as diffusers does. Draws noise of ``sample``'s shape only when it adds any
        (eta > 0, s_noise > 0 and the next sigma is not 0)."""
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool):
            raise ConfigError(
                f"timestep={timestep!r} is an integer index; accepted: one of scheduler.timesteps (float values)."
            )
        if self.sigmas is None:
            raise ConfigError(f"{type(self).__name__}.step was called before set_timesteps.")
        if self._step_index is None:
            self._init_step_index(timestep)
        i, last = self._step_index, len(self.sigmas) - 1
        self._step_index = min(i + 1, last)
        if i >= last:
            return SchedulerOutput(sample)
        cfg = self.config
        x, v = sample.astype(np.float32), model_output.astype(np.float32)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        denoised = x - sigma * v
        if abs(sigma_next) < 1e-8:
            return SchedulerOutput(denoised.astype(sample.dtype))
        sigma_down = sigma_next * (f32(1) + (sigma_next / sigma - f32(1)) * f32(cfg.eta))
        alpha_next, alpha_down = f32(1) - sigma_next, f32(1) - sigma_down
        ratio = sigma_down / sigma
        x = ratio * x + (f32(1) - ratio) * denoised
        if cfg.eta > 0 and cfg.s_noise > 0:
            tiny = f32(1e-12)
            variance = sigma_next * sigma_next - (sigma_down * sigma_down) * (alpha_next * alpha_next) / (
                alpha_down * alpha_down + tiny
            )
            renoise = ns.torch_sqrt32(max(variance, f32(0)))
            noise = randn(x.shape, generator)
            x = (alpha_next / (alpha_down + tiny)) * x + noise * renoise * f32(cfg.s_noise)
        return SchedulerOutput(x.astype(sample.dtype))
