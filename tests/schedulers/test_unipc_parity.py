"""UniPCMultistepScheduler matches diffusers across its config space."""

import numpy as np
import pytest
from parity import (
    SD_BASE,
    SHAPE,
    STEP_COUNTS,
    _close,
    assert_img2img_parity,
    assert_parity_or_same_overrun,
    assert_sampling_parity,
    build_pair,
    run_both,
    stand_in_model,
)

import diffrt.runtime.schedulers.unipc  # noqa: F401 - registers the class in SCHEDULERS
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "UniPCMultistepScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})
# bh1 and predict_x0=False divide by an infinite step to a final sigma of 0 (diffusers returns NaN there), so
# those solver variants are compared on schedules ending at sigma_min.
FINITE_END = {"final_sigmas_type": "sigma_min"}


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    # beta sigmas at 50 steps repeat timestep 998 first (int64 cast): diffusers then fails on its last step
    assert_parity_or_same_overrun(NAME, config, steps)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("predict_x0", [True, False])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_solver_variants_match_diffusers(solver_order, solver_type, predict_x0, steps):
    config = {
        **SD_BASE,
        **FINITE_END,
        "solver_order": solver_order,
        "solver_type": solver_type,
        "predict_x0": predict_x0,
    }
    assert_sampling_parity(NAME, config, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"solver_order": 3},
        {"solver_order": 3, "lower_order_final": False, **FINITE_END},
        {"lower_order_final": False, **FINITE_END},  # to a final sigma of 0 diffusers' order-2 step is NaN
        {"disable_corrector": [0, 1]},
        {"disable_corrector": [2], "solver_order": 3},
        {"solver_type": "midpoint"},
        {"prediction_type": "v_prediction", "predict_x0": False, **FINITE_END},
        {"prediction_type": "sample", "predict_x0": False, **FINITE_END},
        {**FINITE_END, "use_karras_sigmas": True},
        {**FINITE_END, "use_exponential_sigmas": True, "solver_order": 3},
        {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        # truncated exponential/beta timesteps expose the float64 accumulation of torch's float32 cumprod
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "use_exponential_sigmas": True},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "use_beta_sigmas": True},
        {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
        {"num_train_timesteps": 500},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0, **FINITE_END},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "shift_terminal": 0.1},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_karras_sigmas": True},
        {"beta_schedule": "nope"},
        {"use_karras_sigmas": True, "use_beta_sigmas": True},
        {"shift_terminal": 0.1},
        {"solver_type": "nope"},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


# At 25 steps these schedules repeat their first timestep, which breaks diffusers itself (see above); 4 steps don't.
@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "squaredcos_cap_v2", "use_exponential_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"rescale_betas_zero_snr": True, "use_exponential_sigmas": True, **FINITE_END},
    ],
    ids=str,
)
def test_resampled_schedules_on_other_tables_match_diffusers(extra):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, 4)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength)


@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_dynamic_shifting_schedule_matches_diffusers(time_shift_type):
    import diffusers
    import numpy as np

    config = {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "use_dynamic_shifting": True,
        "time_shift_type": time_shift_type,
    }
    reference, ours = diffusers.UniPCMultistepScheduler(**config), SCHEDULERS[NAME](**config)
    reference.set_timesteps(20, mu=0.8)
    ours.set_timesteps(20, mu=0.8)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_allclose(ours.sigmas, reference.sigmas.numpy(), rtol=1e-6)


def test_refusals():
    with pytest.raises(ConfigError, match="solver_p"):
        SCHEDULERS[NAME](solver_p=object())
    with pytest.raises(ConfigError, match="mu"):
        SCHEDULERS[NAME](use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(10)
    with pytest.raises(ConfigError, match="sigmas"):
        SCHEDULERS[NAME]().set_timesteps(sigmas=[0.9, 0.5])
    with pytest.raises(ConfigError):
        SCHEDULERS[NAME]().set_timesteps(0)


@pytest.mark.parametrize("steps", [4, 10])
def test_bh1_to_a_zero_final_sigma_is_finite_where_diffusers_returns_nan(steps):
    """bh1's last (first-order) step to sigma = 0 multiplies a zero residual by an infinite step in diffusers; diffrt
    drops the zero term. Every earlier step matches diffusers."""
    ours, reference = build_pair(NAME, {**SD_BASE, "solver_type": "bh1"})
    ours.set_timesteps(steps)
    reference.set_timesteps(steps)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    runs = list(run_both(ours, reference, reference.timesteps, ours.timesteps, x, 0, {}))
    for i, x_ours, x_ref in runs[:-1]:
        _close(x_ours, x_ref, f"bh1 step {i}")
    _, last_ours, last_ref = runs[-1]
    assert np.isnan(last_ref).all() and np.isfinite(last_ours).all()


def test_singular_third_order_system_is_a_clear_error_where_diffusers_raises_from_torch():
    """Order 3 without lower_order_final to a final sigma of 0: two history points coincide in log-SNR."""
    import torch

    config = {**SD_BASE, "solver_order": 3, "lower_order_final": False}
    ours, reference = build_pair(NAME, config)
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    with pytest.raises(torch.linalg.LinAlgError):
        x_ref = torch.from_numpy(x)
        for t in reference.timesteps:
            x_ref = reference.step(torch.from_numpy(stand_in_model(x_ref.numpy(), float(t))), t, x_ref).prev_sample
    with pytest.raises(ConfigError, match="singular.*use lower_order_final=True or final_sigmas_type='sigma_min'"):
        for t in ours.timesteps:
            x = ours.step(stand_in_model(x, float(t)), t, x).prev_sample
