"""DDIMInverseScheduler and DPMSolverMultistepInverseScheduler match diffusers across their config spaces: the same
ascending timesteps and sigmas, and every inversion step (image latents -> noise) within 2 float32 ulps.

Rounding. Both schedulers' coefficients are float32 scalar sqrt / exp / log, which torch rounds faithfully but not
always correctly (scalar_rounding.py); diffrt rounds them correctly. The sweeps therefore build and run diffusers
inside ``correctly_rounded_scalars`` (table-sized at construction, coefficient-sized while stepping) and hold every
step to 2 ulps: measured 0 (bit-identical) in every config below. ``test_plain_diffusers_*`` runs diffusers as it
is and is held to PLAIN_RTOL x max(|x|, 1): measured at most 7.4e-7 (DDIM inverse, trailing, 50 steps) and 4.3e-7
(DPM-Solver inverse, 50 steps), i.e. one-ulp coefficients; as ulps that reads up to 8704 (DDIM) and 679936 (DPM,
karras) on elements that cancel near zero.

Where diffusers runs a config into NaN or an exception, the tests pin that down on both sides: diffrt refuses the
configs that fail from the first step (SDE variants on the rising schedule, x0 prediction from alpha_bar = 1) and
reproduces the ones that fail on the last step only (a repeated final sigma under a heun / third-order update).
"""

import contextlib
import warnings

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_BASE, SHAPE, _close, config_id, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.ddim_inverse  # noqa: F401  (registers DDIMInverseScheduler)
import diffrt.runtime.schedulers.dpmsolver_multistep_inverse  # noqa: F401  (registers the DPM-Solver inverse)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS
from diffrt.runtime.schedulers.base import KARRAS_SCHEDULERS

DDIM, DPM = "DDIMInverseScheduler", "DPMSolverMultistepInverseScheduler"
ULPS = 2
PLAIN_RTOL = 4e-6  # plain diffusers (torch-rounded scalars): several times what was measured, for other CPUs
TABLES = 10**6  # correctly_rounded_scalars size that also covers diffusers' 1000-entry tables
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


def build(name: str, config: dict, steps: int | None, exact: bool = True):
    """(diffrt, diffusers) schedulers from one config, with ``set_timesteps(steps)`` run on both."""
    with warnings.catch_warnings(), correctly_rounded_scalars(TABLES) if exact else contextlib.nullcontext():
        warnings.simplefilter("ignore")  # diffusers' deprecation notices (dpmsolver, set_alpha_to_zero)
        reference = getattr(diffusers, name).from_config(dict(config))
        if steps is not None:
            reference.set_timesteps(steps)
    ours = SCHEDULERS[name].from_config(dict(config))
    if steps is not None:
        ours.set_timesteps(steps)
    return ours, reference


def inversion(ours, reference, x: np.ndarray, seed: int, exact: bool = True, start: int = 0):
    """Both sides invert ``x`` over their timesteps from ``start``; yields (i, ours, diffusers) after each step."""
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding, np.errstate(invalid="ignore", divide="ignore"):
        pairs = zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)
        for i, (t_ours, t_ref) in enumerate(pairs, start):
            x_ours = ours.step(stand_in_model(x_ours, t_ours), t_ours, x_ours, generator=rng).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref)))
            x_ref = reference.step(out_ref, t_ref, x_ref).prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_inverse_parity(name: str, config: dict, steps: int, seed: int = 0, exact: bool = True) -> int:
    """Equal timesteps (and sigmas), then every step within 2 ulps (``exact``) or PLAIN_RTOL. Returns the steps run."""
    ours, reference = build(name, config, steps, exact)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    if exact and hasattr(reference, "sigmas"):
        np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    ran = 0
    for i, x_ours, x_ref in inversion(ours, reference, x, seed, exact):
        what = f"{name} step {i + 1}/{len(ours.timesteps)} {config}"
        if exact:
            assert_within_ulps(x_ours, x_ref, ULPS, what)
        else:
            _close(x_ours, x_ref, what, rtol=PLAIN_RTOL)
        assert x_ours.dtype == np.float32
        ran += 1
    return ran


