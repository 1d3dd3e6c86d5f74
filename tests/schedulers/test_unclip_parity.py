"""UnCLIPScheduler matches diffusers as the unCLIP / Kandinsky 2.1 pipelines drive it: each step goes to the next
timestep of the schedule (prev_timestep), the last to t - 1; noise draws shared.

torch's 0-d float32 sqrt / log / exp round one ulp off for some inputs (see scalar_rounding.py), so the loops run
diffusers with them correctly rounded and require 2 ulps; ``test_plain_diffusers_*`` runs it untouched.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.unclip as unclip
from diffrt.runtime.errors import ConfigError

PRIOR_SHAPE = (2, 32)  # Kandinsky's prior samples image embeddings: (batch, embedding width)
KANDINSKY_PRIOR = {"clip_sample_range": 10.0, "prediction_type": "sample"}
# Plain diffusers: bit-identical for fixed_small_log here; learned_range (torch's vector exp of the log-variance,
# one ulp off for some elements) measured 7.7e-7 x max(|x|, 1) over 25 steps.
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels


def build(config: dict):
    return unclip.UnCLIPScheduler.from_config(dict(config)), diffusers.UnCLIPScheduler.from_config(dict(config))


def run_loop(ours, reference, x, seed, exact=True, pass_prev=True, variance_channels=False):
    """The pipelines' loop; yields (i, (prev, x0) ours, (prev, x0) diffusers). With ``variance_channels`` diffusers
    takes exp of a whole sample-sized log-variance, so its correct rounding extends to sample-sized tensors."""
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    timesteps = reference.timesteps
    rounding = correctly_rounded_scalars(x.size if variance_channels else 16) if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, t in enumerate(timesteps):
            prev = None if i + 1 == len(timesteps) or not pass_prev else timesteps[i + 1]
            out = stand_in_model(x_ours, float(t))
            out_ref = stand_in_model(x_ref.numpy(), float(t))
            if variance_channels:  # a decoder's second half: the variance interpolation v in [-1, 1]
                out = np.concatenate([out, np.tanh(x_ours)], axis=1)
                out_ref = np.concatenate([out_ref, np.tanh(x_ref.numpy())], axis=1)
            got = ours.step(out, int(t), x_ours, prev_timestep=None if prev is None else int(prev), generator=rng)
            ref = reference.step(torch.from_numpy(out_ref), t, x_ref, prev_timestep=prev)
            x_ours, x_ref = got.prev_sample, ref.prev_sample
            yield i, (got.prev_sample, got.pred_original_sample), (ref[0].numpy(), ref[1].numpy())


def assert_unclip_parity(config, steps, shape=SHAPE, seed=0, exact=True, **loop_kwargs) -> float:
    ours, reference = build(config)
    ours.set_timesteps(steps)
    reference.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    x = np.random.default_rng(seed + 1).standard_normal(shape, dtype=np.float32)
    worst = 0.0
    for i, got, ref in run_loop(ours, reference, x, seed, exact, **loop_kwargs):
        for a, b, what in zip(got, ref, ("sample", "x0"), strict=True):
            if exact:
                assert_within_ulps(a, b, 2, f"{what} at step {i} {config} steps={steps}")
            else:
                _close(a, b, f"{what} at step {i}", rtol=PLAIN_RTOL)
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max() / max(1.0, np.abs(b).max())))
            assert a.dtype == np.float32
    return worst


CONFIGS = [
    {},
    {"clip_sample": False},
    {"prediction_type": "sample", "clip_sample_range": 2.0},
    {"num_train_timesteps": 250},
]


@pytest.mark.parametrize("steps", [2, 4, 25])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sampling_matches_diffusers(config, steps):
    assert_unclip_parity(config, steps, seed=steps)


@pytest.mark.parametrize("steps", [4, 25])
def test_kandinsky_prior_on_embeddings_matches_diffusers(steps):
    assert_unclip_parity(KANDINSKY_PRIOR, steps, shape=PRIOR_SHAPE)


LEARNED = [{"variance_type": "learned_range"}, {"variance_type": "learned_range", "clip_sample": False}]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("config", LEARNED, ids=str)
def test_learned_range_variance_matches_diffusers(config, steps):
    assert_unclip_parity(config, steps, variance_channels=True)


def test_default_prev_timestep_steps_to_t_minus_one_like_diffusers():
    assert_unclip_parity({}, 25, pass_prev=False)
    assert_unclip_parity({}, 1000, pass_prev=False)


@pytest.mark.parametrize("config", [{}, {"variance_type": "learned_range"}], ids=str)
def test_plain_diffusers_matches_within_scalar_rounding(config):
    learned = config.get("variance_type") == "learned_range"
    assert assert_unclip_parity(config, 25, exact=False, variance_channels=learned) <= PLAIN_RTOL


@pytest.mark.parametrize("num_train_timesteps", [1000, 250])
def test_training_tables_match_diffusers(num_train_timesteps):
    ours, reference = build({"num_train_timesteps": num_train_timesteps})
    for table in ("betas", "alphas", "alphas_cumprod", "timesteps"):
        np.testing.assert_array_equal(getattr(ours, table), getattr(reference, table).numpy(), err_msg=table)
    assert ours.init_noise_sigma == reference.init_noise_sigma


def test_add_noise_matches_diffusers():
    ours, reference = build({})
    rng = np.random.default_rng(3)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t = np.array([999, 17])
    expected = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    assert_within_ulps(ours.add_noise(image, noise, t), expected, 2, "add_noise")


def test_float16_in_float16_out():
    ours = unclip.UnCLIPScheduler()
    ours.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    for i, t in enumerate(ours.timesteps):
        prev = ours.timesteps[i + 1] if i + 1 < len(ours.timesteps) else None
        out = ours.step(stand_in_model(x, t).astype(np.float16), t, x, prev_timestep=prev, generator=0)
        x = out.prev_sample
        assert x.dtype == out.pred_original_sample.dtype == np.float16 and np.isfinite(x).all()


@pytest.mark.parametrize("bad", [{"beta_schedule": "linear"}], ids=str)
def test_construction_refusals_match_diffusers(bad):
    with pytest.raises(ValueError):
        diffusers.UnCLIPScheduler.from_config(bad)
    with pytest.raises(ConfigError):
        unclip.UnCLIPScheduler.from_config(bad)


@pytest.mark.parametrize("bad", [{"prediction_type": "v_prediction"}, {"variance_type": "fixed_small"}], ids=str)
def test_configs_diffusers_fails_on_at_the_first_step_are_refused_up_front(bad):
    reference = diffusers.UnCLIPScheduler.from_config(bad)
    reference.set_timesteps(4)
    with pytest.raises(ValueError):
        reference.step(torch.zeros(SHAPE), reference.timesteps[0], torch.zeros(SHAPE), prev_timestep=666)
    with pytest.raises(ConfigError):
        unclip.UnCLIPScheduler.from_config(bad)


def test_schedule_and_step_refusals():
    ours, reference = build({})
    with pytest.raises(ZeroDivisionError):
        reference.set_timesteps(1)
    for bad in (1, 0, 1001, None):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            ours.set_timesteps(bad)
    ours.set_timesteps(4)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="prev_timestep"):
        ours.step(x, 500, x, prev_timestep=600)
    with pytest.raises(ConfigError, match="twice the sample"):
        unclip.UnCLIPScheduler(variance_type="learned_range").step(x, 500, x)
