"""Singlestep DPM-Solver and DPM-Solver++ (Lu et al. 2022, Algorithms 1-2; 2022b, Algorithm 1).

A k-th order singlestep update spans k schedule steps from one base point x_s: the intermediate steps evaluate the
model at points between s and t, and the last one combines those outputs into a k-th order step from s to t with
h = lambda_t - lambda_s. The schedule is a repeating pattern of orders (``order_list``: [1, 2, 3, 1, 2, 3, ...]), and
``sample`` keeps x_s across a group. The update weights are the multistep solver's (``dpm_coefficients``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .dpmsolver_multistep import DPMSolverMultistepScheduler, dpm_coefficients, remap_solver_names
from .exponential_integrator import ExponentialIntegratorScheduler

logger = logging.getLogger("diffrt.schedulers")

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


class DPMSolverSinglestepScheduler(ExponentialIntegratorScheduler):
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
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        name = type(self).__name__
        remap_solver_names(self, ALGORITHMS)
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ConfigError(
                f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm_type!r} in {name}; "
                "accepted: final_sigmas_type='sigma_min' (or algorithm_type 'dpmsolver++' / 'sde-dpmsolver++')."
            )
        if isinstance(solver_order, (int, np.integer)) and solver_order > 3:
            raise ConfigError(f"solver_order={solver_order} is not supported by {name}; accepted: 1, 2 or 3.")
        self._setup_tables()
        self.sample: np.ndarray | None = None
        self.order_list = self.get_order_list(num_train_timesteps)

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """Solver order of each step: groups of [1, 2, ..., solver_order]; with ``lower_order_final`` the tail is
        cut into lower-order groups so the last group ends on the last step. A final sigma of zero ends first-order."""
        steps, order = num_inference_steps, self.config.solver_order
        group = list(range(1, order + 1))
        if not self.config.lower_order_final or order == 1:
            orders = group * (steps // order)
        elif order == 3:
            tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[steps % 3]
            orders = group * (steps // 3 - (steps % 3 == 0)) + tail
        else:
            orders = group * (steps // 2 - (steps % 2 == 0)) + [1] * (1 + (steps % 2 == 0))
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(
        self, num_inference_steps: int | None = None, mu: float | None = None, timesteps: Sequence[int] | None = None
    ) -> None:
        """Build the schedule (linspace timesteps, or karras / exponential / beta / flow sigmas) and its order list."""
        cfg = self.config
        self._apply_mu(mu)
        timesteps = self._inference_timesteps(num_inference_steps, timesteps)
        n = self.num_inference_steps = len(timesteps)
        if (resampled := self._resampled_sigmas(n)) is not None:
            sigmas, timesteps = resampled
        elif cfg.use_flow_sigmas:
            sigmas, timesteps = self._flow_sigmas(n)
        else:
            sigmas = self._interpolated_sigmas(timesteps)
        last = self._sigma_min() if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        if not cfg.lower_order_final and (n % cfg.solver_order != 0 or cfg.final_sigmas_type == "zero"):
            # an incomplete last group, or a zero final sigma, needs a lower-order finish
            logger.warning(
                "%s: setting lower_order_final=True (%d steps, solver_order=%d, final_sigmas_type=%r).",
                type(self).__name__,
                n,
                cfg.solver_order,
                cfg.final_sigmas_type,
            )
            self._rewrite_config(lower_order_final=True)
        self.order_list = self.get_order_list(n)
        self._reset_history()
        self.sample = None

    convert_model_output = DPMSolverMultistepScheduler.convert_model_output  # x0 for "++" algorithms, else eps

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One step of the current group: of order ``order_list[i]``, lowered while the history is too short."""
        self._start_step(timestep)
        self._push_model_output(self.convert_model_output(model_output, sample))
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = randn(model_output.shape, generator, model_output.dtype)
        order = self.order_list[self._step_index]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self.sample = sample  # the base point x_s of this group
        prev_sample = self._singlestep_update(order, self.sample, noise)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype, copy=False), None)

    def _singlestep_update(self, order: int, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """Order-k step from s = sigmas[i - k + 1] to t = sigmas[i + 1] (2022, Algorithms 1-2; 2022b, Algorithm 1).
        m0 is the newest output (at s0 = sigmas[i]); D0 is the output at s; r_k place the others in [s, t]."""
        i, cfg = self._step_index, self.config
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[i + 1])
        alpha_s, sigma_s = self.alpha_sigma(self.sigmas[i + 1 - order])
        with np.errstate(divide="ignore"):  # lambda = inf at a final sigma of zero
            lam = [self.lambda_of(self.sigmas[i + 1 - k]) for k in range(order + 1)]  # lambda_t, lambda_s0, ...
        h = lam[0] - lam[order]
        c = dpm_coefficients(cfg.algorithm_type, alpha_t, sigma_t, alpha_s, sigma_s, h)
        m = self.model_outputs
        x = c["lead"] * sample + c["c0"] * m[-order]
        if order == 2:
            r0 = (lam[1] - lam[2]) / h
            d1 = (1.0 / r0) * (m[-1] - m[-2])
            x = x + (c["mid"] if cfg.solver_type == "midpoint" else c["heun"]) * d1
        elif order == 3:
            r0, r1 = (lam[1] - lam[3]) / h, (lam[2] - lam[3]) / h
            d1_0, d1_1 = (1.0 / r1) * (m[-2] - m[-3]), (1.0 / r0) * (m[-1] - m[-3])
            if cfg.solver_type == "midpoint":
                x = x + c["heun"] * d1_1
            else:
                d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                x = x + c["heun"] * d1 + c["third"] * d2
        if noise is not None:
            x = x + c["noise"] * noise
        return x
