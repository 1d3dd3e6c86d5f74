"""DEISMultistepScheduler matches diffusers across its config space."""

import diffusers
import numpy as np
import pytest
from parity import SD_BASE, STEP_COUNTS, assert_img2img_parity, assert_parity_or_same_overrun, assert_sampling_parity

import diffrt.runtime.schedulers.deis  # noqa: F401 - registers the class in SCHEDULERS
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "DEISMultistepScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    # beta sigmas at 50 steps repeat timestep 998 first (int64 cast): diffusers then overruns on its last step
    assert_parity_or_same_overrun(NAME, config, steps)


@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_solver_orders_match_diffusers(solver_order, lower_order_final, steps):
    config = {**SD_BASE, "solver_order": solver_order, "lower_order_final": lower_order_final}
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"solver_order": 3, "use_karras_sigmas": True},
        {"solver_order": 3, "use_exponential_sigmas": True, "prediction_type": "v_prediction"},
        {"algorithm_type": "dpmsolver++", "solver_type": "midpoint"},
        {"algorithm_type": "dpmsolver", "solver_type": "bh2"},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "use_exponential_sigmas": True},
        {"num_train_timesteps": 500},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0, "solver_order": 3},
        {"beta_schedule": "nope"},
        {"algorithm_type": "sde-dpmsolver++"},
        {"solver_type": "nope"},
        {"use_karras_sigmas": True, "use_exponential_sigmas": True},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


def test_dynamic_shifting_schedule_matches_diffusers():
    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_dynamic_shifting": True}
    reference, ours = diffusers.DEISMultistepScheduler(**config), SCHEDULERS[NAME](**config)
    reference.set_timesteps(20, mu=0.8)
    ours.set_timesteps(20, mu=0.8)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_allclose(ours.sigmas, reference.sigmas.numpy(), rtol=1e-6)


def test_refusals():
    with pytest.raises(ConfigError, match="mu"):
        SCHEDULERS[NAME]().set_timesteps(10, mu=0.5)
    with pytest.raises(ConfigError):
        SCHEDULERS[NAME]().set_timesteps(0)
