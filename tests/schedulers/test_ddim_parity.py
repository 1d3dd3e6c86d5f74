"""DDIMScheduler matches diffusers across its config space, deterministic (eta = 0) and stochastic (eta > 0)."""

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

import diffrt.runtime.schedulers.ddim  # noqa: F401  (registers DDIMScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "DDIMScheduler"


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid"},  # DDPM only: refused by both
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        pytest.param(  # epsilon at zero terminal SNR: x0 = +-inf in both, then clipped to +-1
            {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
            marks=pytest.mark.filterwarnings("ignore:divide by zero"),
        ),
        {"set_alpha_to_one": False},
        {"set_alpha_to_one": False, "timestep_spacing": "trailing"},
        {"steps_offset": 0},
        {"clip_sample": False},
        {"clip_sample": True, "clip_sample_range": 0.5},
        {"thresholding": True},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"num_train_timesteps": 500},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize(
    "step_kwargs",
    [
        {"eta": 1.0},
        {"eta": 0.5},
        {"eta": 0.5, "use_clipped_model_output": True},
        {"use_clipped_model_output": True},
    ],
    ids=str,
)
@pytest.mark.parametrize("config", [{}, {"prediction_type": "sample", "clip_sample_range": 0.8}], ids=str)
@pytest.mark.parametrize("steps", [4, 25])
def test_eta_draws_the_same_noise_as_diffusers(step_kwargs, config, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **config}, steps, seed=3, step_kwargs=step_kwargs)


def _pair(steps, **config):
    reference = diffusers.DDIMScheduler.from_config({**SD_BASE, **config})
    reference.set_timesteps(steps)
    ours = SCHEDULERS[NAME].from_config({**SD_BASE, **config})
    ours.set_timesteps(steps)
    return ours, reference


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_given_variance_noise_is_used_like_diffusers(eta):
    ours, reference = _pair(10)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        noise = rng.standard_normal(SHAPE, dtype=np.float32)
        out = ours.step(stand_in_model(x_ours, t_ours), t_ours, x_ours, eta=eta, variance_noise=noise)
        ref = reference.step(
            torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref))),
            t_ref,
            x_ref,
            eta=eta,
            variance_noise=torch.from_numpy(noise),
        )
        _close(out.prev_sample, ref.prev_sample.numpy(), f"t={t_ref}")
        _close(out.pred_original_sample, ref.pred_original_sample.numpy(), f"x0 t={t_ref}")
        x_ours, x_ref = out.prev_sample, ref.prev_sample


def test_generator_and_variance_noise_together_are_refused_like_diffusers():
    ours, reference = _pair(4)
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError):
        reference.step(
            torch.from_numpy(x),
            reference.timesteps[0],
            torch.from_numpy(x),
            eta=0.5,
            generator=torch.Generator().manual_seed(0),
            variance_noise=torch.from_numpy(x),
        )
    with pytest.raises(ConfigError):
        ours.step(x, ours.timesteps[0], x, eta=0.5, generator=0, variance_noise=x)


def test_step_before_set_timesteps_is_refused_like_diffusers():
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError):
        diffusers.DDIMScheduler().step(torch.from_numpy(x), 999, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[NAME]().step(x, 999, x)


@pytest.mark.parametrize("timesteps", [[0, 0], [999, 0], [1, 500, 998]])
def test_add_noise_matches_diffusers(timesteps):
    ours, reference = _pair(4)
    rng = np.random.default_rng(5)
    shape = (len(timesteps), 4, 8, 8)
    x0, noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    ref = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor(timesteps)).numpy()
    _close(ours.add_noise(x0, noise, np.array(timesteps)), ref, "add_noise")


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


def test_img2img_with_eta_matches_diffusers():
    assert_img2img_parity(NAME, SD_BASE, 25, 0.6, seed=9, step_kwargs={"eta": 1.0})
