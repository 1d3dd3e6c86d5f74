"""Ancestral DPM-Solver-2, as k-diffusion's ``sample_dpm_2_ancestral`` (Lu et al. 2022; Karras et al. 2022)."""

from __future__ import annotations

import numpy as np

from . import noise_schedule as ns
from . import second_order as so
from .base import KARRAS_SCHEDULERS
from .kdpm2 import KDPM2DiscreteScheduler


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """KDPM2 whose step sigma_i -> sigma_{i+1} is split into a deterministic step to sigma_down and fresh noise
    of std sigma_up (sigma_down^2 + sigma_up^2 = sigma_{i+1}^2); the midpoint is sqrt(sigma_i sigma_down).
    One noise draw of the sample's shape per step, at its second stage."""

    _compatibles = KARRAS_SCHEDULERS

    def _set_sigma_tables(self, sigmas: np.ndarray) -> np.ndarray:
        """Fill the interleaved ``sigmas``, ``sigmas_interpol``, ``sigmas_up``, ``sigmas_down`` tables (2n + 2,);
        return the n - 1 midpoint timesteps. Entry i of each table belongs to the step leaving sigma_i."""
        sigma_next = np.append(sigmas[1:], np.float32(0.0))
        with np.errstate(divide="ignore", invalid="ignore"):  # the last entry (sigma = 0) is nan and never read
            sigma_up = ns.torch_sqrt32(sigma_next**2 * (sigmas**2 - sigma_next**2) / sigmas**2)
            sigma_down = ns.torch_sqrt32(sigma_next**2 - sigma_up**2)
        # that difference cancels when sigma_next << sigma (squaredcos_cap_v2's first step) and can go negative,
        # where diffusers gets nan; there take the exact sigma_down = sigma_next^2 / sigma instead
        lost = np.isnan(sigma_down[:-1])
        sigma_down[:-1][lost] = (sigma_next[:-1] ** 2 / sigmas[:-1])[lost]
        sigma_down[-1] = 0.0
        sigma_mid = so.log_midpoint(sigmas, sigma_down)
        sigma_mid[-2:] = 0.0  # the last step lands on sigma = 0: no midpoint
        self.sigmas, self.sigmas_interpol = so.stage_table(sigmas), so.stage_table(sigma_mid)
        self.sigmas_up, self.sigmas_down = so.stage_table(sigma_up), so.stage_table(sigma_down)
        return so.sigma_to_t32(sigma_mid[:-2], self.log_sigmas)

    def _stage_sigmas(self) -> tuple[np.float32, np.float32, np.float32 | None, np.float32 | None]:
        i = self._step_index
        if self.state_in_first_order:
            return self.sigmas[i], self.sigmas_interpol[i], None, None
        return self.sigmas[i - 1], self.sigmas_interpol[i - 1], self.sigmas_down[i - 1], self.sigmas_up[i - 1]
