"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022, "DPM-Solver", and 2022b, "DPM-Solver++").

Both integrate the diffusion ODE exactly in its linear part, in log-SNR time lambda = log(alpha_t / sigma_t), and
approximate the model term by a Taylor expansion whose derivatives come from earlier steps' model outputs. With
h = lambda_t - lambda_s, first order is DDIM:
    DPM-Solver++ (data prediction x0):  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) x0      (2022b, eq. 5)
    DPM-Solver   (noise prediction eps): x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps    (2022, eq. 3.7)
The SDE variants (2022b, sec. 5) add fresh noise each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .exponential_integrator import ExponentialIntegratorScheduler

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def remap_solver_names(scheduler, accepted_algorithms: tuple[str, ...]) -> None:
    """diffusers accepts the sibling schedulers' names: algorithm "deis" runs as dpmsolver++, solver types
    "logrho" / "bh1" / "bh2" run as midpoint; other unknown names are refused."""
    name, cfg = type(scheduler).__name__, scheduler.config
    if cfg.algorithm_type == "deis":
        scheduler._rewrite_config(algorithm_type="dpmsolver++")
    check_choice("algorithm_type", cfg.algorithm_type, accepted_algorithms, name)
    if cfg.solver_type in ("logrho", "bh1", "bh2"):
        scheduler._rewrite_config(solver_type="midpoint")
    check_choice("solver_type", cfg.solver_type, SOLVER_TYPES, name)


