"""CMStochasticIterativeScheduler matches diffusers: schedule, input scaling, every step, noise draws.

Timesteps (250 log sigma) are float64 on both sides, as diffusers computes them. Scalar square roots are compared
with diffusers' correctly rounded (scalar_rounding.py); ``test_plain_diffusers_*`` runs it untouched.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.consistency_models as consistency_models
from diffrt.runtime.errors import ConfigError

# Plain diffusers (one torch sqrt 1 ulp off at sigma 5.91, see below): measured 1.7e-7 x max(|x|, 1).
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels


def build(config: dict):
    ours = consistency_models.CMStochasticIterativeScheduler.from_config(dict(config))
    return ours, diffusers.CMStochasticIterativeScheduler.from_config(dict(config))


def run_loop(ours, reference, x: np.ndarray, seed: int, exact: bool = True):
    """Both sides sample from ``x`` (scale_model_input, stand-in model, step); yields (i, what, ours, diffusers) for
    each scaled input and each step's sample."""
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    start = reference.begin_index or 0
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)):
            in_ours, in_ref = ours.scale_model_input(x_ours, t_ours), reference.scale_model_input(x_ref, t_ref)
            yield i, "scaled input", in_ours, in_ref.numpy()
            x_ours = ours.step(stand_in_model(in_ours, t_ours), t_ours, x_ours, generator=rng).prev_sample
            out_ref = stand_in_model(in_ref.numpy(), float(t_ref))
            x_ref = reference.step(torch.from_numpy(out_ref), t_ref, x_ref).prev_sample
            yield i, "sample", x_ours, x_ref.numpy()


def assert_cm_parity(config: dict, steps=None, timesteps=None, seed: int = 0, exact: bool = True) -> None:
    ours, reference = build(config)
    ours.set_timesteps(steps, timesteps=timesteps)
    reference.set_timesteps(steps, timesteps=timesteps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.float64
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    assert ours.init_noise_sigma == reference.init_noise_sigma
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32) * np.float32(ours.init_noise_sigma)
    for i, what, got, ref in run_loop(ours, reference, x, seed, exact):
        if exact:
            assert_within_ulps(got, ref, 2, f"{what} {i} {config} steps={steps} timesteps={timesteps}")
        else:
            _close(got, ref, f"{what} {i} {config}", rtol=PLAIN_RTOL)
        assert got.dtype == np.float32


CONFIGS = [
    {},
    {"clip_denoised": False},
    {"sigma_data": 0.7, "s_noise": 0.9, "rho": 5.0, "clip_denoised": False},
    {"num_train_timesteps": 151, "sigma_min": 0.01, "sigma_max": 40.0},
]


@pytest.mark.parametrize("steps", [1, 2, 4, 40])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sampling_matches_diffusers(config, steps):
    assert_cm_parity(config, steps, seed=steps)


@pytest.mark.parametrize("timesteps", [[22, 0], [39, 20, 10, 0], [0], [17]], ids=str)
@pytest.mark.parametrize("config", CONFIGS[:3], ids=str)
def test_custom_timesteps_match_diffusers(config, timesteps):
    assert_cm_parity(config, timesteps=timesteps)


@pytest.mark.parametrize("config", [{}, {"sigma_data": 0.7, "s_noise": 0.9, "rho": 5.0, "clip_denoised": False}])
def test_plain_diffusers_matches_within_scalar_rounding(config):
    # torch's 0-d sqrt gives 5.9108434 for sqrt(5.9108438^2 - 0.002^2) (correctly rounded: 5.9108438), 40 steps
    assert_cm_parity(config, 40, exact=False)


def test_stepping_without_set_timesteps_uses_the_training_schedule_like_diffusers():
    # before set_timesteps diffusers' sigmas are float64 (40, no final sigma_min) and so are its scalar coefficients
    ours, reference = build({"clip_denoised": False})
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    x = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32) * np.float32(80)
    for i, what, got, ref in run_loop(ours, reference, x, seed=3):
        assert_within_ulps(got, ref, 2, f"{what} {i}")


@pytest.mark.parametrize("begin_index", [0, 2, 3])
def test_image_to_image_start_and_add_noise_match_diffusers(begin_index):
    ours, reference = build({})
    ours.set_timesteps(4)
    reference.set_timesteps(4)
    ours.set_begin_index(begin_index)
    reference.set_begin_index(begin_index)
    rng = np.random.default_rng(4)
    image, noise = rng.uniform(-1, 1, SHAPE).astype(np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t_ref = reference.timesteps[begin_index : begin_index + 1].repeat(SHAPE[0])
    noisy_ref = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), t_ref).numpy()
    noisy = ours.add_noise(image, noise, np.repeat(ours.timesteps[begin_index : begin_index + 1], SHAPE[0]))
    assert_within_ulps(noisy, noisy_ref, 0, "add_noise")
    for i, what, got, ref in run_loop(ours, reference, noisy_ref, seed=4):
        assert_within_ulps(got, ref, 2, f"img2img {what} {i} from {begin_index}")


def test_add_noise_looks_timesteps_up_like_diffusers():
    ours, reference = build({})
    ours.set_timesteps(4)
    reference.set_timesteps(4)
    rng = np.random.default_rng(5)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    picks = [0, 3]  # one timestep per batch item
    expected = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), reference.timesteps[picks])
    assert_within_ulps(ours.add_noise(image, noise, ours.timesteps[picks]), expected.numpy(), 0, "add_noise")


def test_float16_in_float16_out():
    ours = consistency_models.CMStochasticIterativeScheduler()
    ours.set_timesteps(2)
    x = (np.random.default_rng(0).standard_normal(SHAPE) * 80).astype(np.float16)
    for t in ours.timesteps:
        x = ours.step(stand_in_model(ours.scale_model_input(x, t), t).astype(np.float16), t, x, generator=0)
        x = x.prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_inference_steps": 4, "timesteps": [3, 0]},
        {"num_inference_steps": 41},
        {"timesteps": [10, 20]},
        {"timesteps": [10, 10]},
        {"timesteps": [40, 0]},
    ],
    ids=str,
)
def test_schedule_refusals_match_diffusers(kwargs):
    ours, reference = build({})
    with pytest.raises(ValueError):
        reference.set_timesteps(**kwargs)
    with pytest.raises(ConfigError):
        ours.set_timesteps(**kwargs)


def test_integer_timesteps_are_refused_like_diffusers():
    ours, reference = build({})
    ours.set_timesteps(2)
    reference.set_timesteps(2)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="integer"):
        reference.step(torch.from_numpy(x), 0, torch.from_numpy(x))
    for index in (0, np.int64(0)):
        with pytest.raises(ConfigError, match="integer"):
            ours.step(x, index, x)


def test_single_training_step_is_refused():
    # diffusers divides the schedule's ramp by num_train_timesteps - 1 = 0 and returns NaN sigmas
    reference = diffusers.CMStochasticIterativeScheduler(num_train_timesteps=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference.set_timesteps(1)
    assert torch.isnan(reference.sigmas[0])
    with pytest.raises(ConfigError, match="num_train_timesteps"):
        consistency_models.CMStochasticIterativeScheduler(num_train_timesteps=1)


def test_a_step_past_the_end_is_refused():
    ours = consistency_models.CMStochasticIterativeScheduler()
    ours.set_timesteps(2)
    x = np.zeros(SHAPE, np.float32)
    for t in ours.timesteps:
        x = ours.step(x, t, x, generator=0).prev_sample
    with pytest.raises(ConfigError, match="past the end"):
        ours.step(x, ours.timesteps[-1], x)
