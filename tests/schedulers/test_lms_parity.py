"""LMSDiscreteScheduler matches diffusers across its config space."""

import itertools

import numpy as np
import pytest
from parity import SD_BASE, STEP_COUNTS, assert_img2img_parity, assert_sampling_parity
from scipy import integrate

import diffrt.runtime.schedulers.lms as lms  # registers LMSDiscreteScheduler
from diffrt.runtime.errors import ConfigError

NAME = "LMSDiscreteScheduler"
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
        {"steps_offset": 0, "timestep_spacing": "leading"},
        {"num_train_timesteps": 500},
        {"trained_betas": np.linspace(1e-4, 2e-2, 1000).tolist()},
        {"beta_schedule": "sigmoid"},
        {"timestep_spacing": "uniform"},
        {"use_karras_sigmas": True, "use_beta_sigmas": True},
    ],
    ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items())[:60],
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(NAME, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("steps", [4, 25])
def test_order_matches_diffusers(order, steps):
    assert_sampling_parity(NAME, {**SD_BASE, "use_karras_sigmas": order % 2 == 0}, steps, step_kwargs={"order": order})


@pytest.mark.parametrize("order", [1, 4])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_img2img_entry_matches_diffusers(spacing, strength, order):
    assert_img2img_parity(NAME, {**SD_BASE, "timestep_spacing": spacing}, 25, strength, step_kwargs={"order": order})


@pytest.mark.parametrize("config", [SD_BASE, {**SD_BASE, "use_karras_sigmas": True}], ids=["default", "karras"])
def test_coefficient_is_the_integral_to_float32_precision(config):
    # the float32 integrand (as diffusers evaluates it) bounds agreement with the exact integral to ~1e-6
    scheduler = lms.LMSDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(25)
    sigmas = scheduler.sigmas.astype(np.float64)
    for order, t in itertools.product(range(1, 5), range(25)):
        if t - order + 1 < 0:
            continue
        for j in range(order):

            def basis(tau, order=order, j=j, t=t):
                others = [k for k in range(order) if k != j]
                return np.prod([(tau - sigmas[t - k]) / (sigmas[t - j] - sigmas[t - k]) for k in others])

            expected = integrate.quad(basis, sigmas[t], sigmas[t + 1], epsabs=1e-13, epsrel=1e-12)[0]
            got = lms.lms_coefficient(scheduler.sigmas, order, t, j)
            assert got == pytest.approx(expected, rel=2e-6, abs=1e-9), (order, t, j)


def test_order_below_one_is_refused():
    scheduler = lms.LMSDiscreteScheduler.from_config(SD_BASE)
    scheduler.set_timesteps(4)
    x = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="order"):
        scheduler.step(x, scheduler.timesteps[0], x, order=0)


def test_coefficients_equal_diffusers_quadrature_bit_for_bit():
    # diffusers integrates each Lagrange basis polynomial with scipy.integrate.quad over a float32 integrand;
    # diffrt's Gauss-Kronrod pass must give the very same doubles (sigmas from several schedules and orders)
    import diffusers

    from diffrt.runtime.schedulers import SCHEDULERS
    from diffrt.runtime.schedulers.lms import lms_coefficient

    compared = 0
    for extra in ({}, {"use_karras_sigmas": True}, {"timestep_spacing": "trailing"}):
        reference = diffusers.LMSDiscreteScheduler.from_config({**SD_BASE, **extra})
        ours = SCHEDULERS[NAME].from_config({**SD_BASE, **extra})
        reference.set_timesteps(30)
        ours.set_timesteps(30)
        for t in range(3, 29):
            for order in (1, 2, 3, 4):
                for j in range(order):
                    assert lms_coefficient(ours.sigmas, order, t, j) == reference.get_lms_coefficient(order, t, j)
                    compared += 1
    assert compared > 500