def dpm_coefficients(algorithm: str, alpha_t, sigma_t, alpha_s, sigma_s, h) -> dict[str, np.float32]:
    """Coefficients of x_t = lead * x_s + c0 * D0 + c1 * D1 + c2 * D2 + noise * z for step size h.

    c1 is "mid" (midpoint: half the first-order weight) or "heun" (the phi_2 weight); c2 is phi_3's ("third").
    The expressions keep diffusers' float32 forms (e.g. exp(-h) - 1, not expm1) so rounding matches."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # h = inf at a final sigma of zero
        if algorithm == "dpmsolver++":
            e = ns.torch_exp32(-h) - 1.0
            return dict(
                lead=sigma_t / sigma_s,
                c0=-(alpha_t * e),
                mid=-0.5 * (alpha_t * e),
                heun=alpha_t * (e / h + 1.0),
                third=-(alpha_t * ((ns.torch_exp32(-h) - 1.0 + h) / h**2 - 0.5)),
            )
        if algorithm == "sde-dpmsolver++":  # the ODE's weights at 2h, plus noise; diffusers' phi_3 term keeps -0.5
            e2 = 1 - ns.torch_exp32(-2.0 * h)
            return dict(
                lead=sigma_t / sigma_s * ns.torch_exp32(-h),
                c0=alpha_t * e2,
                mid=0.5 * (alpha_t * e2),
                heun=alpha_t * (e2 / (-2.0 * h) + 1.0),
                third=alpha_t * ((1.0 - ns.torch_exp32(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5),
                noise=sigma_t * np.sqrt(1.0 - ns.torch_exp32(-2 * h)),
            )
        e = ns.torch_exp32(h) - 1.0
        c = dict(
            lead=alpha_t / alpha_s,
            c0=-(sigma_t * e),
            mid=-0.5 * (sigma_t * e),
            heun=-(sigma_t * (e / h - 1.0)),
            third=-(sigma_t * ((ns.torch_exp32(h) - 1.0 - h) / h**2 - 0.5)),
        )
        if algorithm == "sde-dpmsolver":  # twice the ODE's model weights, plus noise
            c = dict(
                lead=c["lead"],
                c0=2.0 * -(sigma_t * e),
                mid=-(sigma_t * e),
                heun=2.0 * c["heun"],
                noise=sigma_t * np.sqrt(ns.torch_exp32(2 * h) - 1.0),
            )
        return c


class DPMSolverMultistepScheduler(ExponentialIntegratorScheduler):
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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        name = type(self).__name__
        remap_solver_names(self, ALGORITHMS)
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            # diffusers checks the name as given, so "deis" (run as dpmsolver++) is refused here too
            raise ConfigError(
                f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm_type!r} in {name}; "
                "accepted: final_sigmas_type='sigma_min' (or algorithm_type 'dpmsolver++' / 'sde-dpmsolver++')."
            )
        if self.config.algorithm_type == "sde-dpmsolver" and solver_order >= 3:
            # diffusers has no third-order sde-dpmsolver update and fails mid-run
            raise ConfigError(
                f"algorithm_type='sde-dpmsolver' is not supported with solver_order={solver_order}; "
                "accepted: solver_order 1 or 2."
            )
        self._setup_tables()

    def set_timesteps(
        self, num_inference_steps: int | None = None, mu: float | None = None, timesteps: Sequence[int] | None = None
    ) -> None:
        """Build the schedule: ``num_inference_steps`` spaced timesteps (or custom ``timesteps``) and their sigmas,
        resampled when the config asks for karras / lu / exponential / beta / flow sigmas."""
        cfg = self.config
        self._apply_mu(mu)
        timesteps = self._inference_timesteps(num_inference_steps, timesteps)
        n = len(timesteps)
        if cfg.use_lu_lambdas and not cfg.use_karras_sigmas:  # evenly spaced in lambda (Lu et al. 2022b)
            log_sigmas = np.log(self._train_sigmas())
            lo, hi = float(log_sigmas[0]), float(log_sigmas[-1])
            sigmas = np.exp(hi + np.linspace(0, 1, n) * (lo - hi))
            timesteps = ns.sigma_to_t(sigmas, log_sigmas)
            if cfg.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        elif (
            resampled := self._resampled_sigmas(n, round_karras=cfg.beta_schedule != "squaredcos_cap_v2")
        ) is not None:
            sigmas, timesteps = resampled
        elif cfg.use_flow_sigmas:
            sigmas, timesteps = self._flow_sigmas(n)
        else:
            sigmas = self._interpolated_sigmas(timesteps)
        last = self._sigma_min() if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_history()

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x0 for DPM-Solver++ variants, eps for DPM-Solver variants."""
        if self.config.algorithm_type.endswith("++"):
            return self.data_prediction(model_output, sample)
        return self.noise_prediction(model_output, sample)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One multistep update from sigmas[i] to sigmas[i + 1], of the highest order the history allows."""
        self._start_step(timestep)
        cfg, i, n = self.config, self._step_index, len(self.timesteps)
        short = cfg.lower_order_final and n < 15  # few steps: higher orders are unstable at the end
        first_order_final = i == n - 1 and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero")
        second_order_final = i == n - 2 and short
        self._push_model_output(self.convert_model_output(model_output, sample))
        sample = sample.astype(np.float32, copy=False)
        noise = None
        if cfg.algorithm_type.startswith("sde-"):
            noise = randn(model_output.shape, generator) if variance_noise is None else variance_noise
            noise = noise.astype(np.float32, copy=False)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or first_order_final:
            order = 1
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_order_final:
            order = 2
        else:
            order = 3
        prev_sample = self._multistep_update(order, sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), None)

    def _multistep_update(self, order: int, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """DPM-Solver(++)-k multistep (2022b, Algorithm 2 / eq. 14): D1 and D2 are divided differences of the last
        model outputs m0 (now), m1, m2 in lambda, with ratios r_k = h_k / h of the previous step sizes."""
        i, cfg = self._step_index, self.config
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[i + 1])
        alpha_s, sigma_s = self.alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):  # lambda = inf at a final sigma of zero
            lam = [self.lambda_of(self.sigmas[i + 1 - k]) for k in range(order + 1)]  # lambda_t, lambda_s0, ...
        h = lam[0] - lam[1]
        c = dpm_coefficients(cfg.algorithm_type, alpha_t, sigma_t, alpha_s, sigma_s, h)
        m = self.model_outputs
        x = c["lead"] * sample + c["c0"] * m[-1]
        if order == 2:
            r0 = (lam[1] - lam[2]) / h
            d1 = (1.0 / r0) * (m[-1] - m[-2])
            x = x + (c["mid"] if cfg.solver_type == "midpoint" else c["heun"]) * d1
        elif order == 3:
            r0, r1 = (lam[1] - lam[2]) / h, (lam[2] - lam[3]) / h
            d1_0, d1_1 = (1.0 / r0) * (m[-1] - m[-2]), (1.0 / r1) * (m[-2] - m[-3])
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
            x = x + c["heun"] * d1 + c["third"] * d2
        if noise is not None:
            x = x + c["noise"] * noise
        return x
