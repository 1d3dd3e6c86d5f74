"""CogVideoX's DDIM (Yang et al. 2024): deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0) on an
alpha_bar table whose SNR is divided by ``snr_shift_scale`` (SD3's resolution shift), optionally rescaled to zero
terminal SNR afterwards. x0 is never clipped and no noise is added, whatever the config or step arguments say."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput
from .ddim import DDIMScheduler


def table_sqrt(x):
    """Square root in the precision of ``x``: float32 as torch's CPU kernel rounds it (``ns.torch_sqrt32``), float64
    by NumPy (diffusers' float64 tables)."""
    return ns.torch_sqrt32(x) if np.asarray(x).dtype == np.float32 else np.sqrt(x)


def compute_dtype(sample: np.ndarray) -> type:
    """float32 for float16/float32 samples (torch computes half tensors in float), float64 for float64."""
    return np.promote_types(sample.dtype, np.float32).type


class CogVideoXDDIMScheduler(DDIMScheduler):
    """DDIM's timesteps and alpha_bar lookup; its own table and its own (noise-free) update.

    The table is float64 for ``scaled_linear`` betas (diffusers builds that schedule in float64) and float32
    otherwise; step coefficients are computed in the table's precision and rounded once to the sample's, as
    diffusers' 0-dim tensors are."""

    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.0120,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        snr_shift_scale: float = 3.0,
    ):
        name = type(self).__name__
        ns.check_prediction_type(prediction_type, name)
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        if not snr_shift_scale > 0:  # diffusers takes it, then every alpha_bar leaves (0, 1] and sampling is NaN
            raise ConfigError(f"snr_shift_scale={snr_shift_scale!r} is not supported; accepted: a number above 0.")
        self._setup_shifted_tables()

    def _setup_shifted_tables(self) -> None:
        cfg = self.config
        n = cfg.num_train_timesteps
        betas = ns.make_betas(  # also validates the schedule fields
            n, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas, owner=type(self).__name__
        )
        if cfg.trained_betas is None and cfg.beta_schedule == "scaled_linear":  # diffusers builds it in float64
            betas = ns.torch_linspace64(cfg.beta_start**0.5, cfg.beta_end**0.5, n) ** 2
            alphas_cumprod = np.cumprod(1.0 - betas)
        else:
            alphas_cumprod = ns.alphas_cumprod(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        table = ns.snr_shifted_alphas_cumprod(alphas_cumprod, cfg.snr_shift_scale)
        if cfg.rescale_betas_zero_snr:
            table = ns.zero_terminal_snr_alphas_cumprod(table)
        self.alphas_cumprod = table  # (num_train_timesteps,) float64 or float32, see the class docstring
        self.final_alpha_cumprod = table.dtype.type(1.0) if cfg.set_alpha_to_one else table[0]
        self.timesteps = np.arange(n, dtype=np.int64)[::-1].copy()
        self.num_inference_steps = None

    def _sqrt_alpha_bars(self, timesteps, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """add_noise / get_velocity scales: the table rounded to the sample's dtype first, then square-rooted (as
        diffusers does, with torch's float32 rounding via ``table_sqrt``), shaped to broadcast against ``like``."""
        t = np.asarray(timesteps)
        if not np.issubdtype(t.dtype, np.integer):
            if not np.array_equal(t, np.round(t)):
                raise ConfigError(f"timesteps={t.tolist()} are not integers; accepted: integer training timesteps.")
            t = t.astype(np.int64)
        a = self.alphas_cumprod.astype(like.dtype)[t.reshape(-1)]
        a = a.reshape(a.shape + (1,) * (like.ndim - 1))
        return table_sqrt(a), table_sqrt(1 - a)

    def _predict_x0(self, model_output: np.ndarray, sample: np.ndarray, alpha_bar) -> np.ndarray:
        """x0 from an epsilon / v / sample prediction at cumulative alpha ``alpha_bar`` (never clipped)."""
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        work = compute_dtype(sample)
        sqrt_a, sqrt_b = work(table_sqrt(alpha_bar)), work(table_sqrt(1 - alpha_bar))
        if kind == "epsilon":
            return (sample - sqrt_b * model_output) / sqrt_a
        return sqrt_a * sample - sqrt_b * model_output  # v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | int | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """x_{t'} = s x_t + (sqrt(a_t') - sqrt(a_t) s) x0 with s = sqrt((1 - a_t') / (1 - a_t)): eq. 12, sigma_t = 0.

        ``eta``, ``use_clipped_model_output``, ``generator`` and ``variance_noise`` are accepted, so pipelines
        written for DDIM can pass them, and ignored, as diffusers' CogVideoXDDIMScheduler ignores them."""
        self._require_timesteps()
        alpha_bar, alpha_bar_prev = self._alpha_bars(int(timestep))
        work = compute_dtype(sample)
        x0 = self._predict_x0(model_output, sample, alpha_bar)
        sample_coeff = table_sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        x0_coeff = table_sqrt(alpha_bar_prev) - table_sqrt(alpha_bar) * sample_coeff
        prev_sample = work(sample_coeff) * sample + work(x0_coeff) * x0
        return SchedulerOutput(prev_sample.astype(sample.dtype), x0.astype(sample.dtype))