# ===== DDIMInverseScheduler ================================================================================
DDIM_PREDICTIONS = ({"prediction_type": "epsilon"}, {"prediction_type": "v_prediction"})
# x0 prediction needs a start below alpha_bar = 1 (test_ddim_sample_prediction_from_alpha_one_is_refused)
SAMPLE_PREDICTION = {"prediction_type": "sample", "set_alpha_to_one": False}


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction", [*DDIM_PREDICTIONS, SAMPLE_PREDICTION], ids=config_id)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_inversion_matches_diffusers(spacing, prediction, steps):
    assert assert_inverse_parity(DDIM, {**SD_BASE, "timestep_spacing": spacing, **prediction}, steps) == steps


@pytest.mark.parametrize(
    "extra",
    [
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        {"set_alpha_to_one": False},
        {"set_alpha_to_one": False, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"set_alpha_to_zero": False},  # diffusers' deprecated spelling, taken as set_alpha_to_one's value
        {"set_alpha_to_zero": True, "set_alpha_to_one": False},
        {"steps_offset": 0},
        {"steps_offset": 3, "set_alpha_to_one": False},
        {"clip_sample": False},
        {"clip_sample_range": 0.5},
        {"clip_sample_range": 0.8, **SAMPLE_PREDICTION},
        {"num_train_timesteps": 500},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_ddim_config_fields_match_diffusers(extra, steps):
    assert_inverse_parity(DDIM, {**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("alpha_fields", [{}, {"set_alpha_to_one": False}, {"set_alpha_to_zero": False}], ids=str)
def test_ddim_initial_alpha_bar_matches_diffusers(alpha_fields):
    ours, reference = build(DDIM, {**SD_BASE, **alpha_fields}, None)
    assert ours.initial_alpha_cumprod == reference.initial_alpha_cumprod.numpy()
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())  # ascending, before set_timesteps
    assert ours.config.set_alpha_to_one == reference.config.set_alpha_to_one


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_plain_diffusers_ddim_within_rtol(spacing):
    for extra in ({}, {"prediction_type": "v_prediction", "set_alpha_to_one": False}, SAMPLE_PREDICTION):
        assert_inverse_parity(DDIM, {**SD_BASE, "timestep_spacing": spacing, **extra}, 50, exact=False)


def test_ddim_sample_prediction_from_alpha_one_is_refused():
    # diffusers divides by sqrt(1 - 1) = 0 at the first step and returns inf (NaN from the next step on)
    config = {**SD_BASE, "prediction_type": "sample"}
    ours, reference = build(DDIM, config, 4)
    x = np.ones(SHAPE, np.float32)
    first = reference.step(torch.from_numpy(x * 0.5), reference.timesteps[0], torch.from_numpy(x)).prev_sample
    assert not torch.isfinite(first).any()
    with pytest.raises(ConfigError, match="set_alpha_to_one=False"):
        ours.step(x * 0.5, ours.timesteps[0], x)


@pytest.mark.parametrize(
    "bad",
    [{"timestep_spacing": "linspace"}, {"beta_schedule": "sigmoid"}, {"beta_schedule": "exp"}],
    ids=str,
)
def test_ddim_refusals_match_diffusers(bad):
    with pytest.raises((ValueError, NotImplementedError)):
        diffusers.DDIMInverseScheduler.from_config({**SD_BASE, **bad}).set_timesteps(10)
    with pytest.raises(ConfigError):
        SCHEDULERS[DDIM].from_config({**SD_BASE, **bad}).set_timesteps(10)


def test_ddim_unknown_prediction_type_is_refused_when_built():
    # diffusers accepts it and fails at the first step
    reference = diffusers.DDIMInverseScheduler.from_config({"prediction_type": "x0"})
    reference.set_timesteps(4)
    with pytest.raises(ValueError):
        reference.step(torch.ones(SHAPE), reference.timesteps[0], torch.ones(SHAPE))
    with pytest.raises(ConfigError, match="prediction_type"):
        SCHEDULERS[DDIM].from_config({"prediction_type": "x0"})


def test_ddim_step_before_set_timesteps_is_refused():
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[DDIM]().step(x, 0, x)


def test_ddim_inversion_is_undone_by_ddim_sampling():
    # what inversion is for: with a model that ignores its input, DDIM maps the inverted noise back exactly
    config = {**SD_BASE, "set_alpha_to_one": False, "clip_sample": False}
    inverse, forward = SCHEDULERS[DDIM].from_config(config), SCHEDULERS["DDIMScheduler"].from_config(config)
    inverse.set_timesteps(10)
    forward.set_timesteps(10)
    latents = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    eps = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    x = latents
    for t in inverse.timesteps:
        x = inverse.step(eps, t, x).prev_sample
    for t in forward.timesteps:
        x = forward.step(eps, t, x).prev_sample
    np.testing.assert_allclose(x, latents, rtol=1e-5, atol=1e-5)


def test_ddim_compatibles_are_none_like_diffusers():
    assert [c.__name__ for c in SCHEDULERS[DDIM]().compatibles] == [DDIM]
    assert diffusers.DDIMInverseScheduler._compatibles == []


# ===== DPMSolverMultistepInverseScheduler ==================================================================
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})


def assert_dpm_parity(config: dict, steps: int, seed: int = 0, exact: bool = True) -> None:
    """assert_inverse_parity, except where diffusers' schedule fails on its last step, checked the same on both sides:
    - exponential / beta sigmas whose first two timesteps truncate to the same integer: diffusers starts at the
      second copy and runs off its schedule (IndexError); diffrt refuses that step (ConfigError, "past the end");
    - a repeated final sigma (resampled or flow schedules) meets a heun / third-order update: h = 0 and diffusers'
      coefficients are 0 / 0, so both return NaN at the last step and only there."""
    ours, reference = build(DPM, config, steps, exact)
    n = len(reference.timesteps)
    if n > 1 and reference.timesteps[0] == reference.timesteps[1]:
        with pytest.raises(ConfigError, match="past the end"):
            assert_inverse_parity(DPM, config, steps, seed, exact)
        x = torch.zeros(SHAPE)
        with pytest.raises(IndexError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t in reference.timesteps:
                x = reference.step(x, t, x).prev_sample
        return
    try:
        assert assert_inverse_parity(DPM, config, steps, seed, exact) == n
    except AssertionError as error:
        if "NaN" not in str(error):
            raise
        last = {}
        for i, x_ours, x_ref in inversion(ours, reference, np.ones(SHAPE, np.float32), seed, exact):
            last[i] = (np.isnan(x_ours).any(), np.isnan(x_ref).any())
        assert reference.sigmas[n] == reference.sigmas[n - 1]  # a zero-length last step
        assert all(last[i] == (False, False) for i in range(n - 1)) and last[n - 1] == (True, True)


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpm_inversion_matches_diffusers(spacing, prediction_type, sigmas, steps):
    assert_dpm_parity({**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}, steps)


ODE_ORDERS = [(a, order) for a in ("dpmsolver++", "dpmsolver") for order in (1, 2, 3)]


@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("algorithm, order", ODE_ORDERS, ids=[f"{a}-order{o}" for a, o in ODE_ORDERS])
def test_dpm_algorithms_and_orders_match_diffusers(algorithm, order, solver_type, steps):
    config = {**SD_BASE, "algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type}
    assert_dpm_parity(config, steps, seed=steps)


@pytest.mark.parametrize(
    "extra",
    [
        {"lower_order_final": False},
        {"lower_order_final": False, "solver_order": 3},
        {"euler_at_final": True},
        {"euler_at_final": True, "use_karras_sigmas": True, "solver_type": "heun"},
        {"use_karras_sigmas": True, "solver_type": "heun"},  # NaN on the last of 25 steps, on both sides
        {"use_karras_sigmas": True, "solver_order": 3},
        {"lambda_min_clipped": -5.1},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "trailing"},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "leading", "steps_offset": 1},
        {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "solver_order": 3},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"num_train_timesteps": 500, "timestep_spacing": "leading"},
        {"thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
        {"thresholding": True, "algorithm_type": "dpmsolver", "dynamic_thresholding_ratio": 0.9},
        {**FLOW},
        {**FLOW, "flow_shift": 3.0, "solver_order": 3},
        {"use_flow_sigmas": True, "prediction_type": "epsilon", "algorithm_type": "dpmsolver"},
        {"algorithm_type": "deis", "solver_type": "bh2"},
        {"solver_type": "logrho"},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("steps", [4, 25])
def test_dpm_config_fields_match_diffusers(extra, steps):
    assert_dpm_parity({**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("steps", [50, 100])
def test_dpm_repeated_karras_timesteps_are_dropped_like_diffusers(steps):
    # rounded Karras timesteps repeat near t = 0: diffusers drops the repeats but keeps every sigma
    ours, reference = build(DPM, {**SD_BASE, "use_karras_sigmas": True}, steps)
    assert len(ours.timesteps) < steps and len(ours.sigmas) == steps + 1
    assert_dpm_parity({**SD_BASE, "use_karras_sigmas": True}, steps)


SDE_CONFIGS = [
    {**FLOW, "algorithm_type": "sde-dpmsolver++"},
    {**FLOW, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "flow_shift": 3.0},
    {**FLOW, "algorithm_type": "sde-dpmsolver++", "solver_order": 1},
    {"use_flow_sigmas": True, "algorithm_type": "sde-dpmsolver", "prediction_type": "v_prediction"},
    {"use_flow_sigmas": True, "algorithm_type": "sde-dpmsolver", "solver_type": "heun"},
]


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("config", SDE_CONFIGS, ids=config_id)
def test_dpm_sde_variants_draw_the_same_noise_as_diffusers(config, steps, seed):
    assert_dpm_parity({**SD_BASE, **config}, steps, seed=seed)


def test_dpm_given_variance_noise_is_used_like_diffusers():
    config = {**SD_BASE, **FLOW, "algorithm_type": "sde-dpmsolver++"}
    ours, reference = build(DPM, config, 10)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    with correctly_rounded_scalars():
        for t_ours, t_ref in zip(ours.timesteps, reference.timesteps):
            noise = rng.standard_normal(SHAPE, dtype=np.float32)
            out = stand_in_model(x_ours, t_ours)
            x_ours = ours.step(out, t_ours, x_ours, variance_noise=noise).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref)))
            x_ref = reference.step(out_ref, t_ref, x_ref, variance_noise=torch.from_numpy(noise)).prev_sample
            assert_within_ulps(x_ours, x_ref.numpy(), ULPS, f"t={t_ref}")


@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "sde-dpmsolver"])
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
def test_dpm_sde_on_the_rising_schedule_is_refused(sigmas, algorithm):
    # diffusers accepts it and returns NaN from the first step: the noise scale sqrt(1 - e^-2h) has h < 0
    config = {**SD_BASE, "algorithm_type": algorithm, **sigmas}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = diffusers.DPMSolverMultistepInverseScheduler.from_config(config)
    reference.set_timesteps(10)
    x = torch.ones(SHAPE)
    assert torch.isnan(reference.step(x * 0.5, reference.timesteps[0], x).prev_sample).all()
    with pytest.raises(ConfigError, match="use_flow_sigmas"):
        SCHEDULERS[DPM].from_config(config)


