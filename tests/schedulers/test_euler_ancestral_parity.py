"""EulerAncestralDiscreteScheduler matches diffusers across its config space, drawing the same noise."""

import diffusers
import numpy as np
import pytest
from parity import SD_BASE, STEP_COUNTS, _close, assert_img2img_parity, assert_sampling_parity, run_both

import diffrt.runtime.schedulers.euler_ancestral as euler_ancestral  # registers EulerAncestralDiscreteScheduler

NAME = "EulerAncestralDiscreteScheduler"


# diffusers' class has no karras / exponential / beta sigma options, so the sigma axis of the matrix is the default.
@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "linspace"},
        {"steps_offset": 0, "timestep_spacing": "leading"},
        {"num_train_timesteps": 500},
        {"trained_betas": np.linspace(1e-4, 2e-2, 1000).tolist()},
        {"beta_schedule": "sigmoid"},
        {"timestep_spacing": "uniform"},
    ],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items())[:60],
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("steps", [4, 25])
def test_cosine_betas_match_diffusers_without_its_float32_nan(steps):
    # Cosine betas put sigma_max at 2e4; 4 linspace steps then go 2e4 -> 1.75, where diffusers' float32
    # sigma_to^2 - sigma_up^2 rounds to -2.4e-7 (+2.3e-8 in float64) and sigma_down becomes NaN. Promoting
    # only diffusers' sigma table to float64 (the scalar ancestral arithmetic; tensors stay float32) removes
    # the NaN, and diffrt (which clamps sigma_up <= sigma_to) must match that run.
    config = {**SD_BASE, "beta_schedule": "squaredcos_cap_v2"}
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(config)
    reference.set_timesteps(steps)
    reference.sigmas = reference.sigmas.double()
    ours = euler_ancestral.EulerAncestralDiscreteScheduler.from_config(config)
    ours.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8), dtype=np.float32) * np.float32(ours.init_noise_sigma)
    for i, x_ours, x_ref in run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}):
        _close(x_ours, x_ref, f"cosine step {i}")


@pytest.mark.parametrize("seed", [1, 7])
def test_noise_draws_match_diffusers(seed):
    assert_sampling_parity(NAME, {**SD_BASE, "timestep_spacing": "trailing"}, 25, seed=seed)


def test_ancestral_step_splits_the_variance():
    sigma_from, sigma_to = np.float32(2.5), np.float32(1.25)
    sigma_down, sigma_up = euler_ancestral.get_ancestral_step(sigma_from, sigma_to)
    assert sigma_down.dtype == np.float32 and sigma_up.dtype == np.float32
    assert float(sigma_down**2 + sigma_up**2) == pytest.approx(float(sigma_to**2), rel=1e-6)
    assert euler_ancestral.get_ancestral_step(np.float32(3.0), np.float32(0.0)) == (0.0, 0.0)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)
