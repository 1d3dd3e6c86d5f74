"""SA-Solver: stochastic Adams predictor-corrector for diffusion SDEs (Xue et al. 2023, "SA-Solver", Algorithm 1).

Each step first corrects the sample just reached with the fresh model output (SA-Corrector, an Adams-Moulton
update that reuses the previous step's noise), then predicts the next sample from the history of converted model
outputs (SA-Predictor, an Adams-Bashforth update with fresh noise). Both integrate the variance-preserving SDE
whose stochasticity is tau(t) in log-SNR time lambda: the model term is a Lagrange polynomial through earlier
outputs, integrated exactly against the exponential weight (the paper's eqs. 14-17). tau = 0 is the ODE.

Scalar coefficients keep diffusers' float32 expressions and operation order, so samples match to the last bits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .exponential_integrator import PREDICTION_TYPES, ExponentialIntegratorScheduler

ALGORITHMS = ("data_prediction", "noise_prediction")
MAX_ORDER = 4  # the closed-form integrals cover polynomials up to degree 3

f32 = np.float32


def default_tau(t) -> int:
    """diffusers' default stochasticity: the SDE (tau = 1) in the middle of the schedule, the ODE at its ends."""
    return 1 if 200 <= t <= 800 else 0


def _power(x: np.float32, k: int) -> np.float32:
    """x**k (k >= 1) as torch evaluates small integer powers: repeated float32 products, left to right."""
    result = x
    for _ in range(k - 1):
        result = result * x
    return result


def _poly(x: np.float32, coefficients: tuple[int, ...]) -> np.float32:
    """sum_j c_j x^(k-j), highest power first (c_0 = 1), accumulated left to right as diffusers writes it."""
    k = len(coefficients) - 1
    total = _power(x, k) if k else f32(1)
    for j, c in enumerate(coefficients[1:], start=1):
        total = total + (f32(c) * _power(x, k - j) if k - j else f32(c))
    return total


# x^k e^{-x} and x^k e^{x} integrate to e^{-x} P_k(x) and e^{x} Q_k(x), up to sign, with these polynomials.
_NEGATIVE = {0: (1,), 1: (1, 1), 2: (1, 2, 2), 3: (1, 3, 6, 6)}
_POSITIVE = {0: (1,), 1: (1, -1), 2: (1, -2, 2), 3: (1, -3, 6, -6)}


def exp_integral(k: int, start: np.float32, end: np.float32, tau: float, data_prediction: bool) -> np.float32:
    """int_start^end x^k e^{(1 + tau^2) x} dx (data prediction) or int_start^end x^k e^{-x} dx (noise prediction),
    in closed form (SA-Solver eqs. 15-16)."""
    exp = ns.torch_exp32
    if not data_prediction:
        p = _NEGATIVE[k]
        return exp(-end) * (_poly(start, p) * exp(end - start) - _poly(end, p))
    scale = 1 + tau**2
    u_start, u_end = f32(scale) * start, f32(scale) * end
    q = _POSITIVE[k]
    return exp(u_end) * (_poly(u_end, q) - _poly(u_start, q) * exp(-(u_end - u_start))) / f32(scale ** (k + 1))


def lagrange_coefficients(nodes: list[np.float32]) -> list[list]:
    """Power-basis coefficients (highest degree first) of each Lagrange basis polynomial through ``nodes``."""
    if len(nodes) == 1:
        return [[1]]
    rows = []
    for i, node in enumerate(nodes):
        others = nodes[:i] + nodes[i + 1 :]
        denominator = node - others[0]
        for other in others[1:]:
            denominator = denominator * (node - other)
        row = [f32(1) / denominator]
        for degree in range(1, len(others) + 1):  # signed elementary symmetric polynomials of the other nodes
            odd = degree % 2 == 1
            products = []
            for factors in combinations(others, degree):
                product = factors[0]
                for factor in factors[1:]:
                    product = product * factor
                products.append(product)
            total = -products[0] if odd else products[0]  # -a - b - c, ab + ac + bc, -abc
            for product in products[1:]:
                total = total - product if odd else total + product
            row.append(total / denominator)
        rows.append(row)
    return rows


