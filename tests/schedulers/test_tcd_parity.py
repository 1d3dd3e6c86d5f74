"""TCDScheduler matches diffusers across its config space, its eta and its set_timesteps arguments."""

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
    assert_set_timesteps_parity,
)

import diffrt.runtime.schedulers.tcd  # noqa: F401  registers TCDScheduler in SCHEDULERS
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "TCDScheduler"
ETAS = (0.0, 0.3, 0.8, 1.0)  # 0: deterministic; 0.3: diffusers' default; 1: LCM-like


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}
    assert_sampling_parity(NAME, config, steps)  # eta: the step default, 0.3, on both sides


@pytest.mark.parametrize("steps", [4, 25, 50])
@pytest.mark.parametrize("eta", ETAS)
def test_eta_matches_diffusers(eta, steps):
    assert_sampling_parity(NAME, SD_BASE, steps, seed=3, step_kwargs={"eta": eta})


@pytest.mark.parametrize("steps", [51, 100, 1000, 1001])
def test_more_steps_than_original_inference_steps_are_refused_like_diffusers(steps):
    result = assert_sampling_parity(NAME, SD_BASE, steps)
    assert result and result.startswith("refused like diffusers")


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
        {"clip_sample": True, "clip_sample_range": 0.5},  # diffusers' TCD ignores clipping; so must we
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},  # ignored likewise
        {"set_alpha_to_one": False},
        {"steps_offset": 0},
        {"original_inference_steps": 20},
        {"original_inference_steps": 100},
        {"original_inference_steps": 1001},
        {"timestep_scaling": 3.5},
        {"num_train_timesteps": 500},
        {"beta_schedule": "sigmoid"},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("eta", [0.0, 0.3])
@pytest.mark.parametrize(
    "steps, set_kwargs",
    [
        # an explicit original_inference_steps makes diffusers' TCD pick from all training timesteps
        (4, {"original_inference_steps": 50}),
        (60, {"original_inference_steps": 100}),
        (60, {"original_inference_steps": 50}),  # refused: more steps than original_inference_steps
        (4, {"original_inference_steps": 50, "strength": 0.5}),
        (4, {"strength": 0.3}),
        (4, {"strength": 0.5}),
        (8, {"strength": 0.1}),  # refused: int(50 * 0.1) = 5 < 8
        (None, {"timesteps": [999, 759, 499, 259]}),
        (None, {"timesteps": [999, 700, 500, 123, 0]}),  # off the distillation schedule: warns only
        (None, {"timesteps": [999, 759, 499, 259], "strength": 0.5}),
        (None, {"timesteps": [999, 999, 259]}),  # refused: not descending
        (None, {"timesteps": [1000, 759, 259]}),  # refused: starts at num_train_timesteps
    ],
    ids=str,
)
def test_set_timesteps_arguments_match_diffusers(steps, set_kwargs, eta):
    assert_set_timesteps_parity(NAME, SD_BASE, steps, set_kwargs, step_kwargs={"eta": eta})


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_step_returns_pred_noised_sample_like_diffusers(prediction_type):
    config = {**SD_BASE, "prediction_type": prediction_type}
    ours, reference = SCHEDULERS[NAME].from_config(config), diffusers.TCDScheduler.from_config(config)
    ours.set_timesteps(4)
    reference.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    out = np.tanh(x)
    result = ours.step(out, ours.timesteps[1], x, eta=0.0)
    ref = reference.step(torch.from_numpy(out), reference.timesteps[1], torch.from_numpy(x), eta=0.0)
    prev, noised = result  # unpacks like diffusers' (prev_sample, pred_noised_sample)
    assert result.pred_original_sample is None
    _close(noised, ref.pred_noised_sample.numpy(), "pred_noised_sample")
    _close(prev, ref.prev_sample.numpy(), "prev_sample")
    assert ours.step_index == reference.step_index == 2


def test_bad_choices_raise_config_error():
    with pytest.raises(ConfigError, match="prediction_type"):
        SCHEDULERS[NAME].from_config({"prediction_type": "flow"})  # diffusers raises ValueError at step
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[NAME]().step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))
    scheduler = SCHEDULERS[NAME]()
    scheduler.set_timesteps(4)
    with pytest.raises(ConfigError, match="eta"):  # diffusers asserts 0 <= eta <= 1
        scheduler.step(np.zeros(SHAPE, np.float32), scheduler.timesteps[0], np.zeros(SHAPE, np.float32), eta=1.5)
