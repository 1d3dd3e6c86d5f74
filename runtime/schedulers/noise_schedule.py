"""Noise-schedule math shared by every scheduler: betas, sigma schedules, timestep spacing, thresholding.

Tables follow diffusers' dtypes where that decides results: betas and cumulative alphas are float32 (diffusers
builds them as float32 tensors); sigma resampling and sigma-to-timestep interpolation run in float64 (diffusers
does them in NumPy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError, check_choice

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----- betas and alphas -------------------------------------------------------------------------------------
def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> np.ndarray:
    """Betas that discretise a continuous alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021, eq. 17 for cosine)."""
    if alpha_transform_type == "cosine":

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif alpha_transform_type == "laplace":

        def alpha_bar(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    elif alpha_transform_type == "exp":

        def alpha_bar(t):
            return math.exp(t * -12.0)
    else:
        check_choice("alpha_transform_type", alpha_transform_type, ("cosine", "exp", "laplace"))
    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Iterable[float] | None = None,
    *,
    owner: str = "",
    accepted: tuple[str, ...] = BETA_SCHEDULES,
) -> np.ndarray:
    """The training betas a config describes, float32, length ``num_train_timesteps``."""
    if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 1:
        raise ConfigError(
            f"num_train_timesteps={num_train_timesteps!r} is not supported; accepted: a positive integer."
        )
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ConfigError(
                f"trained_betas has shape {betas.shape}; accepted: a 1-D list of num_train_timesteps "
                f"({num_train_timesteps}) values."
            )
        return betas
    check_choice("beta_schedule", beta_schedule, accepted, owner)
    n = num_train_timesteps
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64).astype(np.float32)
    if beta_schedule == "scaled_linear":  # the Stable Diffusion schedule: linear in sqrt(beta)
        return (np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64).astype(np.float32)) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    if beta_schedule in ("laplace", "exp"):  # DDPM's and Heun's extra alpha_bar transforms
        return betas_for_alpha_bar(n, alpha_transform_type=beta_schedule)
    if beta_schedule == "sigmoid":  # GeoDiff's schedule (DDPM only)
        x = np.linspace(-6, 6, n, dtype=np.float64).astype(np.float32)
        return (1 / (1 + np.exp(-x)) * (beta_end - beta_start) + beta_start).astype(np.float32)
    raise AssertionError(beta_schedule)  # check_choice covers every accepted name


def betas_from_config(config, owner: str = "", accepted: tuple[str, ...] = BETA_SCHEDULES) -> np.ndarray:
    """The training betas a scheduler config describes, rescaled to zero terminal SNR when it asks."""
    betas = make_betas(
        config.num_train_timesteps,
        config.beta_start,
        config.beta_end,
        config.beta_schedule,
        config.get("trained_betas"),
        owner=owner,
        accepted=accepted,
    )
    return rescale_zero_terminal_snr(betas) if config.get("rescale_betas_zero_snr") else betas


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift and scale sqrt(alpha_bar) so the last timestep has zero SNR (Lin et al. 2023, Algorithm 1)."""
    alphas_bar_sqrt = alphas_cumprod(betas) ** 0.5
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(np.float32)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) as float32. Accumulated in float64, as torch's CPU cumprod does for
    float32 tensors: a float32 accumulator drifts by an ulp, enough to move a rounded timestep by one."""
    return np.cumprod((1.0 - betas.astype(np.float32)).astype(np.float64)).astype(np.float32)


def sigmas_from_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Variance-exploding noise levels sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), in training order."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).astype(np.float32)


# ----- timestep spacing (Lin et al. 2023, Table 2) ----------------------------------------------------------
def spaced_timesteps(
    spacing: str,
    num_inference_steps: int,
    num_train_timesteps: int,
    steps_offset: int = 0,
    *,
    round_linspace: bool = True,
    owner: str = "",
) -> np.ndarray:
    """Descending float64 timesteps for ``spacing``: ``linspace`` spans [0, N-1] evenly, ``leading`` takes
    multiples of N // n (plus ``steps_offset``), ``trailing`` counts down from N - 1 in steps of N / n."""
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS, owner)
    n, total = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        t = np.linspace(0, total - 1, n, dtype=np.float64)
        return (t.round() if round_linspace else t)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    ratio = total / n
    return np.round(np.arange(total, 0, -ratio)).astype(np.float64) - 1


# ----- sigma schedules --------------------------------------------------------------------------------------
def sigma_to_t(sigma: np.ndarray | float, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose log-sigma matches ``sigma``, by linear interpolation in log-sigma."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma.reshape(-1) - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma.reshape(-1)) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Evenly spaced in log-sigma, from sigma_max down to sigma_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta Sampling is All You Need"): sigmas at Beta(alpha, beta) quantiles of 1 - ramp."""
    quantiles = [beta_ppf(q, alpha, beta) for q in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + q * (sigma_max - sigma_min) for q in quantiles])


def check_sigma_schedule(config) -> None:
    """Karras, exponential and beta sigma schedules exclude one another."""
    chosen = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if config.get(k)]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} are all set; accepted: at most one of them set to true.")


def resample_sigmas(config, sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray | None:
    """Apply the config's karras / exponential / beta schedule between its sigma bounds, or return None.

    ``sigma_min``/``sigma_max`` config fields override the bounds taken from ``sigmas`` (first = max)."""
    sigma_min = config.get("sigma_min")
    sigma_max = config.get("sigma_max")
    sigma_min = float(sigmas[-1]) if sigma_min is None else sigma_min
    sigma_max = float(sigmas[0]) if sigma_max is None else sigma_max
    if config.get("use_karras_sigmas"):
        return karras_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.get("use_exponential_sigmas"):
        return exponential_sigmas(sigma_min, sigma_max, num_inference_steps)
    if config.get("use_beta_sigmas"):
        return beta_sigmas(sigma_min, sigma_max, num_inference_steps)
    return None


# ----- the regularised incomplete beta function and its inverse (for beta sigmas, without SciPy) -------------
def _betainc_continued_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz; converges for x < (a + 1) / (a + b + 2))."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betainc_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _betainc_continued_fraction(1.0 - x, b, a) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) at ``q``, by bisection on the monotone CDF (to float64 resolution)."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ----- prediction conversion and thresholding ---------------------------------------------------------------
def check_prediction_type(prediction_type: str, owner: str = "", accepted: tuple[str, ...] = PREDICTION_TYPES) -> None:
    check_choice("prediction_type", prediction_type, accepted, owner)


def dynamic_threshold(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample, clip x0 to the ``ratio``
    quantile s of |x0| (s clamped to [1, max_value]) and divide by s."""
    dtype = sample.dtype
    work = sample.astype(np.float32) if dtype not in (np.float32, np.float64) else sample
    batch = work.shape[0]
    flat = work.reshape(batch, -1)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(flat.dtype)
    s = np.clip(s, 1, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(dtype)
