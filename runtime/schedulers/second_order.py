"""Table helpers of the second-order sigma-space schedulers (Heun, KDPM2, KDPM2 ancestral), whose timesteps
interleave the two stages of each step."""

from __future__ import annotations

import numpy as np

from . import noise_schedule as ns


def repeat_after_first(x: np.ndarray) -> np.ndarray:
    """[x0, x1, x1, x2, x2, ...]: both stages of a second-order step read the same entry."""
    return np.concatenate([x[:1], np.repeat(x[1:], 2)])


def stage_table(x: np.ndarray) -> np.ndarray:
    """repeat_after_first(x) plus x's last entry again: the (2n + 2,) tables KDPM2 index by step position."""
    return np.append(repeat_after_first(x), x[-1:])


def log_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """exp(lerp(log a, log b, 1/2)) in float32, as torch.lerp evaluates it at weight 1/2 (end - diff / 2)."""
    log_a, log_b = ns.torch_log32(a), ns.torch_log32(b)
    with np.errstate(invalid="ignore"):
        return ns.torch_exp32(log_b - (log_b - log_a) * np.float32(0.5))


def sigma_to_t32(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """ns.sigma_to_t evaluated in float32, as diffusers' KDPM2 does it for the midpoint sigmas (torch tensors)."""
    # NumPy's float32 log, not torch's: diffusers' np.log on a torch tensor runs NumPy's ufunc (__array_wrap__)
    log_sigma = np.log(np.maximum(sigma.astype(np.float32), np.float32(1e-10)))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low.astype(np.float32) + w * high.astype(np.float32)
