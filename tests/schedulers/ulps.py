"""Float32 ulp distances between a diffrt array and diffusers' array of the same values.

The distance between two float32 values is how many representable float32 values lie between them (the gap in
their ordered integer codes), so 0 means bit-identical and 1 means neighbours. NaN anywhere is an error.
"""

from __future__ import annotations

import numpy as np


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 bit patterns mapped to integers that sort like the values (-0.0 and +0.0 both map to 0)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def ulp_distance(ours, ref) -> np.ndarray:
    """Per-element float32 ulp distance between ``ours`` and ``ref`` (same shape)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"shapes differ: {ours.shape} != {ref.shape}"
    assert not np.isnan(ours).any() and not np.isnan(ref).any(), "NaN in a compared array"
    return np.abs(_ordered(ours) - _ordered(ref))


def max_ulps(ours, ref) -> int:
    return int(ulp_distance(ours, ref).max(initial=0))


def assert_within_ulps(ours, ref, ulps: int, what: str) -> None:
    """Every element of ``ours`` within ``ulps`` float32 ulps of ``ref``."""
    distance = ulp_distance(ours, ref)
    worst = int(distance.max(initial=0))
    if worst > ulps:
        at = np.unravel_index(int(distance.argmax()), distance.shape)
        raise AssertionError(
            f"{what}: {worst} ulps apart at {at} (ours {np.asarray(ours)[at]!r}, diffusers {np.asarray(ref)[at]!r}); "
            f"{int((distance > ulps).sum())} of {distance.size} elements beyond {ulps} ulps"
        )
