"""Full sampling loops equal diffusers' to two float32 ulps per element at every step.

Same model outputs, same start, the default SD config under every timestep spacing: each step's sample from diffrt
is within 2 ulps of diffusers' for the deterministic schedulers listed here. The rest are measured in
benchmarks/SCHEDULERS.md ("Trajectory parity") with the reason each cannot hold to two ulps, and are held to
parity.RTOL by their own parity tests.
"""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
from parity import SD_BASE, SHAPE, run_both
from ulps import assert_within_ulps

from diffrt.runtime.schedulers import SCHEDULERS

WITHIN_TWO_ULPS = (
    "DEISMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", WITHIN_TWO_ULPS)
def test_every_step_within_two_ulps(name, spacing, steps):
    config = {**SD_BASE, "timestep_spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(diffusers, name).from_config(config)
    ours = SCHEDULERS[name].from_config(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} {spacing} step {i}/{steps}")


@pytest.mark.parametrize("seed", [0, 1])
def test_euler_ancestral_every_step_within_two_ulps_with_shared_noise(seed):
    name = "EulerAncestralDiscreteScheduler"
    reference, ours = getattr(diffusers, name).from_config(SD_BASE), SCHEDULERS[name].from_config(SD_BASE)
    reference.set_timesteps(25)
    ours.set_timesteps(25)
    x = np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, seed, {}):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} step {i}")
