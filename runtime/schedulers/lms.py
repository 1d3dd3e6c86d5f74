"""Linear multistep sampling of the probability-flow ODE in sigma space (k-diffusion's ``sample_lms``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.polynomial import polynomial as P

from ..errors import ConfigError
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .sigma_space import SigmaScheduler

# The 21-point Gauss-Kronrod rule of QUADPACK's dqk21 on (-1, 1): positive nodes (the last is the centre), their
# Kronrod weights, and the weights of the embedded 10-point Gauss rule (at the odd positions of the nodes).
GK21_NODES = (
    *(0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508),
    *(0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874),
    *(0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866),
    *(0.148874338981631210884826001129720, 0.0),
)
GK21_KRONROD = (
    *(0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580),
    *(0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805),
    *(0.123491976262065851077958109831074, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717),
    *(0.147739104901338491374841515972068, 0.149445554002916905664936468389821),
)
GK21_GAUSS = (
    *(0.066671344308688137593568809893332, 0.149451349150580593145776339657697, 0.219086362515982043995534934228163),
    *(0.269266719309996355091226921569469, 0.295524224714752870173892994651338),
)
_EPS, _TINY = 2.220446049250313e-16, 2.2250738585072014e-308


def gauss_kronrod21(values_at, a: float, b: float, epsabs: float = 1.49e-8, epsrel: float = 1e-4):
    """QUADPACK's first pass over [a, b] (dqk21 inside qagse), summed in its order: (integral, accepted).
    ``values_at(points)`` evaluates the integrand at a float64 array of points. ``accepted`` is False where qagse
    would go on to bisect the interval (its error estimate above max(epsabs, epsrel |integral|))."""
    centre, half = 0.5 * (a + b), 0.5 * (b - a)
    offsets = half * np.asarray(GK21_NODES[:10])
    f = values_at(np.concatenate([[centre], centre - offsets, centre + offsets])).tolist()
    fc, left, right = f[0], f[1:11], f[11:21]
    gauss, kronrod = 0.0, GK21_KRONROD[10] * fc
    absolute = abs(kronrod)
    for j in (*range(1, 10, 2), *range(0, 10, 2)):  # the Gauss nodes first, then the Kronrod extension
        pair = left[j] + right[j]
        if j % 2:
            gauss = gauss + GK21_GAUSS[j // 2] * pair
        kronrod = kronrod + GK21_KRONROD[j] * pair
        absolute = absolute + GK21_KRONROD[j] * (abs(left[j]) + abs(right[j]))
    mean = kronrod * 0.5
    spread = GK21_KRONROD[10] * abs(fc - mean)
    for j in range(10):
        spread = spread + GK21_KRONROD[j] * (abs(left[j] - mean) + abs(right[j] - mean))
    result, absolute, spread = kronrod * half, absolute * abs(half), spread * abs(half)
    error = abs((kronrod - gauss) * half)
    if spread != 0 and error != 0:
        error = spread * min(1.0, (200 * error / spread) ** 1.5)
    if absolute > _TINY / (50 * _EPS):
        error = max((_EPS * 50) * absolute, error)
    bound = max(epsabs, epsrel * abs(result))
    accepted = (error <= 100 * _EPS * absolute and error > bound) or (error <= bound and error != spread) or error == 0
    return result, accepted


def lms_coefficient(sigmas: np.ndarray, order: int, t: int, j: int) -> float:
    """Adams-Bashforth weight of the derivative taken ``j`` steps back: the integral over [sigma_t, sigma_{t+1}]
    of the Lagrange basis polynomial l_j through sigma_t, ..., sigma_{t-order+1}.

    diffusers integrates l_j numerically (SciPy's quad) with l_j evaluated in float32 (torch scalars); that
    quadrature is reproduced here to the bit (``gauss_kronrod21``), so coefficients and trajectories equal
    diffusers'. Where quad would refine further (not seen in practice), the exact antiderivative is used."""
    nodes = sigmas[t - np.arange(order)].astype(np.float32)

    def basis(tau: np.ndarray) -> np.ndarray:
        tau = tau.astype(np.float32)
        product = np.ones_like(tau)
        for k in range(order):
            if k != j:
                product = product * ((tau - nodes[k]) / (nodes[j] - nodes[k]))
        return product

    value, accepted = gauss_kronrod21(basis, float(sigmas[t]), float(sigmas[t + 1]))
    if accepted:
        return value
    shifted = nodes.astype(np.float64) - float(sigmas[t])  # exact fallback: the antiderivative of l_j
    others = np.delete(shifted, j)
    antiderivative = P.polyint(P.polyfromroots(others) / np.prod(shifted[j] - others))
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
