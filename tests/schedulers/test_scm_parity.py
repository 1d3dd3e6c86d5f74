"""SCMScheduler matches diffusers: angles, x0 estimates, every step, noise draws.

torch's float32 cos / sin are off the correctly rounded value by one ulp for ~5% of angles (see scalar_rounding.py),
so the loops run diffusers with them correctly rounded and require 2 ulps (measured: 0); ``test_plain_diffusers_*``
runs it untouched.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.scm as scm
from diffrt.runtime.errors import ConfigError

# Plain diffusers (its cos / sin one ulp off for some angles): measured 2.7e-7 x max(|x|, 1) over 25 steps.
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels


def build(config: dict):
    return scm.SCMScheduler.from_config(dict(config)), diffusers.SCMScheduler.from_config(dict(config))


def run_loop(ours, reference, seed: int, exact: bool = True):
    """Both sides sample from sigma_data-scaled noise, as SANA-Sprint starts; yields (i, ours, diffusers) outputs."""
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32) * np.float32(ours.config.sigma_data)
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    start = reference.begin_index or 0
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:-1], reference.timesteps[start:-1], strict=True)):
            out_ours = ours.step(stand_in_model(x_ours, float(t_ours) * 500), t_ours, x_ours, generator=rng)
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref) * 500))
            x_ref, x0_ref = reference.step(out_ref, t_ref, x_ref, return_dict=False)
            x_ours = out_ours.prev_sample
            yield i, out_ours, (x_ref.numpy(), x0_ref.numpy())


def assert_scm_parity(config: dict, steps: int, seed: int = 0, exact: bool = True, **set_kwargs) -> None:
    ours, reference = build(config)
    ours.set_timesteps(steps, **set_kwargs)
    reference.set_timesteps(steps, **set_kwargs)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.float32
    for i, out, (x_ref, x0_ref) in run_loop(ours, reference, seed, exact):
        for got, ref, what in ((out.prev_sample, x_ref, "sample"), (out.pred_original_sample, x0_ref, "x0")):
            if exact:
                assert_within_ulps(got, ref, 2, f"{what} at step {i} {config} {set_kwargs}")
            else:
                _close(got, ref, f"{what} at step {i}", rtol=PLAIN_RTOL)
            assert got.dtype == np.float32


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
@pytest.mark.parametrize(
    "steps, set_kwargs",
    [
        (2, {}),  # SANA-Sprint's default: [1.5708, 1.3, 0]
        (2, {"intermediate_timesteps": 1.1, "max_timesteps": 1.4}),
        (1, {"intermediate_timesteps": None}),
        (4, {"intermediate_timesteps": None}),
        (25, {"intermediate_timesteps": None, "max_timesteps": 1.5}),
        (3, {"timesteps": [1.5708, 1.2, 0.6, 0.0], "max_timesteps": None, "intermediate_timesteps": None}),
        (2, {"timesteps": [1.4, 0.9, 0.1], "max_timesteps": None}),
    ],
    ids=str,
)
def test_sampling_matches_diffusers(steps, set_kwargs, sigma_data):
    assert_scm_parity({"sigma_data": sigma_data}, steps, seed=steps, **set_kwargs)


@pytest.mark.parametrize("steps, set_kwargs", [(2, {}), (25, {"intermediate_timesteps": None})], ids=str)
def test_plain_diffusers_matches_within_scalar_rounding(steps, set_kwargs):
    assert_scm_parity({}, steps, exact=False, **set_kwargs)


def test_set_begin_index_starts_mid_schedule_like_diffusers():
    ours, reference = build({})
    ours.set_timesteps(6, intermediate_timesteps=None)
    reference.set_timesteps(6, intermediate_timesteps=None)
    ours.set_begin_index(3)
    reference.set_begin_index(3)
    steps = list(run_loop(ours, reference, seed=2))
    assert len(steps) == 3 and ours.step_index == reference.step_index == 6
    for i, out, (x_ref, _) in steps:
        assert_within_ulps(out.prev_sample, x_ref, 2, f"step {i}")


@pytest.mark.parametrize(
    "steps, set_kwargs",
    [
        (1001, {"intermediate_timesteps": None}),  # more steps than training steps
        (2, {"timesteps": [1.5, 0.5]}),  # custom timesteps need n + 1 angles
        (2, {"timesteps": [1.5, 0.7, 0.0]}),  # ... and max_timesteps=None
        (2, {"max_timesteps": None}),  # neither timesteps nor max_timesteps
        (4, {}),  # intermediate_timesteps (default 1.3) needs exactly two steps
    ],
    ids=str,
)
def test_schedule_refusals_match_diffusers(steps, set_kwargs):
    ours, reference = build({})
    with pytest.raises(ValueError):
        reference.set_timesteps(steps, **set_kwargs)
    with pytest.raises(ConfigError):
        ours.set_timesteps(steps, **set_kwargs)


def test_unknown_prediction_type_is_refused_up_front():
    # diffusers builds it and raises ValueError at the first step
    reference = diffusers.SCMScheduler(prediction_type="epsilon")
    reference.set_timesteps(2)
    with pytest.raises(ValueError, match="parameterization"):
        reference.step(torch.zeros(SHAPE), reference.timesteps[0], torch.zeros(SHAPE))
    with pytest.raises(ConfigError, match="prediction_type"):
        scm.SCMScheduler(prediction_type="epsilon")


def test_step_before_set_timesteps_and_past_the_end_are_refused():
    ours = scm.SCMScheduler()
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="set_timesteps"):
        ours.step(x, 999, x)
    ours.set_timesteps(2)
    for t in ours.timesteps[:-1]:
        x = ours.step(x, t, x, generator=0).prev_sample
    with pytest.raises(ConfigError, match="past the end"):
        ours.step(x, ours.timesteps[-1], x)


def test_float16_in_float16_out_and_surface():
    ours, reference = build({})
    assert ours.order == reference.order and ours.init_noise_sigma == reference.init_noise_sigma
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())  # the training steps, int64
    ours.set_timesteps(2)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    for t in ours.timesteps[:-1]:
        out = ours.step(stand_in_model(x, t).astype(np.float16), t, x, generator=0)
        x = out.prev_sample
        assert x.dtype == out.pred_original_sample.dtype == np.float16 and np.isfinite(x).all()
