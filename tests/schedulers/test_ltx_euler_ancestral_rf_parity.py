"""LTXEulerAncestralRFScheduler matches diffusers: explicit (ComfyUI-style) sigma schedules, the flow-match default
schedule, every step, noise draws. Loops run diffusers with its 1-element sqrt correctly rounded (see
scalar_rounding.py) and require 2 ulps; ``test_plain_diffusers_*`` runs it untouched.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.ltx_euler_ancestral_rf as ltx
from diffrt.runtime.errors import ConfigError

NAME = "LTXEulerAncestralRFScheduler"
# Plain diffusers: bit-identical for most schedules; one renoise sqrt one ulp off (linear-5, eta 0.5, s_noise 0.8)
# measured 2.7e-7 x max(|x|, 1).
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels
# LTX-Video 0.9.x distilled schedules (ComfyUI), and a plain evenly spaced one; all end at 0
SIGMA_SCHEDULES = {
    "ltx-distilled": [1.0, 0.9937, 0.9875, 0.9812, 0.975, 0.9094, 0.725, 0.4219, 0.0],
    "linear-5": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
    "two": [0.7, 0.3, 0.0],
    "no-terminal-zero": [1.0, 0.5, 0.1],
}


def build(config: dict):
    return ltx.LTXEulerAncestralRFScheduler.from_config(dict(config)), getattr(diffusers, NAME).from_config(config)


def run_loop(ours, reference, x, seed, exact=True):
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    start = reference.begin_index or 0
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)):
            x_ours = ours.step(stand_in_model(x_ours, float(t_ours)), t_ours, x_ours, generator=rng).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref)))
            x_ref = reference.step(out_ref, t_ref, x_ref).prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_ltx_parity(config, seed=0, exact=True, **set_kwargs) -> float:
    ours, reference = build(config)
    reference.set_timesteps(**{k: torch.tensor(v) if k == "timesteps" else v for k, v in set_kwargs.items()})
    ours.set_timesteps(**set_kwargs)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    assert ours.timesteps.dtype == ours.sigmas.dtype == np.float32
    assert ours.num_inference_steps == reference.num_inference_steps
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    worst = 0.0
    for i, got, ref in run_loop(ours, reference, x, seed, exact):
        if exact:
            assert_within_ulps(got, ref, 2, f"step {i} {config} {set_kwargs}")
        else:
            _close(got, ref, f"step {i}", rtol=PLAIN_RTOL)
        worst = max(worst, float(np.abs(got.astype(np.float64) - ref).max() / max(1.0, np.abs(ref).max())))
    return worst


@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES.values(), ids=SIGMA_SCHEDULES.keys())
@pytest.mark.parametrize(
    "config", [{}, {"eta": 0.0}, {"eta": 0.5, "s_noise": 0.8}, {"s_noise": 0.0}, {"num_train_timesteps": 500}], ids=str
)
def test_explicit_sigmas_match_diffusers(config, sigmas):
    assert_ltx_parity(config, sigmas=sigmas)


def test_timesteps_are_read_as_sigmas_like_diffusers():
    assert_ltx_parity({}, timesteps=SIGMA_SCHEDULES["linear-5"])
    assert_ltx_parity({}, num_inference_steps=3, sigmas=SIGMA_SCHEDULES["linear-5"])  # warned, then ignored


@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES.values(), ids=SIGMA_SCHEDULES.keys())
@pytest.mark.parametrize("config", [{"eta": 0.7}, {"eta": 0.5, "s_noise": 0.8}], ids=str)
def test_plain_diffusers_matches_within_scalar_rounding(config, sigmas):
    assert assert_ltx_parity(config, exact=False, sigmas=sigmas) <= PLAIN_RTOL


@pytest.mark.parametrize(
    "config, set_kwargs",
    [
        ({}, {"num_inference_steps": 8}),
        ({"shift": 3.0, "eta": 0.5}, {"num_inference_steps": 20}),
        ({"use_dynamic_shifting": True, "shift_terminal": 0.1}, {"num_inference_steps": 8, "mu": 1.2}),
    ],
    ids=str,
)
def test_flow_match_default_schedule_matches_diffusers(config, set_kwargs):
    assert_ltx_parity(config, **set_kwargs)


class DiffusersFlowMatch:
    """diffusers' FlowMatchEulerDiscreteScheduler behind the NumPy surface LTX uses (from_config, set_timesteps)."""

    @classmethod
    def from_config(cls, config):
        flow = cls()
        flow.inner = diffusers.FlowMatchEulerDiscreteScheduler.from_config(dict(config))
        return flow

    def set_timesteps(self, num_inference_steps, mu=None):
        self.inner.set_timesteps(num_inference_steps, mu=mu)
        self.sigmas, self.timesteps = self.inner.sigmas.numpy(), self.inner.timesteps.numpy()
        self.num_inference_steps = self.inner.num_inference_steps


