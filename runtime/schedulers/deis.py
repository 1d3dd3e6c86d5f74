"""DEIS: the diffusion exponential integrator sampler, multistep, in log-rho time (Zhang & Chen 2022, "Fast
Sampling of Diffusion Models with Exponential Integrator", sec. 4, the "rhoAB" variant).

With rho = sigma_t / alpha_t the ODE in x / alpha is dx/drho = eps; DEIS extrapolates eps by the Lagrange
polynomial through the last 1-3 outputs, taken in log rho, and integrates each basis polynomial in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .exponential_integrator import ExponentialIntegratorScheduler


def _basis_integral_2(t, b, c):
    """Antiderivative in rho of the order-2 Lagrange basis of node b (other node c), nodes in log rho."""
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _basis_integral_3(t, b, c, d):
    """Antiderivative in rho of the order-3 Lagrange basis of node b (other nodes c, d), nodes in log rho."""
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((np.log(b) - lc) * (np.log(b) - ld))


class DEISMultistepScheduler(ExponentialIntegratorScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "deis",
        solver_type: str = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        name = type(self).__name__
        if algorithm_type in ("dpmsolver", "dpmsolver++"):  # diffusers maps DPM-Solver configs onto DEIS
            self._rewrite_config(algorithm_type="deis")
            algorithm_type = "deis"
        if solver_type in ("midpoint", "heun", "bh1", "bh2"):  # ... and their solver types onto logrho
            self._rewrite_config(solver_type="logrho")
            solver_type = "logrho"
        check_choice("algorithm_type", algorithm_type, ("deis", "dpmsolver", "dpmsolver++"), name)
        check_choice("solver_type", solver_type, ("logrho", "midpoint", "heun", "bh1", "bh2"), name)
        self._setup_tables()

    # ----- schedule ---------------------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, mu: float | None = None) -> None:
        """n timesteps (int64) and n + 1 sigmas; resampled and flow schedules repeat their last sigma."""
        cfg = self.config
        n = self._check_num_inference_steps(num_inference_steps)
        self._apply_mu(mu)
        timesteps = self._spaced_timesteps(n)
        if (resampled := self._resampled_sigmas(n)) is not None:
            sigmas, timesteps = resampled
            sigmas = np.concatenate([sigmas, sigmas[-1:]])
        elif cfg.use_flow_sigmas:
            sigmas, timesteps = self._flow_sigmas(n)
            sigmas = np.concatenate([sigmas, sigmas[-1:]])
        else:  # interpolated, ending at the smallest training sigma
            sigmas = np.concatenate([self._interpolated_sigmas(timesteps), [self._sigma_min()]])
        self.sigmas = sigmas.astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_history()

    # ----- the solver -------------------------------------------------------------------------------------------
    def _deis_update(self, sample: np.ndarray, order: int) -> np.ndarray:
        """x_t = alpha_t (x_s / alpha_s + sum_j C_j eps_j): C_j integrates the j-th basis from rho_s to rho_t."""
        i = self._step_index
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[i + 1])
        alpha_s, sigma_s = self.alpha_sigma(self.sigmas[i])
        eps = self.model_outputs[::-1][:order]  # newest first
        if order == 1:  # the exponential-integrator Euler step (DDIM)
            h = ns.torch_log32(alpha_t) - ns.torch_log32(sigma_t) - (ns.torch_log32(alpha_s) - ns.torch_log32(sigma_s))
            return alpha_t / alpha_s * sample - sigma_t * (ns.torch_exp32(h) - 1) * eps[0]
        rho_t = sigma_t / alpha_t
        nodes = [self._rho(self.sigmas[i - k]) for k in range(order)]  # rho_s0, rho_s1, ...
        integral = _basis_integral_2 if order == 2 else _basis_integral_3
        x = sample / alpha_s
        for j in range(order):
            others = nodes[j + 1 :] + nodes[:j]  # diffusers' cyclic order of the other nodes
            x = x + (integral(rho_t, nodes[j], *others) - integral(nodes[0], nodes[j], *others)) * eps[j]
        return alpha_t * x

    def _rho(self, sigma) -> np.float32:
        alpha, sigma_t = self.alpha_sigma(sigma)
        return sigma_t / alpha

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray, generator=None) -> SchedulerOutput:
        """One multistep DEIS step, warming up from first order and, below 15 steps, cooling down to it."""
        self._start_step(timestep)
        i, cfg, n = self._step_index, self.config, len(self.timesteps)
        sample = sample.astype(np.float32, copy=False)
        x0 = self.data_prediction(model_output.astype(np.float32, copy=False), sample)
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[i])
        self._push_model_output((sample - alpha_t * x0) / sigma_t)  # DEIS integrates the noise prediction
        cool_down = cfg.lower_order_final and n < 15
        order = min(cfg.solver_order, 3, self.lower_order_nums + 1)
        if cool_down:
            order = min(order, n - i)
        prev_sample = self._deis_update(sample, order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), None)
