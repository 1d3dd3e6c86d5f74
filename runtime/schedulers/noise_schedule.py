"""Noise-schedule math shared by every scheduler: betas, sigma schedules, timestep spacing, thresholding.

Tables follow diffusers' dtypes and rounding where that decides results: betas and cumulative alphas are float32
(diffusers builds them as float32 tensors, with torch's float32 ``linspace``, reproduced bit for bit by
``torch_linspace``); sigma resampling and sigma-to-timestep interpolation run in float64 (diffusers does them in
NumPy).
"""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from ..errors import ConfigError, check_choice

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----- torch's float32 linspace, bit for bit --------------------------------------------------------------------
def torch_fuses_multiply_add() -> bool:
    """Whether torch's CPU kernels on this host evaluate ``a + b * c`` with one rounding (a fused multiply-add).

    torch picks its kernels by CPU at run time: the AVX2 and AVX-512 builds of ``linspace`` fuse, the baseline
    x86-64 build (no FMA instruction) rounds the product and the sum separately. ``ATEN_CPU_CAPABILITY`` overrides
    the choice there and here alike. Other architectures (aarch64: FMA is baseline and compilers contract) are
    taken to fuse; that was not measured."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if capability:
        return capability != "default"
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    return _x86_has("AVX2") and _x86_has("FMA3")


def _x86_has(feature: str) -> bool:
    try:  # NumPy's own run-time CPU dispatch table
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return bool(__cpu_features__.get(feature, False))


def fma32(x, y, z) -> np.ndarray:
    """float32(x * y + z) rounded once, as a fused multiply-add. x * y must be exact in float64 (float32 by float32,
    or a float32 by an integer below 2^29); the float64 sum's rounding error is recovered (Knuth's TwoSum) to settle
    the one case where rounding the float64 sum to float32 rounds twice: a sum exactly halfway between two
    float32 values."""
    base = np.asarray(z, dtype=np.float64)
    product = np.asarray(x, dtype=np.float64) * np.asarray(y, dtype=np.float64)
    total = base + product
    virtual = total - base
    error = (base - (total - virtual)) + (product - virtual)
    rounded = total.astype(np.float32)
    toward = np.nextafter(rounded, np.where(total > rounded, np.float32(np.inf), np.float32(-np.inf)))
    halfway = (total != rounded) & (total - rounded == toward.astype(np.float64) - total)
    moves_toward = np.sign(error) == np.sign(toward.astype(np.float64) - rounded)
    return np.where(halfway & (error != 0) & moves_toward, toward, rounded)


def torch_linspace(start: float, end: float, steps: int, fused: bool | None = None) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` as torch's CPU kernel computes it.

    step = (end - start) / (steps - 1) in float32; the first half of the points is start + step * i and the
    second half end - step * (steps - 1 - i), so both ends are exact. ``fused`` (default: as torch does on this
    host, see ``torch_fuses_multiply_add``) rounds each point once; otherwise the product is rounded first."""
    fused = torch_fuses_multiply_add() if fused is None else bool(fused)
    return _torch_linspace(float(start), float(end), int(steps), fused).copy()  # cached: built per request


@functools.lru_cache(maxsize=64)
def _torch_linspace(start: float, end: float, steps: int, fused: bool) -> np.ndarray:
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    first = i < steps // 2
    base = np.where(first, start32, end32)
    count = np.where(first, i, -(steps - 1 - i))
    if fused:
        return fma32(step, count, base)
    return (base + step * count.astype(np.float32)).astype(np.float32)


def torch_sqrt32(x: np.ndarray) -> np.ndarray:
    """float32 square root, correctly rounded. torch's CPU float32 ``sqrt`` / ``** 0.5`` (the tables diffusers
    builds) is not: it lands one ulp low for about 0.6% of inputs, under every ATEN_CPU_CAPABILITY; that last bit
    is not reproduced here (tests inject torch's to show everything built on it is bit-exact). NumPy's scalar
    ``np.float32 ** 0.5`` is not correctly rounded either (about 1 in 2000), so step coefficients use this."""
    if np.ndim(x) == 0:
        return np.sqrt(np.float32(x))
    return np.sqrt(np.asarray(x, dtype=np.float32))


def torch_log32(x: np.ndarray) -> np.ndarray:
    """float32 natural log rounded correctly, as torch's CPU ``log`` rounds nearly always (NumPy's float32 SIMD
    ``log`` is off by an ulp for about a fifth of inputs, so it is used only where diffusers calls NumPy)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)


def torch_exp32(x: np.ndarray) -> np.ndarray:
    """float32 exp rounded correctly, as torch's CPU ``exp`` rounds nearly always (see ``torch_log32``)."""
    with np.errstate(over="ignore"):
        return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)


def torch_expm1_32(x: np.ndarray) -> np.ndarray:
    """float32 exp(x) - 1 rounded correctly, as torch's CPU ``expm1`` rounds nearly always."""
    with np.errstate(over="ignore"):
        return np.expm1(np.asarray(x, dtype=np.float64)).astype(np.float32)


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
        return torch_linspace(beta_start, beta_end, n)
    if beta_schedule == "scaled_linear":  # the Stable Diffusion schedule: linear in sqrt(beta)
        return torch_linspace(beta_start**0.5, beta_end**0.5, n) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    if beta_schedule in ("laplace", "exp"):  # DDPM's and Heun's extra alpha_bar transforms
        return betas_for_alpha_bar(n, alpha_transform_type=beta_schedule)
    if beta_schedule == "sigmoid":  # GeoDiff's schedule (DDPM only)
        sigmoid = np.float32(1) / (np.float32(1) + torch_exp32(-torch_linspace(-6, 6, n)))
        return sigmoid * np.float32(beta_end - beta_start) + np.float32(beta_start)
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
    return torch_sqrt32((1 - alphas_cumprod) / alphas_cumprod)


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


