"""Every diffrt scheduler offers diffusers' public scheduler surface, and the pieces that surface adds behave as
diffusers' do: previous_timestep, set_timesteps arguments, get_velocity, compatibles."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_BASE, SHAPE
from ulps import max_ulps

import diffrt.runtime.schedulers as schedulers

for _module in pkgutil.iter_modules(schedulers.__path__):  # every scheduler module, listed in __init__ or not
    importlib.import_module(f"diffrt.runtime.schedulers.{_module.name}")

NAMES = sorted(schedulers.SCHEDULERS)
PUBLIC = (
    "previous_timestep",
    "set_begin_index",
    "add_noise",
    "scale_noise",
    "get_velocity",
    "scale_model_input",
    "step",
    "set_timesteps",
    "index_for_timestep",
)


@pytest.mark.parametrize("name", NAMES)
def test_public_surface_covers_diffusers(name):
    ours, theirs = schedulers.SCHEDULERS[name], getattr(diffusers, name)
    missing = [m for m in PUBLIC if hasattr(theirs, m) and not hasattr(ours, m)]
    assert not missing, f"{name} lacks {missing}"
    wanted = set(inspect.signature(theirs.set_timesteps).parameters) - {"self", "device"}
    offered = set(inspect.signature(ours.set_timesteps).parameters) - {"self"}
    assert wanted <= offered, f"{name}.set_timesteps lacks {sorted(wanted - offered)}"
    assert ours.order == getattr(theirs, "order", 1)


@pytest.mark.parametrize("name", NAMES)
def test_compatibles_are_diffusers_compatibles(name):
    ours = schedulers.SCHEDULERS[name].from_config({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(diffusers, name).from_config({})
    expected = {c.__name__ for c in theirs.compatibles} & set(schedulers.SCHEDULERS)
    assert {c.__name__ for c in ours.compatibles} == expected
    for other in ours.compatibles:  # each swaps in through from_config, as in diffusers
        assert type(other.from_config(ours.config)) is other


@pytest.mark.parametrize("name", ["LCMScheduler", "TCDScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("timesteps", [None, 4, [999, 759, 499, 259]])
def test_previous_timestep_matches_diffusers(name, timesteps):
    ours, theirs = schedulers.SCHEDULERS[name].from_config(SD_BASE), getattr(diffusers, name).from_config(SD_BASE)
    if isinstance(timesteps, int):
        ours.set_timesteps(timesteps)
        theirs.set_timesteps(timesteps)
    elif timesteps is not None:
        ours.set_timesteps(timesteps=timesteps)
        theirs.set_timesteps(timesteps=timesteps)
    for t in theirs.timesteps[:: max(1, len(theirs.timesteps) // 7)].tolist() + theirs.timesteps[-1:].tolist():
        assert ours.previous_timestep(t) == int(theirs.previous_timestep(torch.tensor(t)))


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DDIMScheduler", "DDPMScheduler"])
def test_get_velocity_matches_diffusers(name):
    ours, theirs = schedulers.SCHEDULERS[name].from_config(SD_BASE), getattr(diffusers, name).from_config(SD_BASE)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    rng = np.random.default_rng(0)
    sample, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t_ref = theirs.timesteps[[2, 7]]
    expected = theirs.get_velocity(torch.from_numpy(sample), torch.from_numpy(noise), t_ref).numpy()
    got = ours.get_velocity(sample, noise, ours.timesteps[[2, 7]])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_num_train_timesteps_argument_matches_diffusers(name, spacing):
    config = {**SD_BASE, "timestep_spacing": spacing}
    ours, theirs = schedulers.SCHEDULERS[name].from_config(config), getattr(diffusers, name).from_config(config)
    ours.set_timesteps(8, num_train_timesteps=500)
    theirs.set_timesteps(8, num_train_timesteps=500)
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    assert max_ulps(ours.sigmas, theirs.sigmas.numpy()) <= 1  # torch's float32 sqrt: see test_schedules_exact


@pytest.mark.parametrize("name", NAMES)
def test_public_state_covers_diffusers(name):
    """After set_timesteps, the attributes a diffusers user reads exist on both sides, with the same length."""
    config = {"beta_schedule": "squaredcos_cap_v2"} if name == "UnCLIPScheduler" else {}
    ours = schedulers.SCHEDULERS[name].from_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(diffusers, name).from_config(config)
    kwargs = {"intermediate_timesteps": None} if name == "SCMScheduler" else {}
    ours.set_timesteps(6, **kwargs)
    theirs.set_timesteps(6, **kwargs)
    for attribute in ("timesteps", "sigmas", "init_noise_sigma", "step_index", "begin_index", "num_inference_steps"):
        if hasattr(theirs, attribute):
            assert hasattr(ours, attribute), f"{name} lacks {attribute}"
    assert len(ours.timesteps) == len(theirs.timesteps)
    if hasattr(theirs, "sigmas") and theirs.sigmas is not None:
        assert len(ours.sigmas) == len(theirs.sigmas)
