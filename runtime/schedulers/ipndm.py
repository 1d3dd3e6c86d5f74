"""Improved pseudo numerical method (iPNDM; Zhang & Chen 2022, "Fast Sampling of Diffusion Models with
Exponential Integrator", after Liu et al. 2022's F-PNDM): an Adams-Bashforth linear multistep of order 1 to 4 (lower
orders while the history fills), on noise levels (sigma, alpha) = (sin^2(pi s / 2), sqrt(1 - sigma^2)) for s running
evenly from 1 to 0. Timesteps are the angle atan2(sigma, alpha) scaled to [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput

PI = np.float32(math.pi)  # diffusers multiplies and divides float32 tensors by math.pi, rounded to float32


class IPNDMScheduler(Scheduler):
    """``betas`` hold the sigmas and ``alphas`` the signal scales of ``timesteps`` plus the final (0, 1) pair, under
    diffusers' names; ``trained_betas`` replaces that table (its length, less one, is then the step count)."""

    _compatibles = ()
    order = 1
    pndm_order = 4
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, trained_betas: Sequence[float] | None = None):
        if num_train_timesteps < 1:
            raise ConfigError(
                f"num_train_timesteps={num_train_timesteps!r} is not supported; accepted: a positive integer."
            )
        if trained_betas is not None:
            table = np.asarray(trained_betas, dtype=np.float64)
            if table.ndim != 1 or len(table) < 2 or not ((table >= 0) & (table <= 1)).all():
                raise ConfigError(
                    f"trained_betas of shape {table.shape} with values in [{table.min(initial=0)}, "
                    f"{table.max(initial=0)}] is not supported by IPNDMScheduler; accepted: a list of at least 2 noise "
                    "levels from 0 to 1 (one per timestep, then the final one)."
                )
        self.set_timesteps(num_train_timesteps)  # as diffusers: a full-length schedule until set_timesteps

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        self.num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        if cfg.trained_betas is not None:
            self.betas = np.asarray(cfg.trained_betas, dtype=np.float32)
        else:
            s = np.append(ns.torch_linspace(1, 0, self.num_inference_steps + 1)[:-1], np.float32(0))
            self.betas = ns.torch_sin32(s * PI / np.float32(2)) ** 2
        self.alphas = ns.torch_sqrt32(1 - self.betas**2)
        self.timesteps = (ns.torch_atan2_32(self.betas, self.alphas) / PI * np.float32(2))[:-1]
        self.ets: list[np.ndarray] = []  # the last pndm_order combined outputs sigma x + alpha eps, newest last
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One linear-multistep step from timesteps[i] to the next level (``generator`` is unused: iPNDM is
        deterministic)."""
        i = self._start_step(timestep)
        ets = sample * self.betas[i] + model_output * self.alphas[i]
        self.ets = [*self.ets[1 - self.pndm_order :], ets]
        e = self.ets[::-1]  # newest first: Adams-Bashforth of the order the history allows
        if len(e) == 1:
            ets = e[0]
        elif len(e) == 2:
            ets = (3 * e[0] - e[1]) / 2
        elif len(e) == 3:
            ets = (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12
        else:  # diffusers multiplies by 1/24 here rather than dividing
            ets = (1 / 24) * (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3])
        # PNDM's transfer: strip the step's noise level, re-noise at the next (alpha = 0 at the pure-noise start)
        pred = (sample - self.betas[i] * ets) / max(self.alphas[i], 1e-8)
        prev_sample = self.alphas[i + 1] * pred + ets * self.betas[i + 1]
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), None)
