"""UniPC: a unified predictor-corrector multistep solver (Zhao et al. 2023, "UniPC", Algorithms 2-3).

Each step first corrects the sample just reached with the fresh model output (UniC, the corrector), then
predicts the next sample from the history of converted model outputs (UniP, the predictor). Both integrate the
diffusion ODE in log-SNR time lambda; their coefficients rho solve a small linear system R rho = b built from the
B(h) variants bh1 (B(h) = h) and bh2 (B(h) = e^h - 1) of the paper's eq. 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .exponential_integrator import ExponentialIntegratorScheduler


class UniPCMultistepScheduler(ExponentialIntegratorScheduler):
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
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = [],  # noqa: B006 - diffusers' default; never mutated
        solver_p=None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ):
        name = type(self).__name__
        if solver_type in ("midpoint", "heun", "logrho"):  # diffusers maps other solvers' names to bh2
            self._rewrite_config(solver_type="bh2")
            solver_type = "bh2"
        check_choice("solver_type", solver_type, ("bh1", "bh2", "midpoint", "heun", "logrho"), name)
        check_choice("time_shift_type", time_shift_type, ("exponential", "linear"), name)
        if solver_p is not None:
            raise ConfigError(f"solver_p is not supported by {name}; accepted: None (UniPC's own UniP predictor).")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ConfigError("shift_terminal is only supported with use_flow_sigmas=True.")
        if prediction_type == "flow_prediction" and not predict_x0:
            raise ConfigError(f"prediction_type='flow_prediction' needs predict_x0=True in {name}.")
        self._setup_tables()
        self.disable_corrector = list(disable_corrector)
        self.last_sample: np.ndarray | None = None
        self.this_order = 0

    # ----- schedule ---------------------------------------------------------------------------------------------
    def set_timesteps(
        self, num_inference_steps: int | None = None, sigmas: Sequence[float] | None = None, mu: float | None = None
    ) -> None:
        """n timesteps (int64) and n + 1 sigmas; ``sigmas`` (flow schedules only) and ``mu`` as in diffusers."""
        cfg = self.config
        if cfg.use_dynamic_shifting and mu is None:
            raise ConfigError("mu must be passed to set_timesteps when use_dynamic_shifting=True.")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ConfigError("set_timesteps(sigmas=...) is only supported with use_flow_sigmas=True.")
            sigmas = np.array(sigmas, dtype=np.float64)
            num_inference_steps = len(sigmas)
        n = self._check_num_inference_steps(num_inference_steps)
        timesteps = self._spaced_timesteps(n)
        train = self._train_sigmas() if sigmas is None else sigmas
        resampled = ns.resample_sigmas(cfg, train[::-1].astype(np.float64), n)
        if resampled is not None:
            sigmas = resampled
            if cfg.use_flow_sigmas:  # karras spacing, then mapped to flow time sigma / (1 + sigma)
                sigmas = sigmas / (sigmas + 1)
                timesteps = sigmas * cfg.num_train_timesteps
            else:  # float32 log table, as diffusers takes np.log of its float32 sigmas
                timesteps = ns.sigma_to_t(sigmas, np.log(train))
                if cfg.use_karras_sigmas:
                    timesteps = timesteps.round()  # karras rounds; exponential/beta truncate in the int64 cast
            last = sigmas[-1]  # sigma_min is the resampled schedule's own last sigma here
        elif cfg.use_flow_sigmas:
            sigmas, timesteps = self._unipc_flow_sigmas(n, sigmas, mu)
            last = sigmas[-1]
        else:
            sigmas = self._interpolated_sigmas(timesteps)
            last = self._sigma_min()
        last = last if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = np.asarray(timesteps).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_history()
        self.last_sample = None

    def _unipc_flow_sigmas(self, n: int, sigmas: np.ndarray | None, mu: float | None):
        """UniPC's flow schedule: n points of linspace(1, 1/N) (the base's DPM form starts one point lower)."""
        cfg = self.config
        if sigmas is None:
            sigmas = np.linspace(1, 1 / cfg.num_train_timesteps, n + 1)[:-1]
        if cfg.use_dynamic_shifting:
            shift = math.exp(mu) if cfg.time_shift_type == "exponential" else mu
            sigmas = shift / (shift + (1 / sigmas - 1))
        else:
            sigmas = cfg.flow_shift * sigmas / (1 + (cfg.flow_shift - 1) * sigmas)
        if cfg.shift_terminal:  # stretch so the last sigma lands on shift_terminal
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - cfg.shift_terminal))
        if abs(sigmas[0] - 1) < 1e-6:  # keeps alpha_t = 1 - sigma nonzero
            sigmas[0] -= 1e-6
        return sigmas, sigmas * cfg.num_train_timesteps

    # ----- model output conversion ------------------------------------------------------------------------------
    def _convert(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x0 (predict_x0, the paper's data-prediction UniPC) or noise; diffusers thresholds only the x0 form."""
        if self.config.predict_x0:
            return self.data_prediction(model_output, sample)
        kind = self.config.prediction_type
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[self._step_index])
        if kind == "epsilon":
            return model_output
        if kind == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample

    # ----- the solver -------------------------------------------------------------------------------------------
    def _uni_bh_update(self, x: np.ndarray, start: int, order: int, model_t: np.ndarray | None = None) -> np.ndarray:
        """From ``x`` at sigmas[start] to sigmas[start + 1] with the history (newest last) in model_outputs.
        Without ``model_t`` this is UniP (predictor, eq. 9); with it, UniC (corrector) using the new output."""
        predict_x0 = self.config.predict_x0
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[start + 1])
        alpha_s0, sigma_s0 = self.alpha_sigma(self.sigmas[start])
        lambda_s0 = ns.torch_log32(alpha_s0) - ns.torch_log32(sigma_s0)
        h = ns.torch_log32(alpha_t) - ns.torch_log32(sigma_t) - lambda_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for k in range(1, order):  # divided differences against earlier outputs, at ratios r_k of h
            rk = (self.lambda_of(self.sigmas[start - k]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        rks = np.array(rks + [1.0], dtype=np.float32)
        hh = -h if predict_x0 else h
        h_phi_1 = ns.torch_expm1_32(hh)  # h * phi_1(h) = e^h - 1
        b_h = hh if self.config.solver_type == "bh1" else h_phi_1
        h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
        for k in range(1, order + 1):  # b_k = (k! h phi_{k+1}(h)) / B(h), phi by its recurrence
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = np.stack([rks**k for k in range(order)]), np.array(b, dtype=np.float32)
        if model_t is None:  # predictor: order - 1 rhos; diffusers fixes rho = 1/2 at order 2
            rhos = [0.5] if order == 2 else (self._solve(R[:-1, :-1], b[:-1]) if order > 2 else [])
            res = sum(np.float32(r) * d for r, d in zip(rhos, d1s))
        else:  # corrector: one more rho, for the new output's difference D1_t; rho = 1/2 at order 1
            rhos = [0.5] if order == 1 else self._solve(R, b)
            res = sum(np.float32(r) * d for r, d in zip(rhos[:-1], d1s)) + np.float32(rhos[-1]) * (model_t - m0)
        if predict_x0:
            x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            scale = alpha_t * b_h
        else:
            x_t = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0
            scale = sigma_t * b_h
        return x_t - scale * res if d1s or model_t is not None else x_t

    @staticmethod
    def _solve(R: np.ndarray, b: np.ndarray) -> np.ndarray:
        try:
            return np.linalg.solve(R, b)
        except np.linalg.LinAlgError:
            raise ConfigError(
                "UniPC's coefficient system is singular (two history points coincide in log-SNR, as at a final "
                "sigma of 0 with solver_order 3 and lower_order_final=False); use lower_order_final=True or "
                "final_sigmas_type='sigma_min'."
            ) from None

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray, generator=None) -> SchedulerOutput:
        """Correct the sample just reached with UniC, then predict the next one with UniP."""
        self._start_step(timestep)
        i, cfg = self._step_index, self.config
        sample = sample.astype(np.float32, copy=False)
        with np.errstate(divide="ignore", invalid="ignore"):  # a final sigma of 0 makes lambda infinite
            converted = self._convert(model_output.astype(np.float32, copy=False), sample)
            if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
                sample = self._uni_bh_update(self.last_sample, i - 1, self.this_order, model_t=converted)
            self._push_model_output(converted)
            order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
            self.this_order = min(order, self.lower_order_nums + 1)  # warm up from first order
            self.last_sample = sample
            prev_sample = self._uni_bh_update(sample, i, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), None)