@pytest.mark.parametrize("algorithm", ["sde-dpmsolver++", "sde-dpmsolver"])
def test_dpm_sde_third_order_is_refused(algorithm):
    # diffusers' third-order update here is called without noise: it fails at the first third-order step
    prediction = "flow_prediction" if algorithm == "sde-dpmsolver++" else "epsilon"
    config = {**SD_BASE, "use_flow_sigmas": True, "prediction_type": prediction, "algorithm_type": algorithm}
    reference = diffusers.DPMSolverMultistepInverseScheduler.from_config({**config, "solver_order": 3})
    reference.set_timesteps(10)
    x = torch.ones(SHAPE)
    with pytest.raises((AssertionError, UnboundLocalError)):
        for t in reference.timesteps:
            x = reference.step(x * 0.5, t, x).prev_sample
    with pytest.raises(ConfigError, match="solver_order"):
        SCHEDULERS[DPM].from_config({**config, "solver_order": 3})


@pytest.mark.parametrize("algorithm", ["dpmsolver", "sde-dpmsolver"])
def test_dpm_flow_prediction_with_noise_algorithms_is_refused(algorithm):
    config = {**SD_BASE, **FLOW, "algorithm_type": algorithm}
    reference = diffusers.DPMSolverMultistepInverseScheduler.from_config(config)
    reference.set_timesteps(10)
    with pytest.raises(ValueError):
        reference.step(torch.ones(SHAPE), reference.timesteps[0], torch.ones(SHAPE))
    with pytest.raises(ConfigError, match="flow_prediction"):
        SCHEDULERS[DPM].from_config(config)