def torch_quantile32(values: np.ndarray, q: float) -> np.ndarray:
    """``torch.quantile(values, q, dim=1)`` for float32 (B, N) values, to the bit: the rank q (N - 1) in float32,
    then torch's lerp between the neighbours (fused on hosts where torch fuses, see torch_fuses_multiply_add)."""
    ordered = np.sort(values.astype(np.float32, copy=False), axis=1)
    rank = np.float32(np.float32(q) * np.float32(values.shape[1] - 1))
    below, above = int(rank), int(np.ceil(rank))
    weight = np.float32(rank - np.float32(below))
    start, end = ordered[:, below], ordered[:, above]
    difference = end - start
    coefficient, base = (weight, start) if abs(weight) < 0.5 else (np.float32(weight - 1), end)
    if torch_fuses_multiply_add():
        return fma32(coefficient, difference, base)
    return (base + coefficient * difference).astype(np.float32)


def dynamic_threshold(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3): per sample, clip x0 to the ``ratio``
    quantile s of |x0| (s clamped to [1, max_value]) and divide by s. The quantile is torch's, to the bit."""
    dtype = sample.dtype
    work = sample.astype(np.float32) if dtype not in (np.float32, np.float64) else sample
    batch = work.shape[0]
    flat = work.reshape(batch, -1)
    if flat.dtype == np.float32:
        s = torch_quantile32(np.abs(flat), ratio)
    else:
        s = np.quantile(np.abs(flat), ratio, axis=1)
    s = np.clip(s, 1, max_value).astype(flat.dtype)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(sample.shape).astype(dtype)


# ----- float64 linspace and alpha_bar transforms (CogVideoX) ------------------------------------------------
def torch_linspace64(start: float, end: float, steps: int, fused: bool | None = None) -> np.ndarray:
    """See ``_torch_linspace64``; results are cached per (start, end, steps, fused): the exact arithmetic costs
    milliseconds, and servers build a scheduler per request."""
    fused = torch_fuses_multiply_add() if fused is None else bool(fused)
    return _torch_linspace64(float(start), float(end), int(steps), fused).copy()


@functools.lru_cache(maxsize=64)
def _torch_linspace64(start: float, end: float, steps: int, fused: bool) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float64)`` as torch's CPU kernel computes it: the two-halves
    formula of ``torch_linspace`` in float64. Where torch fuses the multiply-add, each point is rounded once
    (exact rational arithmetic stands in for the FMA, which Python 3.11 lacks)."""
    start, end = float(start), float(end)
    if steps == 1:
        return np.array([start])
    step = (end - start) / (steps - 1)
    i = np.arange(steps)
    first = i < steps // 2
    base = np.where(first, start, end)
    count = np.where(first, i, -(steps - 1 - i))
    if fused:
        exact_step = Fraction(step)
        return np.array([float(Fraction(b) + exact_step * int(c)) for b, c in zip(base, count, strict=True)])
    return base + step * count


def snr_shifted_alphas_cumprod(alphas_cumprod: np.ndarray, shift: float) -> np.ndarray:
    """alpha_bar whose SNR is the given one divided by ``shift`` (the SD3 resolution shift, as CogVideoX applies
    it to a discrete table): alpha_bar / (shift + (1 - shift) alpha_bar), in the table's dtype."""
    return alphas_cumprod / (shift + (1 - shift) * alphas_cumprod)


def zero_terminal_snr_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1 applied to alpha_bar itself (not to betas): shift and scale sqrt(alpha_bar) so
    the last is 0 and the first unchanged. Returns alpha_bar in the table's dtype."""
    root = torch_sqrt32(alphas_cumprod) if alphas_cumprod.dtype == np.float32 else np.sqrt(alphas_cumprod)
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    return root**2


def alpha_bars_per_item(alphas_cumprod: np.ndarray, timesteps, stride: int, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """alpha_bar at each batch item's own timestep t and at t - ``stride`` (1 before t = 0), shaped (B, 1, ...)
    to broadcast against ``ndim``-D samples: a batch whose items sit at different timesteps (ParaDiGMS' window)."""
    t = np.asarray(timesteps).reshape(-1)
    if not np.issubdtype(t.dtype, np.integer):
        if not np.array_equal(t, np.round(t)):
            raise ConfigError(f"timesteps={t.tolist()} are not integers; accepted: integer training timesteps.")
        t = t.astype(np.int64)
    prev = t - stride
    shape = (-1,) + (1,) * (ndim - 1)
    alpha_bar_prev = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)], alphas_cumprod.dtype.type(1.0))
    return alphas_cumprod[t].reshape(shape), alpha_bar_prev.reshape(shape)


# ----- float32 trigonometry (SCM's TrigFlow, Wuerstchen's cosine alpha_bar) -----------------------------------
def torch_cos32(x: np.ndarray) -> np.ndarray:
    """float32 cosine, correctly rounded (through float64), where diffusers calls torch's float32 ``cos``."""
    return np.cos(np.asarray(x, dtype=np.float64)).astype(np.float32)


def torch_sin32(x: np.ndarray) -> np.ndarray:
    """float32 sine, correctly rounded (through float64), where diffusers calls torch's float32 ``sin``."""
    return np.sin(np.asarray(x, dtype=np.float64)).astype(np.float32)


def torch_atan2_32(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 atan2(y, x), correctly rounded (through float64), where diffusers calls torch's float32 ``atan2``
    (IPNDM's angle of a (sigma, alpha) pair)."""
    return np.arctan2(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)).astype(np.float32)