@pytest.mark.parametrize("config", [{}, {"eta": 0.5}], ids=str)
def test_default_schedule_is_taken_from_flow_match_euler(config, monkeypatch):
    # the delegation alone, whatever FlowMatchEulerDiscreteScheduler port is installed
    monkeypatch.setattr(ltx, "FlowMatchEulerDiscreteScheduler", DiffusersFlowMatch)
    assert_ltx_parity(config, num_inference_steps=8)


def test_set_begin_index_and_steps_past_the_end_match_diffusers():
    ours, reference = build({})
    ours.set_timesteps(sigmas=SIGMA_SCHEDULES["ltx-distilled"])
    reference.set_timesteps(sigmas=SIGMA_SCHEDULES["ltx-distilled"])
    ours.set_begin_index(4)
    reference.set_begin_index(4)
    x = np.random.default_rng(5).standard_normal(SHAPE, dtype=np.float32)
    for i, got, ref in run_loop(ours, reference, x, seed=5):
        assert_within_ulps(got, ref, 2, f"step {i} from 4")
    # diffusers' loop ran over the terminal timestep too: a no-op there, index held at the end
    assert ours.step_index == reference.step_index == len(ours.sigmas) - 1
    assert ours.step(x, ours.timesteps[-1], x).prev_sample is x


def test_float16_in_float16_out():
    ours = ltx.LTXEulerAncestralRFScheduler()
    ours.set_timesteps(sigmas=SIGMA_SCHEDULES["linear-5"])
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    for t in ours.timesteps:
        x = ours.step(stand_in_model(x, t).astype(np.float16), t, x, generator=0).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


def test_refusals_match_diffusers():
    ours, reference = build({})
    with pytest.raises(ValueError):
        reference.set_timesteps()
    with pytest.raises(ConfigError):
        ours.set_timesteps()
    with pytest.raises(ValueError):
        reference.set_timesteps(sigmas=torch.ones(2, 2))
    with pytest.raises(ConfigError):
        ours.set_timesteps(sigmas=[[1.0, 0.5], [0.5, 0.0]])
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        reference.step(torch.from_numpy(x), 1.0, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="set_timesteps"):
        ours.step(x, 1.0, x)
    ours.set_timesteps(sigmas=[1.0, 0.0])
    reference.set_timesteps(sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="integer"):
        reference.step(torch.from_numpy(x), 1, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="integer"):
        ours.step(x, 1, x)
    with pytest.raises(ValueError):
        reference.step(torch.from_numpy(x), 0.25, torch.from_numpy(x))  # not on the schedule
    with pytest.raises(ConfigError):
        ours.step(x, 0.25, x)


def test_surface_matches_diffusers():
    ours, reference = build({})
    assert ours.order == reference.order and set(ours._compatibles) == set(reference._compatibles)
    assert ours.sigmas is reference.sigmas is None and ours.timesteps is reference.timesteps is None