@pytest.mark.parametrize(
    "bad",
    [
        {"algorithm_type": "unipc"},
        {"solver_type": "bogus"},
        {"beta_schedule": "sigmoid"},
        {"use_karras_sigmas": True, "use_beta_sigmas": True},
        {"use_exponential_sigmas": True, "use_karras_sigmas": True},
        {"timestep_spacing": "bogus"},  # diffusers refuses at set_timesteps, diffrt when built
    ],
    ids=str,
)
def test_dpm_refusals_match_diffusers(bad):
    with pytest.raises((ValueError, NotImplementedError)):
        diffusers.DPMSolverMultistepInverseScheduler.from_config({**SD_BASE, **bad}).set_timesteps(10)
    with pytest.raises(ConfigError):
        SCHEDULERS[DPM].from_config({**SD_BASE, **bad}).set_timesteps(10)


def test_dpm_remapped_names_are_recorded_like_diffusers():
    ours, reference = build(DPM, {"algorithm_type": "deis", "solver_type": "bh1"}, None)
    assert (ours.config.algorithm_type, ours.config.solver_type) == ("dpmsolver++", "midpoint")
    assert (reference.config.algorithm_type, reference.config.solver_type) == ("dpmsolver++", "midpoint")


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_dpm_learned_variance_uses_the_first_three_channels(variance_type, algorithm):
    ours, reference = build(DPM, {**SD_BASE, "variance_type": variance_type, "algorithm_type": algorithm}, 10)
    x_ours = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    x_ref = torch.from_numpy(x_ours.copy())
    with correctly_rounded_scalars():
        for t in reference.timesteps:
            out = stand_in_model(np.concatenate([x_ours, -x_ours], axis=1), float(t))  # eps and variance channels
            x_ours = ours.step(out, t.item(), x_ours).prev_sample
            x_ref = reference.step(torch.from_numpy(out), t, x_ref).prev_sample
            assert_within_ulps(x_ours, x_ref.numpy(), ULPS, f"t={t}")


