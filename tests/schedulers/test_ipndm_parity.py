"""IPNDMScheduler matches diffusers: its (sigma, alpha) tables and timesteps, from the sine schedule or from
``trained_betas``, and every step of the linear-multistep loop within 2 float32 ulps.

Rounding. diffusers builds the tables with torch's float32 sin, sqrt and atan2, which are faithful but not correctly
rounded (for 1000 steps: 57 of 1001 sines, 3 square roots and 27 angles differ from the correctly rounded value by
an ulp); diffrt rounds them correctly. The table tests therefore build diffusers' tables with those three functions
rounded correctly (``exact_tables``); tables and timesteps are then identical and every step is bit-identical (the
step itself is plain float32 arithmetic). ``test_plain_diffusers_*`` compares with diffusers as it is, up to 50
steps: timesteps within TIMESTEP_ULPS (measured: 2) and samples within PLAIN_RTOL x max(|x|, 1) (measured: 3.1e-7).
Longer schedules drift further (measured: 3 ulps / 1.2e-6 at 100 steps, 64 ulps / 2.6e-6 at 1000): near the noisy
end alpha = sqrt(1 - sigma^4) cancels, so a one-ulp sigma moves alpha, the angle and the division by alpha a lot.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps, max_ulps

import diffrt.runtime.schedulers.ipndm  # noqa: F401  (registers IPNDMScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

NAME = "IPNDMScheduler"
ULPS = 2
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels
TIMESTEP_ULPS = 4
TRAINED = {
    "from pure noise": [1.0, 0.8, 0.5, 0.2, 0.05, 0.0],
    "from partial noise": [0.9, 0.6, 0.3, 0.1, 0.01],
    "two levels": [1.0, 0.0],
}


@contextlib.contextmanager
def exact_tables():
    """diffusers' float32 sin / sqrt and atan2 over whole tables, correctly rounded as diffrt rounds them."""
    original = torch.atan2

    def atan2(y, x):
        exact = np.arctan2(y.numpy().astype(np.float64), x.numpy().astype(np.float64))
        return torch.from_numpy(exact.astype(np.float32))

    torch.atan2 = atan2
    try:
        with correctly_rounded_scalars(10**6):
            yield
    finally:
        torch.atan2 = original


def build(config: dict, steps: int | None, exact: bool = True):
    with exact_tables() if exact else contextlib.nullcontext():
        reference = diffusers.IPNDMScheduler.from_config(dict(config))
        if steps is not None:
            reference.set_timesteps(steps)
    ours = SCHEDULERS[NAME].from_config(dict(config))
    if steps is not None:
        ours.set_timesteps(steps)
    return ours, reference


def assert_tables_equal(ours, reference) -> None:
    for table in ("timesteps", "betas", "alphas"):
        np.testing.assert_array_equal(getattr(ours, table), getattr(reference, table).numpy(), err_msg=table)
    assert ours.timesteps.dtype == np.float32


def loop(ours, reference, x: np.ndarray, start: int = 0):
    """Both sides run their own timesteps from ``start``; yields (i, ours, diffusers) after each step."""
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True), start):
        x_ours = ours.step(stand_in_model(ours.scale_model_input(x_ours, t_ours), t_ours), t_ours, x_ours).prev_sample
        out_ref = torch.from_numpy(stand_in_model(reference.scale_model_input(x_ref, t_ref).numpy(), float(t_ref)))
        x_ref = reference.step(out_ref, t_ref, x_ref).prev_sample
        yield i, x_ours, x_ref.numpy()


def assert_ipndm_parity(config: dict, steps: int, seed: int = 0) -> None:
    ours, reference = build(config, steps)
    assert_tables_equal(ours, reference)
    x = np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in loop(ours, reference, x):
        assert_within_ulps(x_ours, x_ref, ULPS, f"step {i + 1}/{len(ours.timesteps)} {config}")
        assert x_ours.dtype == np.float32


# every order of the multistep warm-up (1, 2, 3) and the 4th-order steady state
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 10, 25, 50])
def test_sampling_matches_diffusers(steps):
    assert_ipndm_parity({}, steps, seed=steps)


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("table", TRAINED, ids=str)
def test_trained_betas_set_the_schedule_like_diffusers(table, steps):
    # the table replaces the sine schedule whatever the step count: its length, less one, is the step count
    ours, _ = build({"trained_betas": TRAINED[table]}, steps)
    assert len(ours.timesteps) == len(TRAINED[table]) - 1 and ours.num_inference_steps == steps
    assert_ipndm_parity({"trained_betas": TRAINED[table]}, steps)


