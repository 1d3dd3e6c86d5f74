"""Multistep DPM-Solver++ in the EDM formulation (Lu et al. 2022b, on Karras et al. 2022's preconditioned model).

The network is wrapped in EDM's preconditioning, so the solver runs on x = x_0 + sigma * noise with alpha_t = 1 and
sigma_t = sigma: log-SNR time is lambda = -log(sigma), and the data prediction is EDM's denoised estimate
D = c_skip x + c_out F. The update itself is DPMSolverMultistepScheduler's (first to third order, midpoint / heun,
the SDE variant with fresh noise), on the EDM karras / exponential schedule.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import SchedulerOutput
from .dpmsolver_multistep import DPMSolverMultistepScheduler, remap_solver_names
from .edm_euler import EDMPreconditioning

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")


class EDMDPMSolverMultistepScheduler(EDMPreconditioning, DPMSolverMultistepScheduler):
    _compatibles = ()
    order = 1

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        solver_order: int = 2,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ):
        name = type(self).__name__
        remap_solver_names(self, ALGORITHMS)
        if algorithm_type not in ALGORITHMS and final_sigmas_type == "zero":
            # diffusers checks the name as given, so "deis" (run as dpmsolver++) is refused here
            raise ConfigError(
                f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm_type!r} in {name}; "
                "accepted: final_sigmas_type='sigma_min' (or algorithm_type 'dpmsolver++' / 'sde-dpmsolver++')."
            )
        if solver_order < 1:
            raise ConfigError(f"solver_order={solver_order!r} is not supported; accepted: a positive integer.")
        if self.config.algorithm_type == "sde-dpmsolver++" and solver_order >= 3:
            # diffusers' EDM third-order update has no SDE branch and fails mid-run
            raise ConfigError(
                f"algorithm_type='sde-dpmsolver++' is not supported with solver_order={solver_order} in {name}; "
                "accepted: solver_order 1 or 2 (or algorithm_type 'dpmsolver++')."
            )
        self._check_edm_config()
        # until set_timesteps: the schedule at num_train_timesteps points, then sigma = 0
        self._set_schedule(self._edm_sigmas(ns.torch_linspace(0, 1, num_train_timesteps)), 0.0)
        self.num_inference_steps = None
        self._reset_history()

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """``num_inference_steps`` sigmas from sigma_max down to sigma_min (float32 ramp), then the final sigma
        (0, or sigma_min for ``final_sigmas_type="sigma_min"``)."""
        n = self._check_step_count(num_inference_steps)
        last = self.config.sigma_min if self.config.final_sigmas_type == "sigma_min" else 0.0
        self._set_schedule(self._edm_sigmas(ns.torch_linspace(0, 1, n)), last)
        self.num_inference_steps = n
        self._reset_history()

    def alpha_sigma(self, sigma) -> tuple[np.float32, np.float32]:
        """Preconditioned inputs: alpha_t = 1, sigma_t = sigma."""
        return np.float32(1), np.float32(sigma)

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """EDM's denoised estimate at the current sigma (thresholded if configured): DPM-Solver++'s x0."""
        x0 = self.precondition_outputs(sample, model_output, self.sigmas[self._step_index])
        if self.config.thresholding:
            x0 = ns.dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def _multistep_update(self, order: int, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """As DPM-Solver's, except a step of h = 0 runs at first order, the limit of every order there. (The last
        step with final_sigmas_type="sigma_min" runs from sigma_min to a float32-equal log-sigma; diffusers'
        heun / third-order weights compute 0 / 0 there and return NaN; its first-order and midpoint updates give
        the first-order result, as here.)"""
        i = self._step_index
        if self.lambda_of(self.sigmas[i + 1]) == self.lambda_of(self.sigmas[i]):
            order = 1
        return super()._multistep_update(order, sample, noise)

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One multistep DPM-Solver++ update from sigmas[i] to sigmas[i + 1], of the highest order the history
        allows (first order at the end for few steps, ``euler_at_final`` or a final sigma of zero)."""
        return super().step(model_output, timestep, sample, generator=generator)
