"""KDPM2DiscreteScheduler matches diffusers across its config space."""

import numpy as np
import pytest
from parity import SD_BASE, STEP_COUNTS, assert_img2img_parity, assert_sampling_parity

import diffrt.runtime.schedulers.kdpm2  # noqa: F401  (registers the class; the package __init__ does not list it yet)

NAME = "KDPM2DiscreteScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "exp"},  # diffusers' KDPM2 refuses it (only Heun has it); so must we
        {"steps_offset": 0, "timestep_spacing": "leading"},
        {"steps_offset": 3, "timestep_spacing": "leading"},
        {"use_exponential_sigmas": True, "use_beta_sigmas": True},  # diffusers refuses; so must we
        {"num_train_timesteps": 500},
        {"trained_betas": np.linspace(0.00085, 0.012, 1000).tolist()},
    ],
    ids=lambda e: "trained_betas" if "trained_betas" in e else str(e),
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


def test_img2img_with_karras_sigmas_matches_diffusers():
    assert_img2img_parity(NAME, {**SD_BASE, "use_karras_sigmas": True}, 10, 0.6)
