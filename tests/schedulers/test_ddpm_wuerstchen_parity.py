"""DDPMWuerstchenScheduler matches diffusers: ratios, alpha_bar, every step as Stable Cascade runs it, noise draws.

torch's float32 cos / sqrt / pow on the per-item coefficients round one ulp off for some inputs (see
scalar_rounding.py), so the loops run diffusers with them correctly rounded and require 2 ulps (measured: 0);
``test_plain_diffusers_*`` runs it untouched.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.ddpm_wuerstchen as ddpm_wuerstchen
from diffrt.runtime.errors import ConfigError

# Plain diffusers (its coefficient cos / sqrt one ulp off for some ratios): measured up to 9.6e-7 x max(|x|, 1),
# with scaler 0.5 over 60 steps (6.0e-7 for the default config).
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels
CONFIGS = [{}, {"scaler": 2.0}, {"scaler": 3.0}, {"scaler": 0.5}, {"scaler": 0.8, "s": 0.02}, {"scaler": 1.5}]


def build(config: dict):
    ours = ddpm_wuerstchen.DDPMWuerstchenScheduler.from_config(dict(config))
    return ours, diffusers.DDPMWuerstchenScheduler.from_config(dict(config))


def run_loop(ours, reference, x: np.ndarray, seed: int, exact: bool = True):
    """Stable Cascade's loop: every ratio but the last, one per batch item; yields (i, ours, diffusers) samples."""
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[:-1], reference.timesteps[:-1], strict=True)):
            ratio_ours, ratio_ref = np.repeat(t_ours, SHAPE[0]), t_ref.expand(SHAPE[0])
            out = stand_in_model(x_ours, float(t_ours) * 900)
            x_ours = ours.step(out, ratio_ours, x_ours, generator=rng).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref) * 900))
            x_ref = reference.step(out_ref, ratio_ref, x_ref).prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_wuerstchen_parity(config: dict, steps=None, timesteps=None, seed: int = 0, exact: bool = True) -> float:
    """Same ratios, then every step within 2 ulps (``exact``) or PLAIN_RTOL; returns the worst relative error."""
    ours, reference = build(config)
    ours.set_timesteps(steps, timesteps=timesteps)
    reference.set_timesteps(steps, timesteps=timesteps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.float32
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    worst = 0.0
    for i, got, ref in run_loop(ours, reference, x, seed, exact):
        if exact:
            assert_within_ulps(got, ref, 2, f"step {i} {config} steps={steps} timesteps={timesteps}")
        else:
            _close(got, ref, f"step {i} {config}", rtol=PLAIN_RTOL)
        worst = max(worst, float(np.abs(got.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max())))
        assert got.dtype == np.float32
    return worst


@pytest.mark.parametrize("steps", [1, 4, 20, 60])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sampling_matches_diffusers(config, steps):
    assert_wuerstchen_parity(config, steps, seed=steps)


@pytest.mark.parametrize("timesteps", [[1.0, 0.6667, 0.3333, 0.0], [0.9, 0.5, 0.1]], ids=str)
@pytest.mark.parametrize("config", CONFIGS[:2], ids=str)
def test_custom_timesteps_match_diffusers(config, timesteps):
    assert_wuerstchen_parity(config, timesteps=timesteps)


@pytest.mark.parametrize("config", [{}, {"scaler": 0.8, "s": 0.02}, {"scaler": 0.5}], ids=str)
def test_plain_diffusers_matches_within_scalar_rounding(config):
    assert assert_wuerstchen_parity(config, 60, exact=False) <= PLAIN_RTOL


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_alpha_cumprod_and_add_noise_match_diffusers(config):
    ours, reference = build(config)
    ratios = np.array([1.0, 0.73, 0.25, 0.0], dtype=np.float32)
    with correctly_rounded_scalars():
        expected = reference._alpha_cumprod(torch.from_numpy(ratios), "cpu").numpy()
        np.testing.assert_array_equal(ours._init_alpha_cumprod, reference._init_alpha_cumprod.numpy())
    np.testing.assert_array_equal(ours.alpha_cumprod(ratios), expected)
    rng = np.random.default_rng(2)
    image, noise = rng.standard_normal((4, 4, 8, 8), dtype=np.float32), rng.standard_normal((4, 4, 8, 8), np.float32)
    with correctly_rounded_scalars():
        noisy = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), torch.from_numpy(ratios))
    assert_within_ulps(ours.add_noise(image, noise, ratios), noisy.numpy(), 2, f"add_noise {config}")


def test_previous_timestep_matches_diffusers():
    ours, reference = build({})
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    for t in (1.0, 0.55, 0.3):  # on the schedule and between entries (nearest)
        ratio = torch.full((2,), t)
        np.testing.assert_array_equal(ours.previous_timestep(ratio.numpy()), reference.previous_timestep(ratio).numpy())
    with pytest.raises(IndexError):
        reference.previous_timestep(torch.zeros(2))
    with pytest.raises(ConfigError, match="last of the schedule"):
        ours.previous_timestep(np.zeros(2, np.float32))


def test_a_single_ratio_for_the_whole_batch_broadcasts():
    ours = ddpm_wuerstchen.DDPMWuerstchenScheduler()
    ours.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    per_item = ours.step(x, np.repeat(ours.timesteps[1], SHAPE[0]), x, generator=1).prev_sample
    one = ours.step(x, ours.timesteps[1], x, generator=1).prev_sample
    np.testing.assert_array_equal(one, per_item)


def test_float16_in_float16_out():
    ours = ddpm_wuerstchen.DDPMWuerstchenScheduler()
    ours.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    for t in ours.timesteps[:-1]:
        x = ours.step(stand_in_model(x, t).astype(np.float16), np.repeat(t, SHAPE[0]), x, generator=0).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


def test_step_before_set_timesteps_and_bad_step_counts_are_refused():
    ours = ddpm_wuerstchen.DDPMWuerstchenScheduler()
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="set_timesteps"):
        ours.step(x, np.ones(2, np.float32), x)
    for bad in (None, 0, 2.5):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            ours.set_timesteps(bad)
