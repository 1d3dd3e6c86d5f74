"""PNDMScheduler matches diffusers: PLMS alone (skip_prk_steps) and with its Runge-Kutta warm-up."""

import diffusers
import numpy as np
import pytest
import torch
from parity import (
    SD_BASE,
    SHAPE,
    STEP_COUNTS,
    _close,
    assert_img2img_parity,
    assert_sampling_parity,
    config_id,
    stand_in_model,
)

import diffrt.runtime.schedulers.pndm  # noqa: F401  (registers PNDMScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "PNDMScheduler"


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, skip_prk_steps, steps):
    """With the Runge-Kutta warm-up, fewer than 4 steps is refused (diffusers fails building its PRK table)."""
    config = {
        **SD_BASE,
        "timestep_spacing": spacing,
        "prediction_type": prediction_type,
        "skip_prk_steps": skip_prk_steps,
    }
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},  # DDPM only: refused by both
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"set_alpha_to_one": True},
        {"set_alpha_to_one": True, "timestep_spacing": "trailing"},
        {"steps_offset": 0},
        {"steps_offset": 0, "timestep_spacing": "linspace"},
        {"num_train_timesteps": 500},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk"])
@pytest.mark.parametrize("steps", [5, 25])
def test_config_fields_match_diffusers(extra, skip_prk_steps, steps):
    assert_sampling_parity(NAME, {**SD_BASE, "skip_prk_steps": skip_prk_steps, **extra}, steps)


@pytest.mark.parametrize("skip_prk_steps", [True, False])
def test_schedule_and_history_bookkeeping_match_diffusers(skip_prk_steps):
    config = {**SD_BASE, "skip_prk_steps": skip_prk_steps}
    reference, ours = diffusers.PNDMScheduler.from_config(config), SCHEDULERS[NAME].from_config(config)
    reference.set_timesteps(10)
    ours.set_timesteps(10)
    np.testing.assert_array_equal(ours.prk_timesteps, reference.prk_timesteps)
    np.testing.assert_array_equal(ours.plms_timesteps, reference.plms_timesteps)
    assert ours.timesteps.dtype == np.int64
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    x_ref = torch.from_numpy(x.copy())
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        x = ours.step(stand_in_model(x, t_ours), t_ours, x).prev_sample
        x_ref = reference.step(torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref))), t_ref, x_ref).prev_sample
        assert ours.counter == reference.counter and len(ours.ets) == len(reference.ets)
        for e_ours, e_ref in zip(ours.ets, reference.ets):
            _close(e_ours, e_ref.numpy(), "ets")
    # set_timesteps starts a fresh history
    ours.set_timesteps(10)
    assert ours.counter == 0 and ours.ets == [] and ours.cur_sample is None


def test_plms_before_the_warm_up_is_refused_like_diffusers():
    reference, ours = diffusers.PNDMScheduler(), SCHEDULERS[NAME]()
    reference.set_timesteps(10)
    ours.set_timesteps(10)
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError):
        reference.step_plms(torch.from_numpy(x), 901, torch.from_numpy(x))
    with pytest.raises(ConfigError):
        ours.step_plms(x, 901, x)
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[NAME]().step(x, 901, x)


@pytest.mark.parametrize("timesteps", [[0, 0], [999, 0], [1, 500, 998]])
def test_add_noise_matches_diffusers(timesteps):
    reference, ours = diffusers.PNDMScheduler.from_config(SD_BASE), SCHEDULERS[NAME].from_config(SD_BASE)
    rng = np.random.default_rng(5)
    shape = (len(timesteps), 4, 8, 8)
    x0, noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    ref = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor(timesteps)).numpy()
    _close(ours.add_noise(x0, noise, np.array(timesteps)), ref, "add_noise")


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("skip_prk_steps", [True, False], ids=["plms", "prk"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, skip_prk_steps, strength):
    config = {**SD_BASE, "timestep_spacing": spacing, "skip_prk_steps": skip_prk_steps}
    assert_img2img_parity(NAME, config, 25, strength)
