"""DDIMParallelScheduler and DDPMParallelScheduler match diffusers: their sequential ``step`` (DDIM's and DDPM's,
inherited) and ``batch_step_no_noise``, the batched step ParaDiGMS' pipeline takes over a window of timesteps.

Rounding. torch's float32 ``sqrt`` lands an ulp low for ~0.6% of inputs; diffrt's is correctly rounded.
``batch_step_no_noise`` takes its square roots through ``ns.torch_sqrt32``, so the batch tests swap torch's kernel in
(``torch_rounding``) and are then within 2 ulps (measured: 0). Two places use NumPy's sqrt directly, in code these
schedulers inherit, and are compared with rtol 1e-6 instead (``RTOL``), measured:
- the inherited ``step``s: DDIM's is bit-identical with leading spacing but meets torch's low sqrt at some trailing /
  linspace timesteps (6.6e-7 of the sample's scale after 25 steps); DDPM's meets it at t = 281 of the SD 25-step
  schedule (sqrt(alpha_t / alpha_t'), 4.2e-7), up to 768 ulps on near-zero elements;
- ``rescale_betas_zero_snr`` tables (``ns.rescale_zero_terminal_snr``): 6 of 1000 betas differ in the last bit, so
  385 alpha_bar entries do, and a batch step lands within 1.6e-7 of the scale;
- ``add_noise`` / ``get_velocity`` (AlphaBarScheduler): half an ulp of the scale.
"""

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_BASE, SHAPE, _close, assert_sampling_parity, config_id, run_both, stand_in_model
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.ddim_parallel  # noqa: F401  (registers DDIMParallelScheduler)
import diffrt.runtime.schedulers.ddpm_parallel  # noqa: F401  (registers DDPMParallelScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS
from diffrt.runtime.schedulers import noise_schedule as ns
from diffrt.runtime.schedulers.base import KARRAS_SCHEDULERS

DDIM, DDPM = "DDIMParallelScheduler", "DDPMParallelScheduler"
ULPS = 2
RTOL = 4e-6  # where NumPy's correctly rounded sqrt meets torch's (module docstring)
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}


@pytest.fixture
def torch_rounding(monkeypatch):
    """Make ``ns.torch_sqrt32`` round as torch's CPU kernel does (see the module docstring)."""
    monkeypatch.setattr(ns, "torch_sqrt32", lambda x: torch.from_numpy(np.asarray(x, dtype=np.float32)).sqrt().numpy())


def build_pair(name: str, config: dict, steps: int | None):
    reference = getattr(diffusers, name).from_config(dict(config))
    ours = SCHEDULERS[name].from_config(dict(config))
    if steps is not None:
        reference.set_timesteps(steps)
        ours.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    return ours, reference


