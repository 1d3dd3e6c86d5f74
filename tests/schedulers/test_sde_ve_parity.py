"""ScoreSdeVeScheduler matches diffusers as the score-SDE pipeline drives it: set_timesteps and set_sigmas, then per
timestep ``correct_steps`` Langevin corrector steps and one reverse-diffusion predictor step; noise draws shared.

The predictor's tables and coefficients come from float32 exp / pow / sqrt, which the exact runs give diffusers
correctly rounded (scalar_rounding.py, widened to the sigma tables); predictor-only loops then match to 2 ulps. The
corrector's step size divides two batch-mean L2 norms: torch accumulates them in float32 vector lanes (an order
NumPy does not reproduce) while diffrt rounds each norm once from float64, so corrector runs are held to a
tolerance.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps, max_ulps

import diffrt.runtime.schedulers.sde_ve as sde_ve
from diffrt.runtime.errors import ConfigError

TABLES = 4096  # widen the correct rounding to the discrete-sigma tables (num_train_timesteps entries)
# Corrector runs (float32-lane norms in torch, once-rounded norms here), relative to the largest |x| of the run:
# measured 9.4e-8, and 1.5e-7 against plain diffusers (its float32 pow / exp tables one ulp off in places).
CORRECTOR_RTOL = 1e-6
SMALL = {"sigma_max": 50.0, "num_train_timesteps": 200}


def assert_close_to_input_scale(got: np.ndarray, ref: np.ndarray, scale: float, what: str) -> float:
    """|got - ref| <= CORRECTOR_RTOL x max(scale, |ref|, 1) elementwise at worst; returns the measured ratio."""
    bound = max(scale, float(np.abs(ref).max()), 1.0)
    worst = float(np.abs(got.astype(np.float64) - ref).max()) / bound
    assert np.isfinite(got).all() and worst <= CORRECTOR_RTOL, f"{what}: {worst:.3g} x scale {bound:.3g}"
    return worst


def score(x: np.ndarray, sigma: float) -> np.ndarray:
    """A smooth stand-in score: pulls x toward a bounded 'data' estimate at the rate of a Gaussian of std sigma."""
    sigma = np.float32(sigma)
    return ((stand_in_model(x, float(sigma)) - x) / (sigma * sigma)).astype(np.float32)


def build(config: dict):
    return sde_ve.ScoreSdeVeScheduler.from_config(dict(config)), diffusers.ScoreSdeVeScheduler.from_config(config)


def run_pipeline(ours, reference, steps: int, seed: int, exact: bool = True):
    """The score-SDE pipeline's loop on both sides; yields (i, what, ours, diffusers, scale) after every step, where
    scale is the largest |x| the run has seen so far: a last-bit difference made while |x| ~ sigma_max stays as an
    absolute error while the sample shrinks to ~1 (the stand-in score passes it on with gain ~1)."""
    rounding = correctly_rounded_scalars(TABLES) if exact else contextlib.nullcontext()
    rng = np.random.default_rng(seed)
    with shared_noise(reference, seed), rounding:
        for scheduler in (ours, reference):
            scheduler.set_timesteps(steps)
            scheduler.set_sigmas(steps)
        np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
        assert max_ulps(ours.sigmas, reference.sigmas.numpy()) == 0
        assert max_ulps(ours.discrete_sigmas, reference.discrete_sigmas.numpy()) == 0
        x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32) * np.float32(ours.init_noise_sigma)
        x_ours, x_ref, scale = x.copy(), torch.from_numpy(x.copy()), 1.0
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps, reference.timesteps, strict=True)):
            sigma_ours, sigma_ref = ours.sigmas[i], float(reference.sigmas[i])
            for _ in range(ours.config.correct_steps):
                scale = max(scale, float(np.abs(x_ref.numpy()).max()))
                x_ours = ours.step_correct(score(x_ours, sigma_ours), x_ours, generator=rng).prev_sample
                out_ref = torch.from_numpy(score(x_ref.numpy(), sigma_ref))
                x_ref = reference.step_correct(out_ref, x_ref).prev_sample
                yield i, "corrector", x_ours, x_ref.numpy(), scale
            scale = max(scale, float(np.abs(x_ref.numpy()).max()))
            got = ours.step_pred(score(x_ours, sigma_ours), t_ours, x_ours, generator=rng)
            ref = reference.step_pred(torch.from_numpy(score(x_ref.numpy(), sigma_ref)), t_ref, x_ref)
            x_ours, x_ref = got.prev_sample, ref.prev_sample
            yield i, "predictor", x_ours, x_ref.numpy(), scale
            yield i, "predictor mean", got.prev_sample_mean, ref.prev_sample_mean.numpy(), scale


@pytest.mark.parametrize("steps", [1, 4, 30])
@pytest.mark.parametrize("config", [{**SMALL, "correct_steps": 0}, {"correct_steps": 0}], ids=str)
def test_predictor_matches_diffusers(config, steps):
    ours, reference = build(config)
    for i, what, got, ref, _ in run_pipeline(ours, reference, steps, seed=steps):
        assert_within_ulps(got, ref, 2, f"{what} {i} {config}")
        assert got.dtype == np.float32


@pytest.mark.parametrize("steps", [4, 30])
@pytest.mark.parametrize("config", [SMALL, {**SMALL, "correct_steps": 2, "snr": 0.1}], ids=str)
def test_predictor_corrector_matches_diffusers_within_norm_rounding(config, steps):
    ours, reference = build(config)
    for i, what, got, ref, scale in run_pipeline(ours, reference, steps, seed=steps):
        assert_close_to_input_scale(got, ref, scale, f"{what} {i} {config}")


@pytest.mark.parametrize("config, steps", [({**SMALL, "correct_steps": 0}, 30), (SMALL, 30), ({}, 10)], ids=str)
def test_plain_diffusers_matches_within_rounding(config, steps):
    ours, reference = build(config)
    for i, what, got, ref, scale in run_pipeline(ours, reference, steps, seed=3, exact=False):
        assert_close_to_input_scale(got, ref, scale, f"{what} {i}")


def test_training_tables_match_diffusers():
    ours, reference = build({})
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    # torch's float32 pow and vector exp: one ulp off the correctly rounded value for some of the 2000 entries
    assert max_ulps(ours.sigmas, reference.sigmas.numpy()) <= 1
    assert max_ulps(ours.discrete_sigmas, reference.discrete_sigmas.numpy()) <= 1
    assert ours.init_noise_sigma == reference.init_noise_sigma


def test_add_noise_and_adjacent_sigma_match_diffusers():
    ours, reference = build(SMALL)
    with correctly_rounded_scalars(TABLES):
        reference.set_sigmas(10)
    ours.set_sigmas(10)
    rng = np.random.default_rng(4)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    index = np.array([9, 0])
    noisy = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), torch.from_numpy(index))
    assert_within_ulps(ours.add_noise(image, noise, index), noisy.numpy(), 0, "add_noise")
    t = torch.tensor([0.5, 0.1])
    expected = reference.get_adjacent_sigma(torch.from_numpy(index), t).numpy()
    np.testing.assert_array_equal(ours.get_adjacent_sigma(index, t.numpy()), expected)


def test_output_unpacks_like_diffusers():
    ours = sde_ve.ScoreSdeVeScheduler(**SMALL)
    ours.set_timesteps(4)
    ours.set_sigmas(4)
    x = np.ones(SHAPE, np.float32)
    prev, mean = ours.step_pred(x, ours.timesteps[0], x, generator=0)
    assert prev.shape == mean.shape == SHAPE


def test_float16_in_float16_out():
    ours = sde_ve.ScoreSdeVeScheduler(**SMALL)
    ours.set_timesteps(4)
    ours.set_sigmas(4)
    x = (np.random.default_rng(0).standard_normal(SHAPE) * 50).astype(np.float16)
    for i, t in enumerate(ours.timesteps):
        x = ours.step_correct(score(x, ours.sigmas[i]).astype(np.float16), x, generator=0).prev_sample
        x = ours.step_pred(score(x, ours.sigmas[i]).astype(np.float16), t, x, generator=0).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


def test_refusals():
    ours = sde_ve.ScoreSdeVeScheduler(**SMALL)
    for bad in (0, None, 2.5):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            ours.set_timesteps(bad)
    ours.set_timesteps(10)
    ours.set_sigmas(4)  # fewer discrete sigmas than timesteps: diffusers indexes past its table
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="set_sigmas"):
        ours.step_pred(x, ours.timesteps[0], x)
