"""DDPMScheduler matches diffusers across its config space, including its per-step noise draws."""

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
    assert_timesteps_equal,
    config_id,
    run_both,
    shared_noise,
    stand_in_model,
)

import diffrt.runtime.schedulers.ddpm  # noqa: F401  (registers DDPMScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "DDPMScheduler"


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
        {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "laplace"},
        {"beta_schedule": "cosine"},  # refused by both
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"variance_type": "fixed_small_log"},
        {"variance_type": "fixed_large"},
        {"clip_sample": False},
        {"clip_sample_range": 0.5},
        {"thresholding": True},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"steps_offset": 0},
        {"timestep_spacing": "linspace", "steps_offset": 3},  # steps_offset only shifts leading spacing
        {"num_train_timesteps": 500},
        {"variance_type": "fixed_tiny"},  # refused by us; diffusers silently treats it as fixed_small
    ],
    ids=config_id,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    if extra.get("variance_type") == "fixed_tiny":  # a typo must not silently become fixed_small
        with pytest.raises(ConfigError, match="variance_type"):
            SCHEDULERS[NAME].from_config({**SD_BASE, **extra})
        return
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps, seed=steps)


@pytest.mark.parametrize("steps", [1, 50])
def test_pixel_space_defaults_match_diffusers(steps):
    """The DDPM defaults (linear betas, clip_sample) as unconditional pixel models use them, seeded differently."""
    assert_sampling_parity(NAME, {}, steps, seed=7)


def _learned_model(x: np.ndarray, t: float, variance_type: str) -> np.ndarray:
    """Stand-in model with twice the channels: prediction, then variance (raw, or a fraction in [-1, 1])."""
    variance = np.tanh(0.5 * x + float(t) / 500.0)
    if variance_type == "learned":
        variance = np.float32(0.004) * (1.5 + variance)  # a positive variance
    return np.concatenate([stand_in_model(x, t), variance.astype(np.float32)], axis=1)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
@pytest.mark.parametrize("steps", [4, 25])
def test_learned_variance_splits_the_model_output_like_diffusers(variance_type, spacing, steps):
    config = {"variance_type": variance_type, "timestep_spacing": spacing, "clip_sample": False}
    reference = diffusers.DDPMScheduler.from_config(config)
    reference.set_timesteps(steps)
    ours = SCHEDULERS[NAME].from_config(config)
    ours.set_timesteps(steps)
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    with shared_noise(reference, 0):
        for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
            out_ours = ours.step(_learned_model(x_ours, t_ours, variance_type), t_ours, x_ours, generator=rng)
            model_ref = torch.from_numpy(_learned_model(x_ref.numpy(), float(t_ref), variance_type))
            out_ref = reference.step(model_ref, t_ref, x_ref)
            x_ours, x_ref = out_ours.prev_sample, out_ref.prev_sample
            assert x_ours.shape == SHAPE
            _close(x_ours, x_ref.numpy(), f"{variance_type} t={t_ref}")
            _close(out_ours.pred_original_sample, out_ref.pred_original_sample.numpy(), f"x0 t={t_ref}")


def test_learned_variance_needs_the_doubled_model_output():
    ours = SCHEDULERS[NAME](variance_type="learned_range")
    ours.set_timesteps(4)
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="twice"):
        ours.step(x, ours.timesteps[0], x, generator=0)


@pytest.mark.parametrize("steps", [4, 25])
def test_fixed_large_log_draws_the_fixed_large_noise(steps):
    """diffusers' fixed_large_log takes the square root of log(beta) (< 0) and returns NaN; diffrt exponentiates
    that log-variance instead, which is exactly diffusers' fixed_large step."""
    broken = diffusers.DDPMScheduler(variance_type="fixed_large_log")
    broken.set_timesteps(steps)
    x = torch.ones(SHAPE)
    assert torch.isnan(broken.step(x, broken.timesteps[0], x).prev_sample).all()
    reference = diffusers.DDPMScheduler.from_config({**SD_BASE, "variance_type": "fixed_large"})
    reference.set_timesteps(steps)
    ours = SCHEDULERS[NAME].from_config({**SD_BASE, "variance_type": "fixed_large_log"})
    ours.set_timesteps(steps)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
        _close(x_ours, x_ref, f"fixed_large_log step {i}")


@pytest.mark.parametrize("timesteps", [[999, 700, 450, 200, 50, 0], [800, 10, 3]])
def test_custom_timesteps_match_diffusers(timesteps):
    reference = diffusers.DDPMScheduler.from_config(SD_BASE)
    reference.set_timesteps(timesteps=timesteps)
    ours = SCHEDULERS[NAME].from_config(SD_BASE)
    ours.set_timesteps(timesteps=timesteps)
    assert_timesteps_equal(ours.timesteps, reference.timesteps.numpy())
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
        _close(x_ours, x_ref, f"custom timesteps step {i}")


@pytest.mark.parametrize("timesteps", [[10, 20], [1000, 5], [5, 5]])
def test_bad_custom_timesteps_are_refused_like_diffusers(timesteps):
    with pytest.raises(ValueError):
        diffusers.DDPMScheduler().set_timesteps(timesteps=timesteps)
    with pytest.raises(ConfigError):
        SCHEDULERS[NAME]().set_timesteps(timesteps=timesteps)


def test_step_before_set_timesteps_walks_every_training_timestep():
    reference, ours = diffusers.DDPMScheduler(), SCHEDULERS[NAME]()
    assert_timesteps_equal(ours.timesteps, reference.timesteps.numpy())
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    for t_ref, t_ours in zip(reference.timesteps[-3:], ours.timesteps[-3:]):
        with shared_noise(reference, int(t_ours)):
            ref = reference.step(torch.from_numpy(stand_in_model(x, t_ours)), t_ref, torch.from_numpy(x))
        got = ours.step(stand_in_model(x, t_ours), t_ours, x, generator=int(t_ours))
        _close(got.prev_sample, ref.prev_sample.numpy(), f"t={t_ours}")


@pytest.mark.parametrize("timesteps", [[0, 0], [999, 0], [1, 500, 998]])
def test_add_noise_matches_diffusers(timesteps):
    reference, ours = diffusers.DDPMScheduler.from_config(SD_BASE), SCHEDULERS[NAME].from_config(SD_BASE)
    rng = np.random.default_rng(5)
    shape = (len(timesteps), 4, 8, 8)
    x0, noise = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    ref = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor(timesteps)).numpy()
    _close(ours.add_noise(x0, noise, np.array(timesteps)), ref, "add_noise")


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


def test_unknown_variance_type_is_refused_where_diffusers_falls_back_to_fixed_small():
    bogus = diffusers.DDPMScheduler(variance_type="made_up")
    fixed_small = diffusers.DDPMScheduler(variance_type="fixed_small")
    x = torch.ones(SHAPE)
    for scheduler in (bogus, fixed_small):
        scheduler.set_timesteps(5)
    with shared_noise(bogus, 0):
        a = bogus.step(x, bogus.timesteps[0], x).prev_sample
    with shared_noise(fixed_small, 0):
        b = fixed_small.step(x, fixed_small.timesteps[0], x).prev_sample
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="variance_type='made_up' is not supported.*'fixed_small'"):
        SCHEDULERS[NAME].from_config({"variance_type": "made_up"})
