"""Shared base of the exponential-integrator solvers: DPM-Solver (multistep, singlestep), UniPC and DEIS.

These solvers integrate the diffusion ODE in log-SNR time lambda = log(alpha_t / sigma_t) (Lu et al. 2022,
"DPM-Solver", sec. 3), from tables of the variance-preserving alpha_t and sigma_t. This base holds what they share:
the tables, the n+1-point timestep spacing, resampled (karras / exponential / beta / flow) sigma schedules, the
conversion of a model output to a data (x0) or noise prediction, the model-output history, and ``add_noise``.
Each subclass composes its own ``set_timesteps`` from these parts, because diffusers' four classes differ in small
ways (final sigma, rounding) that results depend on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler

PREDICTION_TYPES = ns.PREDICTION_TYPES + ("flow_prediction",)


class ExponentialIntegratorScheduler(Scheduler):
    """Tables and conversions shared by DPM-Solver, UniPC and DEIS. Subclasses call ``_setup_tables`` from
    ``__init__`` and implement ``set_timesteps`` and ``step``."""

    abstract = True

    def _setup_tables(self) -> None:
        cfg = self.config
        name = type(self).__name__
        ns.check_sigma_schedule(cfg)
        ns.check_prediction_type(cfg.prediction_type, name, PREDICTION_TYPES)
        check_choice("timestep_spacing", cfg.get("timestep_spacing", "linspace"), ns.TIMESTEP_SPACINGS, name)
        check_choice("final_sigmas_type", cfg.get("final_sigmas_type", "zero"), ("zero", "sigma_min"), name)
        if not isinstance(cfg.solver_order, (int, np.integer)) or cfg.solver_order < 1:
            raise ConfigError(f"solver_order={cfg.solver_order!r} is not supported; accepted: a positive integer.")
        self.betas = ns.make_betas(
            cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas, owner=name
        )
        if cfg.get("rescale_betas_zero_snr"):
            self.betas = ns.rescale_zero_terminal_snr(self.betas)
        self.alphas_cumprod = ns.alphas_cumprod(self.betas)
        if cfg.get("rescale_betas_zero_snr"):
            self.alphas_cumprod[-1] = 2.0**-24  # keeps sigma finite at zero terminal SNR
        self.alpha_t = ns.torch_sqrt32(self.alphas_cumprod)
        self.sigma_t = ns.torch_sqrt32(1 - self.alphas_cumprod)
        self.lambda_t = ns.torch_log32(self.alpha_t) - ns.torch_log32(self.sigma_t)
        self.sigmas = ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.timesteps = np.linspace(0, cfg.num_train_timesteps - 1, cfg.num_train_timesteps, dtype=np.float32)[::-1]
        self.num_inference_steps = None
        self.model_outputs: list[np.ndarray | None] = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    init_noise_sigma = 1.0  # these solvers work on variance-preserving samples

    # ----- schedule parts ---------------------------------------------------------------------------------------
    def _train_sigmas(self) -> np.ndarray:
        """Training sigmas, ascending in t, as float32 (the table the schedules interpolate)."""
        return ns.sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """n int64 timesteps: ``linspace``/``leading`` place n + 1 points on [0, last) and drop the final (t = 0)
        one; ``trailing`` counts down from last - 1 in steps of N / n. last = N, less the noisiest timesteps whose
        lambda falls below ``lambda_min_clipped`` where the config has that field (DPM-Solver)."""
        cfg = self.config
        total = cfg.num_train_timesteps
        lambda_min = np.float32(cfg.get("lambda_min_clipped", -np.inf))
        last = total - int(np.searchsorted(self.lambda_t[::-1], lambda_min))
        # a scheduler without the field (DPM-Solver singlestep) spaces by linspace even when a shared config names
        # another spacing, as diffusers does
        spacing = cfg.timestep_spacing if "timestep_spacing" in self.config_fields() else "linspace"
        if spacing == "linspace":
            t = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
        elif spacing == "leading":
            t = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + cfg.steps_offset
        else:
            t = np.arange(last, 0, -total / n).round() - 1
        return t.astype(np.int64)

    def _inference_timesteps(self, num_inference_steps: int | None, timesteps: Sequence[int] | None) -> np.ndarray:
        """Explicit ``timesteps`` (int64; not with resampled sigmas) or ``num_inference_steps`` spaced per config."""
        cfg = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError("set_timesteps takes exactly one of num_inference_steps or timesteps.")
        if timesteps is None:
            return self._spaced_timesteps(self._check_num_inference_steps(num_inference_steps))
        resampling = (
            "use_karras_sigmas",
            "use_lu_lambdas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_flow_sigmas",
        )
        if any(cfg.get(k) for k in resampling):
            raise ConfigError("custom timesteps cannot be combined with karras/lu/exponential/beta/flow sigmas.")
        return np.asarray(timesteps).astype(np.int64)

    def _apply_mu(self, mu: float | None) -> None:
        """Dynamic shifting: diffusers rewrites ``flow_shift`` = e^mu in the config, for good."""
        if mu is None:
            return
        if not self.config.get("use_dynamic_shifting") or self.config.get("time_shift_type") != "exponential":
            raise ConfigError(
                "set_timesteps(mu=...) requires use_dynamic_shifting=True and time_shift_type='exponential'."
            )
        self._rewrite_config(flow_shift=float(np.exp(mu)))

    def _resampled_sigmas(self, n: int, round_karras: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """Karras / exponential / beta sigmas (descending, float64) and their timesteps, or None. Karras timesteps
        are rounded (``round_karras``); the others stay fractional, so the int64 cast truncates them, as in
        diffusers. Timesteps are read back against float32 log-sigmas, as diffusers interpolates."""
        train = self._train_sigmas()
        sigmas = ns.resample_sigmas(self.config, train[::-1].astype(np.float64), n)
        if sigmas is None:
            return None
        timesteps = ns.sigma_to_t(sigmas, np.log(train))
        if round_karras and self.config.get("use_karras_sigmas"):
            timesteps = timesteps.round()
        return sigmas, timesteps

    def _flow_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Flow-matching sigmas (sigma = t, shifted by ``flow_shift``) and their timesteps sigma * N."""
        total, shift = self.config.num_train_timesteps, self.config.flow_shift
        sigmas = 1.0 - np.linspace(1, 1 / total, n + 1)
        sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
        return sigmas, sigmas * total

    def _interpolated_sigmas(self, timesteps: np.ndarray) -> np.ndarray:
        train = self._train_sigmas()
        return np.interp(timesteps, np.arange(len(train)), train)

    def _sigma_min(self) -> float:
        """The smallest training sigma (t = 0): the final sigma for ``final_sigmas_type="sigma_min"``."""
        return float(self._train_sigmas()[0])

    def _reset_history(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    # ----- conversions -----------------------------------------------------------------------------------------
    def alpha_sigma(self, sigma) -> tuple[np.float32, np.float32]:
        """(alpha_t, sigma_t) of the variance-preserving process at VE noise level ``sigma``."""
        sigma = np.float32(sigma)
        if self.config.get("use_flow_sigmas"):
            return np.float32(1) - sigma, sigma
        alpha = np.float32(1) / np.sqrt(sigma * sigma + np.float32(1))
        return alpha, sigma * alpha

    def lambda_of(self, sigma) -> np.float32:
        """log-SNR half: lambda = log(alpha_t) - log(sigma_t)."""
        alpha, sigma_t = self.alpha_sigma(sigma)
        with np.errstate(divide="ignore"):  # sigma = 0 at the end of the schedule: lambda = +inf, as in diffusers
            return ns.torch_log32(alpha) - ns.torch_log32(sigma_t)

    def _split_learned_variance(self, model_output: np.ndarray) -> np.ndarray:
        if self.config.get("variance_type") in ("learned", "learned_range"):
            return model_output[:, :3]  # diffusers keeps the first three channels of a learned-variance output
        return model_output

    def data_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x0 estimate from the model output at the current step (thresholded if configured)."""
        kind = self.config.prediction_type
        sigma = self.sigmas[self._step_index]
        if kind == "epsilon":
            alpha_t, sigma_t = self.alpha_sigma(sigma)
            x0 = (sample - sigma_t * self._split_learned_variance(model_output)) / alpha_t
        elif kind == "sample":
            x0 = model_output
        elif kind == "v_prediction":
            alpha_t, sigma_t = self.alpha_sigma(sigma)
            x0 = alpha_t * sample - sigma_t * model_output
        else:  # flow_prediction: the model predicts the velocity noise - x0
            x0 = sample - np.float32(sigma) * model_output
        if self.config.thresholding:
            x0 = ns.dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def noise_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """Noise estimate from the model output at the current step (thresholding applied through x0)."""
        kind = self.config.prediction_type
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[self._step_index])
        if kind == "epsilon":
            eps = self._split_learned_variance(model_output)
        elif kind == "sample":
            eps = (sample - alpha_t * model_output) / sigma_t
        elif kind == "v_prediction":
            eps = alpha_t * model_output + sigma_t * sample
        else:
            raise ConfigError(
                f"prediction_type='flow_prediction' is not supported with noise-prediction algorithms in "
                f"{type(self).__name__}; accepted: epsilon, sample, v_prediction."
            )
        if self.config.thresholding:
            x0 = ns.dynamic_threshold(
                (sample - sigma_t * eps) / alpha_t, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
            )
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    # ----- bookkeeping -----------------------------------------------------------------------------------------
    def index_for_timestep(self, timestep, schedule_timesteps: np.ndarray | None = None) -> int:
        """As the base, but a timestep not in the schedule maps to the last step (diffusers' rule here)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = np.flatnonzero(schedule == np.asarray(timestep).reshape(()))
        if len(matches) == 0:
            return len(self.timesteps) - 1
        return int(matches[1] if len(matches) > 1 else matches[0])

    def _push_model_output(self, x: np.ndarray) -> None:
        """Shift the history left and append the newest converted model output."""
        self.model_outputs = self.model_outputs[1:] + [x]

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x_t = alpha_t * x_0 + sigma_t * noise at each of ``timesteps`` (one per batch item)."""
        timesteps = np.atleast_1d(np.asarray(timesteps))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        alpha, sigma = self.alpha_sigma(self.sigmas[indices].astype(np.float32))
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return (alpha.reshape(shape) * original_samples + sigma.reshape(shape) * noise).astype(original_samples.dtype)
