"""DPMSolverMultistepScheduler matches diffusers across its config space."""

import diffusers
import numpy as np
import pytest
import torch
from parity import (
    SD_BASE,
    STEP_COUNTS,
    assert_img2img_parity,
    assert_parity_or_same_overrun,
    assert_sampling_parity,
    stand_in_model,
)

import diffrt.runtime.schedulers.dpmsolver_multistep  # noqa: F401  (registers the class)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "DPMSolverMultistepScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}  # the noise-prediction algorithms need it


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    assert_parity_or_same_overrun(NAME, config, steps)


ALGORITHMS = (
    {"algorithm_type": "dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "dpmsolver", **SIGMA_MIN},
    {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN},
    {"algorithm_type": "dpmsolver++", **SIGMA_MIN},
)
# diffusers has no third-order sde-dpmsolver update (test_sde_dpmsolver_third_order_is_refused covers it)
ALGORITHM_ORDERS = [
    (a, order) for a in ALGORITHMS for order in (1, 2, 3) if not (a["algorithm_type"] == "sde-dpmsolver" and order == 3)
]


@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize(
    "algorithm, order", ALGORITHM_ORDERS, ids=[f"{'-'.join(a.values())}-order{o}" for a, o in ALGORITHM_ORDERS]
)
def test_algorithms_match_diffusers(algorithm, order, solver_type, steps):
    config = {**SD_BASE, **algorithm, "solver_order": order, "solver_type": solver_type}
    assert_sampling_parity(NAME, config, steps, seed=steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"lower_order_final": False},
        {"lower_order_final": False, "solver_order": 3},
        {"euler_at_final": True, **SIGMA_MIN},
        {"use_lu_lambdas": True},
        {"use_lu_lambdas": True, "solver_order": 3, "beta_schedule": "squaredcos_cap_v2"},
        {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
        {"use_exponential_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "trailing"},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "leading", "algorithm_type": "sde-dpmsolver++"},
        {"lambda_min_clipped": -5.1},
        {"thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
        {"thresholding": True, "algorithm_type": "dpmsolver", **SIGMA_MIN},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2", "solver_order": 3},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "algorithm_type": "sde-dpmsolver++"},
        {"algorithm_type": "deis", "solver_type": "bh2", **SIGMA_MIN},
        {"solver_type": "logrho"},
        {"num_train_timesteps": 500, "timestep_spacing": "leading"},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_parity_or_same_overrun(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("algorithm", [{"algorithm_type": "dpmsolver++"}, {"algorithm_type": "dpmsolver", **SIGMA_MIN}])
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_uses_the_first_three_channels(variance_type, algorithm):
    config = {**SD_BASE, "variance_type": variance_type, **algorithm}
    reference, ours = diffusers.DPMSolverMultistepScheduler.from_config(config), SCHEDULERS[NAME].from_config(config)
    reference.set_timesteps(10)
    ours.set_timesteps(10)
    x_ours = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    x_ref = torch.from_numpy(x_ours.copy())
    for t in reference.timesteps:
        out = stand_in_model(np.concatenate([x_ours, -x_ours], axis=1), float(t))  # eps and variance channels
        x_ours = ours.step(out, t.item(), x_ours).prev_sample
        x_ref = reference.step(torch.from_numpy(out), t, x_ref).prev_sample
        np.testing.assert_allclose(x_ours, x_ref.numpy(), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    "bad",
    [
        {"algorithm_type": "dpmsolver"},  # needs final_sigmas_type sigma_min
        {"algorithm_type": "deis"},  # diffusers checks the unmapped name against final_sigmas_type zero
        {"algorithm_type": "unipc"},
        {"solver_type": "bogus"},
        {"beta_schedule": "sigmoid"},
        {"use_karras_sigmas": True, "use_beta_sigmas": True},
    ],
    ids=str,
)
def test_refusals_match_diffusers(bad):
    assert_sampling_parity(NAME, {**SD_BASE, **bad}, 10).startswith("refused")


def test_sde_dpmsolver_third_order_is_refused():
    # diffusers accepts the config but its third-order update has no sde-dpmsolver branch (fails mid-run)
    with pytest.raises(ConfigError, match="solver_order"):
        SCHEDULERS[NAME].from_config({**SD_BASE, "algorithm_type": "sde-dpmsolver", "solver_order": 3, **SIGMA_MIN})


def test_remapped_names_are_recorded_like_diffusers():
    ours = SCHEDULERS[NAME].from_config({"algorithm_type": "deis", "solver_type": "bh1", **SIGMA_MIN})
    assert (ours.config.algorithm_type, ours.config.solver_type) == ("dpmsolver++", "midpoint")


def test_dynamic_shifting_matches_diffusers():
    import diffusers

    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "use_dynamic_shifting": True}
    reference = diffusers.DPMSolverMultistepScheduler.from_config(config)
    reference.set_timesteps(20, mu=0.8)
    ours = SCHEDULERS[NAME].from_config(config)
    ours.set_timesteps(20, mu=0.8)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_allclose(ours.sigmas, reference.sigmas.numpy(), rtol=1e-6)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_sde_noise_draws_match_diffusers(solver_type, steps):
    config = {**SD_BASE, "algorithm_type": "sde-dpmsolver++", "solver_type": solver_type, "solver_order": 3}
    assert_sampling_parity(NAME, config, steps, seed=7)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize(
    "extra",
    [{"timestep_spacing": "leading"}, {"timestep_spacing": "trailing", "algorithm_type": "sde-dpmsolver++"}],
    ids=str,
)
def test_img2img_entry_matches_diffusers(extra, strength):
    assert_img2img_parity(NAME, {**SD_BASE, **extra}, 25, strength)
