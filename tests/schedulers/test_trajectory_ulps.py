"""Full sampling loops equal diffusers' to two float32 ulps per element at every step.

Same model outputs, same start, same noise, the default SD config under every timestep spacing.

- Untouched, DEIS, DPM-Solver singlestep, Euler, Heun, Euler ancestral and LMS measured 0 ulps on the development
  host (LMS: diffrt reproduces SciPy's Gauss-Kronrod pass over diffusers' float32 integrand); that depends on which
  values the host's torch kernels round correctly, so untouched diffusers is held to a relative tolerance here.
- All differ only where torch's float32 sqrt / exp / log / expm1 round differently from the correctly
  rounded values diffrt computes (one ulp in ~0.6% of inputs; see test_schedules_exact). Given the same rounding
  on both sides (diffusers' coefficient-sized scalars rounded correctly with ``scalar_rounding``, diffrt's
  1000-entry tables built with torch's kernels), their trajectories are bit-identical: the test allows two ulps and
  measures zero.
- UniPC cannot hold to two ulps and is held to the relative tolerance only (5.3e-7 measured), see
  benchmarks/SCHEDULERS.md: from its third step on it solves a 2x2 or 3x3 float32 system for its coefficients,
  and torch's LAPACK (MKL) and NumPy's round that solve differently in the last bit.
"""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_BASE, SD_SCHEDULERS, SHAPE, _close, run_both
from scalar_rounding import COEFFICIENT_SIZE, correctly_rounded_scalars
from ulps import assert_within_ulps

from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS
from diffrt.runtime.schedulers import noise_schedule as ns

WITHIN_TWO_ULPS = tuple(name for name in SD_SCHEDULERS if name != "UniPCMultistepScheduler")
PLAIN_RTOL = 4e-6  # untouched diffusers: ~1e-7 measured here (one ulp in one coefficient); other CPUs, other kernels


@pytest.fixture
def torch_table_kernels(monkeypatch):
    """diffrt's tables (arrays larger than a coefficient) built with torch's float32 kernels, as diffusers builds
    them; coefficient-sized values keep diffrt's correct rounding (diffusers' get it from scalar_rounding)."""

    def with_torch(op, own):
        def run(x):
            values = np.asarray(x, dtype=np.float32)
            if values.size <= COEFFICIENT_SIZE:
                return own(x)
            return op(torch.from_numpy(np.atleast_1d(values).copy())).numpy().reshape(values.shape)

        return run

    for name, op in (("torch_sqrt32", torch.sqrt), ("torch_log32", torch.log), ("torch_exp32", torch.exp)):
        monkeypatch.setattr(ns, name, with_torch(op, getattr(ns, name)))
    monkeypatch.setattr(ns, "torch_expm1_32", with_torch(torch.expm1, ns.torch_expm1_32))


def assert_loop_within_two_ulps(name: str, spacing: str, steps: int, seed: int = 0) -> None:
    config = {**SD_BASE, "timestep_spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(diffusers, name).from_config(config)
    ours = SCHEDULERS[name].from_config(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    x *= np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, seed, {}):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} {spacing} step {i}/{len(reference.timesteps)}")


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", WITHIN_TWO_ULPS)
def test_every_step_within_two_ulps_given_the_same_rounding(name, spacing, steps, torch_table_kernels):
    with correctly_rounded_scalars():
        assert_loop_within_two_ulps(name, spacing, steps)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", [*WITHIN_TWO_ULPS, "UniPCMultistepScheduler"])
def test_every_step_close_to_untouched_diffusers(name, spacing, steps):
    config = {**SD_BASE, "timestep_spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(diffusers, name).from_config(config)
    ours = SCHEDULERS[name].from_config(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
        _close(x_ours, x_ref, f"{name} {spacing} step {i}", rtol=PLAIN_RTOL)


DETERMINISTIC = (
    "DDIMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
)


@pytest.mark.parametrize("sigmas", [{}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}], ids=str)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_config_space_within_two_ulps_given_the_same_rounding(name, prediction_type, sigmas, torch_table_kernels):
    config = {**SD_BASE, "prediction_type": prediction_type, **sigmas}
    if sigmas and next(iter(sigmas)) not in SCHEDULERS[name].config_fields():
        pytest.skip(f"{name} has no {next(iter(sigmas))}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = getattr(diffusers, name).from_config(config)
            reference.set_timesteps(10)
    except (ValueError, NotImplementedError):
        pytest.skip("diffusers refuses this config (the parity files check diffrt does too)")
    try:
        ours = SCHEDULERS[name].from_config(config)
    except ConfigError:
        pytest.skip("diffrt refuses at construction what diffusers fails on at the first step (test_refusals)")
    ours.set_timesteps(10)
    x = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    with correctly_rounded_scalars():
        for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
            assert_within_ulps(x_ours, x_ref, 2, f"{name} {config} step {i}")


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize(
    "name", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DEISMultistepScheduler"]
)
def test_dynamic_thresholding_within_two_ulps_given_the_same_rounding(name, steps, torch_table_kernels):
    # Imagen's thresholding: diffrt takes torch.quantile's rank and lerp to the bit (noise_schedule.torch_quantile32)
    config = {**SD_BASE, "thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5}
    reference, ours = getattr(diffusers, name).from_config(config), SCHEDULERS[name].from_config(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    x = np.random.default_rng(4).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    with correctly_rounded_scalars():
        for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
            assert_within_ulps(x_ours, x_ref, 2, f"{name} thresholding step {i}")
