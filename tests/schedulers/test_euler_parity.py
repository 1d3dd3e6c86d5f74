"""EulerDiscreteScheduler matches diffusers across its config space."""

import pytest
from parity import SD_BASE, STEP_COUNTS, assert_img2img_parity, assert_sampling_parity

NAME = "EulerDiscreteScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"final_sigmas_type": "sigma_min"},
        {"interpolation_type": "log_linear"},
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
        {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
        {"num_train_timesteps": 500},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("steps", [4, 25])
def test_churn_draws_the_same_noise_as_diffusers(steps):
    assert_sampling_parity(NAME, SD_BASE, steps, seed=3, step_kwargs={"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 20.0})


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)