@pytest.mark.parametrize("config", [{}, {"num_train_timesteps": 50}, {"trained_betas": TRAINED["from pure noise"]}])
def test_schedule_before_set_timesteps_matches_diffusers(config):
    # diffusers builds a num_train_timesteps-step schedule at construction, so stepping works without set_timesteps
    ours, reference = build(config, None)
    assert_tables_equal(ours, reference)
    x = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in loop(ours, reference, x):
        assert_within_ulps(x_ours, x_ref, ULPS, f"step {i + 1} {config}")
        if i == 5:  # the warm-up and two fourth-order steps
            break


@pytest.mark.parametrize("begin", [1, 3, 7])
def test_set_begin_index_starts_mid_schedule_like_diffusers(begin):
    ours, reference = build({}, 10)
    ours.set_begin_index(begin)
    reference.set_begin_index(begin)
    x = np.random.default_rng(begin).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in loop(ours, reference, x, start=begin):
        assert_within_ulps(x_ours, x_ref, ULPS, f"step {i + 1}/10 from {begin}")
    assert ours.step_index == reference.step_index == 10


def test_set_timesteps_resets_history_and_begin_index_like_diffusers():
    ours, reference = build({}, 10)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    for _ in zip(range(3), loop(ours, reference, x)):
        pass
    ours.set_begin_index(2)
    reference.set_begin_index(2)
    with exact_tables():
        reference.set_timesteps(6)
    ours.set_timesteps(6)
    assert (ours.ets, ours.step_index, ours.begin_index) == (reference.ets, reference.step_index, None)
    assert_tables_equal(ours, reference)


def test_index_for_timestep_matches_diffusers():
    ours, reference = build({}, 25)
    for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
        assert ours.index_for_timestep(t_ours) == reference.index_for_timestep(t_ref)
    with pytest.raises(ConfigError, match="not in this scheduler's timesteps"):
        ours.index_for_timestep(np.float32(0.123))


@pytest.mark.parametrize("steps", [2, 3, 4, 10, 50])
def test_plain_diffusers_within_tolerance(steps):
    ours, reference = build({}, steps, exact=False)
    assert max_ulps(ours.timesteps, reference.timesteps.numpy()) <= TIMESTEP_ULPS
    x = np.random.default_rng(steps).standard_normal(SHAPE, dtype=np.float32)
    for i, x_ours, x_ref in loop(ours, reference, x):
        _close(x_ours, x_ref, f"plain diffusers step {i + 1}/{steps}", rtol=PLAIN_RTOL)


def test_float16_samples_stay_float16():
    ours = SCHEDULERS[NAME]()
    ours.set_timesteps(4)
    x = np.ones(SHAPE, np.float16)
    for t in ours.timesteps:
        x = ours.step(x * np.float16(0.5), t, x).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


@pytest.mark.parametrize("table", [[1.5, 0.5, 0.0], [0.5], [[0.5, 0.1]], [0.9, -0.2]], ids=str)
def test_trained_betas_that_are_not_noise_levels_are_refused(table):
    with pytest.raises(ConfigError, match="trained_betas"):
        SCHEDULERS[NAME](trained_betas=table)


def test_sigma_above_one_gives_nan_in_diffusers():
    # why diffrt refuses such tables: alpha = sqrt(1 - sigma^2) is NaN in diffusers
    assert torch.isnan(diffusers.IPNDMScheduler(trained_betas=[1.5, 0.5, 0.0]).alphas).any()


def test_step_past_the_end_is_refused():
    ours = SCHEDULERS[NAME]()
    ours.set_timesteps(2)
    x = np.ones(SHAPE, np.float32)
    for t in ours.timesteps:
        x = ours.step(x, t, x).prev_sample
    with pytest.raises(ConfigError, match="past the end"):
        ours.step(x, ours.timesteps[-1], x)


def test_surface_matches_diffusers():
    ours, reference = build({}, 10)
    assert (ours.order, ours.init_noise_sigma, ours.pndm_order) == (reference.order, 1.0, reference.pndm_order)
    assert [c.__name__ for c in ours.compatibles] == [NAME] and diffusers.IPNDMScheduler._compatibles == []
    x = np.ones(SHAPE, np.float32)
    assert ours.scale_model_input(x, ours.timesteps[0]) is x
