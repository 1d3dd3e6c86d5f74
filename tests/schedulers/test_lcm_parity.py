"""LCMScheduler matches diffusers across its config space and its set_timesteps arguments."""

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

import diffrt.runtime.schedulers.lcm  # noqa: F401  registers LCMScheduler in SCHEDULERS
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "LCMScheduler"


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}
    assert_sampling_parity(NAME, config, steps)


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
        {"clip_sample": True, "clip_sample_range": 0.5},
        {"clip_sample": True, "prediction_type": "sample"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"set_alpha_to_one": False},
        {"steps_offset": 0},
        {"original_inference_steps": 20},
        {"original_inference_steps": 100},
        {"original_inference_steps": 1001},
        {"timestep_scaling": 1.0},
        {"timestep_scaling": 3.5},
        {"num_train_timesteps": 500},
        {"beta_schedule": "sigmoid"},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("seed", [3, 4])
def test_noise_draws_match_diffusers(seed):
    assert_sampling_parity(NAME, SD_BASE, 8, seed=seed)


@pytest.mark.parametrize(
    "steps, set_kwargs",
    [
        (4, {"original_inference_steps": 20}),
        (4, {"original_inference_steps": 100}),
        (8, {"original_inference_steps": 4}),  # refused: more steps than the origin schedule
        (4, {"strength": 0.3}),
        (4, {"strength": 0.5}),
        (2, {"strength": 0.75, "original_inference_steps": 10}),
        (8, {"strength": 0.1}),  # refused: int(50 * 0.1) = 5 < 8
        (None, {"timesteps": [999, 759, 499, 259]}),
        (None, {"timesteps": [999, 700, 500, 123, 0]}),  # off the distillation schedule: warns only
        (None, {"timesteps": [999, 759, 499, 259], "strength": 0.5}),
        (None, {"timesteps": [999, 999, 259]}),  # refused: not descending
        (None, {"timesteps": [1000, 759, 259]}),  # refused: starts at num_train_timesteps
    ],
    ids=str,
)
def test_set_timesteps_arguments_match_diffusers(steps, set_kwargs):
    assert_set_timesteps_parity(NAME, SD_BASE, steps, set_kwargs)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


def test_step_returns_denoised_like_diffusers():
    ours, reference = SCHEDULERS[NAME].from_config(SD_BASE), diffusers.LCMScheduler.from_config(SD_BASE)
    ours.set_timesteps(4)
    reference.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    out = np.tanh(x)
    t = ours.timesteps[-1]  # the last step: no noise, so prev_sample == denoised on both sides
    prev, denoised = ours.step(out, t, x)
    ref = reference.step(torch.from_numpy(out), reference.timesteps[-1], torch.from_numpy(x))
    _close(denoised, ref.denoised.numpy(), "denoised")
    _close(prev, ref.prev_sample.numpy(), "prev_sample")
    assert ours.step_index == reference.step_index == 4


def test_bad_choices_raise_config_error():
    with pytest.raises(ConfigError, match="prediction_type"):
        SCHEDULERS[NAME].from_config({"prediction_type": "flow"})  # diffusers raises ValueError at step
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[NAME]().step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))
    with pytest.raises(ConfigError):
        SCHEDULERS[NAME]().set_timesteps(0)
