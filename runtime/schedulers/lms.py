"""Linear multistep sampling of the probability-flow ODE in sigma space (k-diffusion's ``sample_lms``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.polynomial import polynomial as P

from ..errors import ConfigError
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .sigma_space import SigmaScheduler


def lms_coefficient(sigmas: np.ndarray, order: int, t: int, j: int) -> float:
    """Adams-Bashforth weight of the derivative taken ``j`` steps back: the integral over [sigma_t, sigma_{t+1}]
    of the Lagrange basis polynomial l_j through sigma_t, ..., sigma_{t-order+1}.

    l_j has degree order - 1, so its antiderivative is exact (diffusers integrates it numerically with
    scipy.integrate.quad). Nodes are shifted by sigma_t to keep the monomial basis well conditioned."""
    nodes = sigmas[t - np.arange(order)].astype(np.float64) - float(sigmas[t])
    others = np.delete(nodes, j)
    basis = P.polyfromroots(others) / np.prod(nodes[j] - others)
    antiderivative = P.polyint(basis)
    return float(P.polyval(float(sigmas[t + 1]) - float(sigmas[t]), antiderivative))  # its value at 0 is 0


class LMSDiscreteScheduler(SigmaScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        self._setup_tables()
        self.derivatives: list[np.ndarray] = []

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Space ``num_inference_steps`` timesteps per config; sigmas (float32, length n + 1, ending in 0)."""
        n = self._check_num_inference_steps(num_inference_steps)
        timesteps, sigmas = self._spaced_sigmas(n)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.float32)
        self.num_inference_steps = n
        self.derivatives = []  # d = (x - x0) / sigma of the latest steps, oldest first
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        order: int = 4,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One linear multistep step from sigma_i to sigma_{i+1}, using up to ``order`` past derivatives.
        Deterministic: ``generator`` is accepted for a uniform step signature and ignored."""
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ConfigError(f"order={order!r} is not supported; accepted: a positive integer (LMS order).")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = self._predict_x0(model_output, sample, sigma)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        # Order grows with the step index, not the history: a run begun mid-schedule weights its one
        # derivative by the full-order coefficient, as diffusers does.
        order = min(i + 1, order)
        coeffs = [lms_coefficient(self.sigmas, order, i, j) for j in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), x0)