# ----- sequential sampling with the inherited step ----------------------------------------------------------
def assert_step_parity(name: str, config: dict, steps: int, seed: int = 0, step_kwargs: dict | None = None):
    ours, reference = build_pair(name, config, steps)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    loop = run_both(ours, reference, reference.timesteps, ours.timesteps, x, seed, step_kwargs or {})
    for i, x_ours, x_ref in loop:
        _close(x_ours, x_ref, f"{name} step {i} {config}", rtol=RTOL)


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_sampling_matches_diffusers(name, spacing, prediction_type, steps):
    assert_step_parity(name, {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "squaredcos_cap_v2"},
        ZERO_SNR,
        {"clip_sample": False},
        {"clip_sample_range": 0.5},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_config_fields_match_diffusers(name, extra):
    assert_step_parity(name, {**SD_BASE, **extra}, 10, seed=4)


@pytest.mark.parametrize("step_kwargs", [{"eta": 1.0}, {"eta": 0.5, "use_clipped_model_output": True}], ids=str)
def test_ddim_eta_draws_the_same_noise_as_diffusers(step_kwargs):
    assert_step_parity(DDIM, {**SD_BASE, "set_alpha_to_one": False}, 10, seed=5, step_kwargs=step_kwargs)


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_large"])
def test_ddpm_variance_types_match_diffusers(variance_type):
    assert_step_parity(DDPM, {**SD_BASE, "variance_type": variance_type}, 10, seed=6)


@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_refusals_match_diffusers(name):
    """Schedules and step counts diffusers refuses, refused alike (sigmoid is DDPM's, cosine nobody's)."""
    refused = {"beta_schedule": "cosine"} if name == DDPM else {"beta_schedule": "sigmoid"}
    assert assert_sampling_parity(name, {**SD_BASE, **refused}, 4).startswith("refused")
    assert assert_sampling_parity(name, SD_BASE, 1001).startswith("refused")


# ----- batch_step_no_noise ----------------------------------------------------------------------------------
def window(ours, reference, start: int = 0, size: int | None = None, batch: int = 2, seed: int = 0):
    """A ParaDiGMS window: ``size`` consecutive timesteps, each repeated for ``batch`` images, flattened to one batch
    (timestep-major, as the pipeline flattens it), with latents and stand-in model outputs for each item."""
    t_ours = ours.timesteps[start : None if size is None else start + size]
    t_ref = reference.timesteps[start : None if size is None else start + size]
    t_ours, t_ref = np.repeat(t_ours, batch), t_ref.repeat_interleave(batch)
    x = np.random.default_rng(seed).standard_normal((len(t_ours), *SHAPE[1:]), dtype=np.float32)
    out = np.concatenate([stand_in_model(x[i : i + 1], t) for i, t in enumerate(t_ours)])
    return t_ours, t_ref, x, out


def assert_batch_parity(name, config, steps, step_kwargs=None, channels_out=None, **window_kwargs):
    step_kwargs = step_kwargs or {}
    ours, reference = build_pair(name, config, steps)
    t_ours, t_ref, x, out = window(ours, reference, **window_kwargs)
    if channels_out:  # a learned variance rides along in the model output's second half
        out = np.concatenate([out, np.tanh(out)], axis=1)
    prev = ours.batch_step_no_noise(out, t_ours, x, **step_kwargs)
    prev_ref = reference.batch_step_no_noise(torch.from_numpy(out), t_ref, torch.from_numpy(x), **step_kwargs)
    assert prev.dtype == np.float32 and prev.shape == x.shape
    what = f"{name} batch_step_no_noise {config} {step_kwargs}"
    if config.get("rescale_betas_zero_snr"):  # the table itself differs in the last bit (module docstring)
        _close(prev, prev_ref.numpy(), what, rtol=RTOL)
    else:
        assert_within_ulps(prev, prev_ref.numpy(), ULPS, what)


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_batch_step_matches_diffusers_over_the_whole_schedule(name, spacing, prediction_type, steps, torch_rounding):
    assert_batch_parity(name, {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type}, steps)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"beta_schedule": "linear", "clip_sample": True},
        {"beta_schedule": "squaredcos_cap_v2"},
        ZERO_SNR,
        {"clip_sample": True, "clip_sample_range": 0.5},
        {"clip_sample": True, "clip_sample_range": 0.5, "prediction_type": "sample"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"num_train_timesteps": 500},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_batch_step_config_fields_match_diffusers(name, extra, torch_rounding):
    assert_batch_parity(name, {**SD_BASE, **extra}, 25, start=5, size=8, batch=3)


@pytest.mark.parametrize("extra", [{}, {"clip_sample": True, "clip_sample_range": 0.3}], ids=config_id)
def test_ddim_batch_step_uses_the_clipped_x0_when_asked_like_diffusers(extra, torch_rounding):
    assert_batch_parity(DDIM, {**SD_BASE, **extra}, 10, step_kwargs={"use_clipped_model_output": True})


def test_ddim_batch_step_ends_at_alpha_bar_1_whatever_set_alpha_to_one_says(torch_rounding):
    """diffusers' batch step fixes alpha_bar before t = 0 to 1 (its step uses alpha_bar_0 here): so do we."""
    assert_batch_parity(DDIM, {**SD_BASE, "set_alpha_to_one": False}, 10, start=7)
    ours, _ = build_pair(DDIM, {**SD_BASE, "set_alpha_to_one": False}, 10)
    t, _, x, out = window(ours, _, start=9, batch=1)
    assert not np.array_equal(ours.batch_step_no_noise(out, t, x), ours.step(out, t[0], x).prev_sample)