def gradient_coefficients(
    order: int, start: np.float32, end: np.float32, nodes: list[np.float32], tau: float, data_prediction: bool
) -> list[np.float32]:
    """Weight of each past model output: its Lagrange basis polynomial integrated over [start, end]."""
    lagrange = lagrange_coefficients(nodes)
    weights = []
    for row in lagrange:
        weight = None
        for j, c in enumerate(row):
            term = c * exp_integral(order - 1 - j, start, end, tau, data_prediction)
            weight = term if weight is None else weight + term
        weights.append(weight)
    return weights


class SASolverScheduler(ExponentialIntegratorScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        predictor_order: int = 2,
        corrector_order: int = 2,
        prediction_type: str = "epsilon",
        tau_func: Callable | None = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "data_prediction",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        ns.check_sigma_schedule(self.config)
        check_choice("algorithm_type", algorithm_type, ALGORITHMS, name)
        ns.check_prediction_type(prediction_type, name, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        for field, value in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
            if not 1 <= value <= MAX_ORDER:  # diffusers accepts others and fails on an assertion mid-run
                raise ConfigError(f"{field}={value} is not supported by {name}; accepted: 1, 2, 3 or 4.")
        if tau_func is not None and not callable(tau_func):
            raise ConfigError(f"tau_func={tau_func!r} is not supported; accepted: a function of the timestep, or None.")
        # The following configs construct in diffusers but fail at the first step; refuse them up front.
        if variance_type in ("learned", "learned_range"):  # its noise takes the model output's doubled channels
            raise ConfigError(
                f"variance_type={variance_type!r} is not supported by {name} (diffusers' SA-Solver draws noise of "
                "the model output's shape and cannot add it); accepted: None."
            )
        if algorithm_type == "noise_prediction" and (thresholding or prediction_type == "flow_prediction"):
            raise ConfigError(
                f"algorithm_type='noise_prediction' is not supported with thresholding or flow_prediction in {name}; "
                "accepted: algorithm_type='data_prediction' for those."
            )
        self.betas = ns.betas_from_config(self.config, name)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)
        self.alpha_t = ns.torch_sqrt32(self.alphas_cumprod)
        self.sigma_t = ns.torch_sqrt32(1 - self.alphas_cumprod)
        self.lambda_t = ns.torch_log32(self.alpha_t) - ns.torch_log32(self.sigma_t)
        self.sigmas = ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.timesteps = np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=np.float32)[::-1].copy()
        self.tau_func = default_tau if tau_func is None else tau_func
        self.num_inference_steps = None
        self._reset_history()

    def _reset_history(self) -> None:
        size = max(self.config.predictor_order, self.config.corrector_order - 1)
        self.model_outputs: list[np.ndarray | None] = [None] * size
        self.timestep_list: list = [None] * size
        self.lower_order_nums = 0
        self.last_sample: np.ndarray | None = None
        self.last_noise: np.ndarray | None = None
        self.this_corrector_order = 0
        self._step_index = None
        self._begin_index = None

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """n timesteps (int64) spaced per config and n + 1 sigmas. The final sigma repeats the last one for
        karras / exponential / beta / flow schedules, else it is the t = 0 training sigma (never zero)."""
        timesteps = self._inference_timesteps(num_inference_steps, None)
        n = len(timesteps)
        resampled = self._resampled_sigmas(n)
        if resampled is not None:
            sigmas, timesteps = resampled
            last = sigmas[-1]
        elif self.config.use_flow_sigmas:
            sigmas, timesteps = self._flow_sigmas(n)
            last = sigmas[-1]
        else:
            sigmas, last = self._interpolated_sigmas(timesteps), self._sigma_min()
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = n
        self._reset_history()

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x0 for data_prediction, eps for noise_prediction, at the current step's sigma."""
        if self.config.algorithm_type == "data_prediction":
            return self.data_prediction(model_output, sample)
        return self.noise_prediction(model_output, sample)

    def _lambda(self, index: int) -> np.float32:
        alpha, sigma = self.alpha_sigma(self.sigmas[index])
        return ns.torch_log32(alpha) - ns.torch_log32(sigma)

    def _sa_update(
        self, x: np.ndarray, outputs: list, noise: np.ndarray, t: int, order: int, tau: float, corrector: bool
    ) -> np.ndarray:
        """Move ``x`` from sigmas[t - 1] to sigmas[t] with the order-``order`` stochastic Adams update over the
        newest ``outputs``. The predictor's nodes end at t - 1 (Adams-Bashforth), the corrector's at t (Moulton)."""
        data = self.config.algorithm_type == "data_prediction"
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[t])
        alpha_s, sigma_s = self.alpha_sigma(self.sigmas[t - 1])
        lam_t, lam_s = self._lambda(t), self._lambda(t - 1)
        h = lam_t - lam_s
        newest = t if corrector else t - 1
        nodes = [self._lambda(newest - i) for i in range(order)]
        weights = gradient_coefficients(order, lam_s, lam_t, nodes, tau, data)
        scale, tau2 = 1 + tau**2, tau**2
        exp = ns.torch_exp32
        if data and order == 2:  # an O(h^3) term that diffusers adds to the second-order weights (after UniPC)
            tail = h * f32(scale) - f32(1) + exp(f32(scale) * -h)
            if corrector:
                extra = exp(f32(scale) * lam_t) * (h / f32(2) - tail / (f32(scale**2) * h))
            else:
                extra = exp(f32(scale) * lam_t) * (h * h / f32(2) - tail / f32(scale**2)) / (lam_s - nodes[1])
            weights[0], weights[1] = weights[0] + extra, weights[1] - extra
        gradient = None
        for i in range(order):
            if data:
                c = f32(scale) * sigma_t * exp(f32(-tau2) * lam_t) * weights[i]
            else:
                c = f32(-scale) * alpha_t * weights[i]
            term = c * outputs[-(i + 1)]
            gradient = term if gradient is None else gradient + term
        if data:
            noise_part = sigma_t * ns.torch_sqrt32(f32(1) - exp(f32(-2 * tau2) * h)) * noise
            lead = exp(f32(-tau2) * h) * (sigma_t / sigma_s)
        else:
            noise_part = f32(tau) * sigma_t * ns.torch_sqrt32(exp(f32(2) * h) - f32(1)) * noise
            lead = alpha_t / alpha_s
        return lead * x + gradient + noise_part

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """Correct the sample just reached (from the second step on), then predict the next one. Draws one noise
        array of ``model_output``'s shape every step, also where tau is 0."""
        i = self._start_step(timestep)
        cfg, n = self.config, len(self.timesteps)
        sample = sample.astype(np.float32, copy=False)
        converted = self.convert_model_output(model_output.astype(np.float32, copy=False), sample)
        if i > 0 and self.last_sample is not None:
            tau = self.tau_func(self.timestep_list[-1])  # the previous step's tau: it made the noise reused here
            outputs, order = self.model_outputs + [converted], self.this_corrector_order
            sample = self._sa_update(self.last_sample, outputs, self.last_noise, i, order, tau, corrector=True)
        self.model_outputs = self.model_outputs[1:] + [converted]
        self.timestep_list = self.timestep_list[1:] + [timestep]
        noise = randn(model_output.shape, generator)
        predictor_order, corrector_order = cfg.predictor_order, cfg.corrector_order
        if cfg.lower_order_final:  # no more history is worth building near the end
            predictor_order, corrector_order = min(predictor_order, n - i), min(corrector_order, n - i + 1)
        predictor_order = min(predictor_order, self.lower_order_nums + 1)  # warm-up: as many outputs as there are
        self.this_corrector_order = min(corrector_order, self.lower_order_nums + 2)
        self.last_sample, self.last_noise = sample, noise
        tau = self.tau_func(timestep)
        prev_sample = self._sa_update(sample, self.model_outputs, noise, i + 1, predictor_order, tau, corrector=False)
        self.lower_order_nums = min(self.lower_order_nums + 1, len(self.model_outputs))
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """Forward process on the training table: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, at the
        integer training ``timesteps`` (one per batch item), as diffusers' SA-Solver (unlike DPM-Solver) does."""
        t = np.asarray(timesteps).astype(np.int64).reshape(-1)
        alpha_bar = self.alphas_cumprod.astype(original_samples.dtype)[t]
        alpha_bar = alpha_bar.reshape(alpha_bar.shape + (1,) * (original_samples.ndim - 1))
        noisy = ns.torch_sqrt32(alpha_bar) * original_samples + ns.torch_sqrt32(1 - alpha_bar) * noise
        return noisy.astype(original_samples.dtype, copy=False)
