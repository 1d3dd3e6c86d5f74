"""Run diffusers with its float32 scalar exp / log / sqrt / cos / sin correctly rounded, as diffrt computes them.

torch evaluates float32 exp, log, sqrt (also ``x ** 0.5``), cos and sin on the CPU with kernels that round faithfully
but not always correctly: here 22 of 3000 random 0-d float32 square roots, 18 of 3000 exps and ~150 of 3000 cosines
and sines come out one ulp off the correctly rounded value (which ones depends on the CPU's code path). diffrt rounds
them correctly (the ``noise_schedule.torch_*32`` functions), so a scheduler whose step coefficients come from such
scalars can differ from diffusers by one ulp in a coefficient, ~1e-7 relative to the sample, which reads as
thousands of ulps in elements that cancel to near zero. Inside ``correctly_rounded_scalars()`` diffusers' results
for coefficient-sized float32 tensors (0-d, or up to 16 elements: one per batch item) are rounded correctly too;
every other torch operation is untouched (samples are far larger; ``max_elements`` widens the net for schedulers
that apply these functions to whole samples), so the two sides must then agree to the bit.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

COEFFICIENT_SIZE = 16


def _is_float32(x, max_elements: int) -> bool:
    return isinstance(x, torch.Tensor) and x.numel() <= max_elements and x.dtype == torch.float32


def _rounded(x: torch.Tensor, exact) -> torch.Tensor:
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return torch.from_numpy(np.asarray(exact(x.detach().numpy().astype(np.float64)), dtype=np.float32))


@contextlib.contextmanager
def correctly_rounded_scalars(max_elements: int = COEFFICIENT_SIZE):
    """Within the block, torch.exp / log / sqrt / cos / sin, the same tensor methods, ``tensor ** p`` (p other than
    2 and 3) and ``number ** tensor`` of a float32 tensor of at most ``max_elements`` (default: coefficient-sized)
    return correctly rounded float32 results (via float64). A larger ``max_elements`` also covers functions
    diffusers applies to whole samples or schedule tables."""
    exact = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "cos": np.cos, "sin": np.sin}
    functions = {name: getattr(torch, name) for name in exact}
    methods = {name: getattr(torch.Tensor, name) for name in exact}
    own = {name for name in (*exact, "__pow__", "__rpow__") if name in vars(torch.Tensor)}  # others come from C
    original_pow, original_rpow = torch.Tensor.__pow__, torch.Tensor.__rpow__

    def rounded(name, original):
        def op(x, *args, **kwargs):
            if _is_float32(x, max_elements) and not args and not kwargs:
                return _rounded(x, exact[name])
            return original(x, *args, **kwargs)

        return op

    def power(x, exponent):
        # torch multiplies out x ** 2 and x ** 3 (diffrt mirrors that); other exponents go through its pow kernel
        number = isinstance(exponent, (int, float)) and not isinstance(exponent, bool)
        if _is_float32(x, max_elements) and number and exponent not in (2, 3):
            return _rounded(x, lambda v: np.power(v, exponent))
        return original_pow(x, exponent)

    def power_of(x, base):  # base ** x for a Python number base, which torch first rounds to float32
        number = isinstance(base, (int, float)) and not isinstance(base, bool)
        if _is_float32(x, max_elements) and number:
            return _rounded(x, lambda v: np.power(np.float64(np.float32(base)), v))
        return original_rpow(x, base)

    for name in exact:
        setattr(torch, name, rounded(name, functions[name]))
        setattr(torch.Tensor, name, rounded(name, methods[name]))
    torch.Tensor.__pow__, torch.Tensor.__rpow__ = power, power_of
    try:
        yield
    finally:
        for name in exact:
            setattr(torch, name, functions[name])
        for name, original in (*methods.items(), ("__pow__", original_pow), ("__rpow__", original_rpow)):
            if name in own:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)