def test_ddim_batch_step_equals_sequential_steps_where_the_ends_agree(torch_rounding):
    """With set_alpha_to_one (the default) each item's batch step is the sequential eta = 0 step at its timestep."""
    ours, reference = build_pair(DDIM, SD_BASE, 10)
    t, _, x, out = window(ours, reference, batch=1)
    batched = ours.batch_step_no_noise(out, t, x)
    for i in range(len(t)):
        alone = ours.step(out[i : i + 1], t[i], x[i : i + 1]).prev_sample
        np.testing.assert_allclose(batched[i : i + 1], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_batch_step_drops_a_learned_variance_like_diffusers(variance_type, torch_rounding):
    assert_batch_parity(DDPM, {**SD_BASE, "variance_type": variance_type}, 10, channels_out=True)


def test_ddpm_batch_step_before_set_timesteps_steps_one_training_timestep_like_diffusers(torch_rounding):
    reference = diffusers.DDPMParallelScheduler.from_config(SD_BASE)
    ours = SCHEDULERS[DDPM].from_config(SD_BASE)
    t = np.array([999, 500, 1, 0])
    x = np.random.default_rng(7).standard_normal((4, *SHAPE[1:]), dtype=np.float32)
    out = stand_in_model(x, 0)
    ref = reference.batch_step_no_noise(torch.from_numpy(out), torch.from_numpy(t), torch.from_numpy(x))
    assert_within_ulps(ours.batch_step_no_noise(out, t, x), ref.numpy(), ULPS, "before set_timesteps")


def test_ddim_batch_step_refuses_eta_like_diffusers():
    ours, reference = build_pair(DDIM, SD_BASE, 4)
    t, t_ref, x, out = window(ours, reference)
    with pytest.raises(AssertionError):
        reference.batch_step_no_noise(torch.from_numpy(out), t_ref, torch.from_numpy(x), eta=0.5)
    with pytest.raises(ConfigError, match="eta"):
        ours.batch_step_no_noise(out, t, x, eta=0.5)


def test_ddim_batch_step_before_set_timesteps_is_refused_like_diffusers():
    x = np.ones((2, *SHAPE[1:]), np.float32)
    with pytest.raises(ValueError):
        diffusers.DDIMParallelScheduler().batch_step_no_noise(
            torch.from_numpy(x), torch.tensor([9, 0]), torch.from_numpy(x)
        )
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[DDIM]().batch_step_no_noise(x, np.array([9, 0]), x)


def test_ddpm_batch_step_after_custom_timesteps_is_refused():
    """diffusers strides by a step count that custom timesteps never set; diffrt says so instead."""
    ours = SCHEDULERS[DDPM].from_config(SD_BASE)
    ours.set_timesteps(timesteps=[900, 500, 100])
    x = np.ones((3, *SHAPE[1:]), np.float32)
    with pytest.raises(ConfigError, match="custom|timesteps="):
        ours.batch_step_no_noise(x, ours.timesteps, x)


def test_batch_step_refuses_fractional_timesteps():
    ours = SCHEDULERS[DDPM].from_config(SD_BASE)
    x = np.ones((2, *SHAPE[1:]), np.float32)
    with pytest.raises(ConfigError, match="integers"):
        ours.batch_step_no_noise(x, np.array([10.5, 3.0]), x)


# ----- surface ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_surface_matches_diffusers(name):
    ours, reference = build_pair(name, SD_BASE, 10)
    assert ours._is_ode_scheduler == reference._is_ode_scheduler == (name == DDIM)
    assert ours.order == reference.order == 1
    assert set(type(ours)._compatibles) == set(type(reference)._compatibles) == set(KARRAS_SCHEDULERS)
    assert ours.init_noise_sigma == reference.init_noise_sigma
    assert ours.timesteps.dtype == np.int64
    rng = np.random.default_rng(8)
    x0, noise = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    t = np.array([999, 3])
    for method in ("add_noise", "get_velocity"):
        ref = getattr(reference, method)(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
        # inherited from AlphaBarScheduler, whose NumPy sqrt is correctly rounded and torch's is not (docstring)
        _close(getattr(ours, method)(x0, noise, t), ref, method, rtol=RTOL)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", [DDIM, DDPM])
def test_batch_step_with_real_rounding_stays_within_rtol(name, spacing):
    """Without torch's sqrt swapped in: the last-bit coefficient differences stay below RTOL of the scale."""
    ours, reference = build_pair(name, {**SD_BASE, "timestep_spacing": spacing, "prediction_type": "v_prediction"}, 50)
    t_ours, t_ref, x, out = window(ours, reference)
    prev_ref = reference.batch_step_no_noise(torch.from_numpy(out), t_ref, torch.from_numpy(x)).numpy()
    _close(ours.batch_step_no_noise(out, t_ours, x), prev_ref, f"{name} {spacing}", rtol=RTOL)