@pytest.mark.parametrize("sigmas", [{}, {"use_karras_sigmas": True}], ids=lambda s: next(iter(s), "default"))
def test_dpm_add_noise_matches_diffusers(sigmas):
    ours, reference = build(DPM, {**SD_BASE, **sigmas}, 10)
    rng = np.random.default_rng(5)
    x0, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    schedule = reference.timesteps.tolist()
    assert 3 not in schedule and 998 not in schedule  # timesteps outside the schedule map to its last step
    for timesteps in ([schedule[0], schedule[3]], [schedule[-1]] * 2, [3, 998]):
        t = torch.tensor(timesteps)
        with correctly_rounded_scalars():
            ref = reference.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t).numpy()
        assert_within_ulps(ours.add_noise(x0, noise, t.numpy()), ref, ULPS, f"add_noise at {timesteps}")


@pytest.mark.parametrize(
    "extra, steps",
    [
        ({}, 50),
        ({"algorithm_type": "dpmsolver"}, 50),
        ({"use_karras_sigmas": True}, 50),
        ({"use_beta_sigmas": True}, 50),
        ({"timestep_spacing": "leading", "algorithm_type": "dpmsolver"}, 25),
    ],
    ids=str,
)
def test_plain_diffusers_dpm_within_rtol(extra, steps):
    assert_dpm_parity({**SD_BASE, **extra}, steps, exact=False)


def test_dpm_schedule_before_set_timesteps_matches_diffusers():
    ours, reference = build(DPM, SD_BASE, None)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    assert ours.timesteps.dtype == np.float32


def test_dpm_compatibles_are_the_karras_family_like_diffusers():
    assert SCHEDULERS[DPM]._compatibles == KARRAS_SCHEDULERS
    assert tuple(diffusers.DPMSolverMultistepInverseScheduler._compatibles) == KARRAS_SCHEDULERS
