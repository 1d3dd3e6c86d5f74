"""EDMEulerScheduler and EDMDPMSolverMultistepScheduler match diffusers across their config space.

Both build their schedules from float32 exp / log / pow over whole arrays and their step coefficients from float32
scalar sqrt / exp / log, which torch rounds faithfully but not always correctly (see scalar_rounding.py); diffrt
rounds them correctly. The sweeps therefore run diffusers inside ``correctly_rounded_scalars(TABLE_SIZE)``: then
timesteps and sigmas are equal and every step is within 2 ulps (measured: 0, bit-identical, everywhere below).
``test_plain_diffusers_*`` runs diffusers untouched, within the tolerances those one-ulp roundings explain.
"""

from __future__ import annotations

import contextlib
import warnings

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, config_id, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps, max_ulps

import diffrt.runtime.schedulers.edm_dpmsolver_multistep  # noqa: F401  (registers the classes)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

EULER = "EDMEulerScheduler"
DPM = "EDMDPMSolverMultistepScheduler"
TABLE_SIZE = 10**6  # round diffusers' schedule tables (up to num_train_timesteps + 1 entries) correctly too
SCHEDULES = ("karras", "exponential")
PREDICTIONS = ("epsilon", "v_prediction")


def ids(configs) -> list[str]:
    """Deterministic test ids for config dicts."""
    return [config_id(c) or "default" for c in configs]


def rounding(exact: bool):
    return correctly_rounded_scalars(TABLE_SIZE) if exact else contextlib.nullcontext()


def build(name: str, config: dict, exact: bool = True):
    """(diffrt, diffusers) schedulers from one config (diffusers' construction-time tables rounded as ``exact``)."""
    with rounding(exact), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(diffusers, name).from_config(dict(config))
    return SCHEDULERS[name].from_config(dict(config)), reference


def set_both(ours, reference, steps: int | None, exact: bool = True, ramp: np.ndarray | None = None) -> None:
    """set_timesteps on both sides: ``steps`` or custom ramp positions (diffusers wants a tensor there)."""
    with rounding(exact):
        if ramp is None:
            reference.set_timesteps(steps)
            ours.set_timesteps(steps)
        else:
            reference.set_timesteps(sigmas=torch.from_numpy(ramp))
            ours.set_timesteps(sigmas=ramp)


def assert_schedule_equal(ours, reference) -> None:
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    assert ours.timesteps.dtype == ours.sigmas.dtype == np.float32
    assert ours.init_noise_sigma == reference.init_noise_sigma


def run_loop(ours, reference, x: np.ndarray, seed: int, exact: bool = True, step_kwargs: dict | None = None):
    """Both sides denoise ``x`` from their begin index (scale_model_input, stand-in model, step), drawing the same
    noise; yields (i, ours, diffusers) after each step."""
    step_kwargs = step_kwargs or {}
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    start = reference.begin_index or 0
    with shared_noise(reference, seed), rounding(exact):
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)):
            out_ours = stand_in_model(ours.scale_model_input(x_ours, t_ours), t_ours)
            x_ours = ours.step(out_ours, t_ours, x_ours, generator=rng, **step_kwargs).prev_sample
            inp = reference.scale_model_input(x_ref, t_ref).numpy()
            x_ref = reference.step(torch.from_numpy(stand_in_model(inp, float(t_ref))), t_ref, x_ref, **step_kwargs)
            x_ref = x_ref.prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_sampling_parity(name, config, steps, seed=0, step_kwargs=None, ramp=None):
    """Same schedule to the bit, then every step of the text-to-image loop within 2 ulps."""
    ours, reference = build(name, config)
    set_both(ours, reference, steps, ramp=ramp)
    assert_schedule_equal(ours, reference)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    x *= np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_loop(ours, reference, x, seed, step_kwargs=step_kwargs):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} step {i + 1}/{len(reference.timesteps)} {config}")
        assert x_ours.dtype == np.float32


# ----- EDMEulerScheduler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
def test_euler_sampling_matches_diffusers(sigma_schedule, prediction_type, steps):
    assert_sampling_parity(EULER, {"sigma_schedule": sigma_schedule, "prediction_type": prediction_type}, steps)


EULER_FIELDS = [
    {"final_sigmas_type": "sigma_min"},
    {"final_sigmas_type": "sigma_min", "sigma_schedule": "exponential"},
    {"sigma_data": 0.6, "prediction_type": "v_prediction"},
    {"sigma_data": 1.0},
    {"sigma_min": 0.03, "sigma_max": 14.6},  # a Playground-v2.5-like range
    {"sigma_min": 0.03, "sigma_max": 14.6, "sigma_schedule": "exponential"},
    {"rho": 3.0},
    {"rho": 1.0, "sigma_data": 0.25},
    {"num_train_timesteps": 500, "final_sigmas_type": "sigma_min"},
]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("extra", EULER_FIELDS, ids=ids(EULER_FIELDS))
def test_euler_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(EULER, extra, steps)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize(
    "churn",
    [{"s_churn": 1.0}, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003}],
    ids=["churn", "churn-window-noise"],
)
def test_euler_churn_draws_the_same_noise_as_diffusers(churn, sigma_schedule, steps):
    assert_sampling_parity(EULER, {"sigma_schedule": sigma_schedule}, steps, seed=3, step_kwargs=churn)


RAMPS = {
    "uniform": np.linspace(0, 1, 7),
    "front-loaded": np.array([0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]),
    "partial": np.array([0.3, 0.5, 0.9]),
    "single": np.array([0.25]),
}


@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize("ramp", list(RAMPS))
def test_euler_custom_sigmas_are_ramp_positions_as_in_diffusers(ramp, sigma_schedule):
    config = {"sigma_schedule": sigma_schedule, "final_sigmas_type": "sigma_min"}
    assert_sampling_parity(EULER, config, None, ramp=RAMPS[ramp])
    ours, reference = build(EULER, config)
    set_both(ours, reference, None, ramp=RAMPS[ramp])
    assert ours.num_inference_steps is reference.num_inference_steps is None


@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_euler_schedule_before_set_timesteps_matches_diffusers(sigma_schedule, num_train_timesteps):
    config = {"sigma_schedule": sigma_schedule, "num_train_timesteps": num_train_timesteps}
    ours, reference = build(EULER, config)
    assert_schedule_equal(ours, reference)
    assert len(ours) == len(reference)
    x = np.random.default_rng(5).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_loop(ours, reference, x, 0):  # diffusers steps on its training schedule too
        assert_within_ulps(x_ours, x_ref, 2, f"training-schedule step {i}")
        if i == 5:
            break


def img2img_start(reference, steps: int, strength: float):
    """diffusers' own image-to-image choice of timesteps, from its pipeline class (it calls set_begin_index)."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=reference), steps, strength, "cpu")


def assert_img2img_parity(name: str, config: dict, steps: int, strength: float, seed: int = 0) -> None:
    """Same start index and timesteps for ``strength``, same ``add_noise`` at the first of them, same loop."""
    ours, reference = build(name, config)
    set_both(ours, reference, steps)
    ref_timesteps, _ = img2img_start(reference, steps, strength)
    our_timesteps = ours.set_timesteps_for_strength(steps, strength)
    np.testing.assert_array_equal(our_timesteps, ref_timesteps.numpy())
    assert ours.begin_index == reference.begin_index
    if len(ref_timesteps) == 0:
        return
    rng = np.random.default_rng(seed + 2)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    first = ref_timesteps[:1].repeat(SHAPE[0])
    x = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), first).numpy()
    np.testing.assert_array_equal(ours.add_noise(image, noise, np.repeat(our_timesteps[:1], SHAPE[0])), x)
    for i, x_ours, x_ref in run_loop(ours, reference, x, seed):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} img2img step {i} strength={strength} {config}")


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize("name", [EULER, DPM])
def test_img2img_entry_matches_diffusers(name, sigma_schedule, strength):
    assert_img2img_parity(name, {"sigma_schedule": sigma_schedule}, 10, strength)


@pytest.mark.parametrize("name", [EULER, DPM])
def test_add_noise_per_item_timesteps_matches_diffusers(name):
    ours, reference = build(name, {})
    set_both(ours, reference, 12)
    rng = np.random.default_rng(7)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    picks = [3, 9]
    expected = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), reference.timesteps[picks])
    np.testing.assert_array_equal(ours.add_noise(image, noise, ours.timesteps[picks]), expected.numpy())


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("name", [EULER, DPM])
def test_preconditioning_matches_diffusers(name, prediction_type):
    """c_in, c_noise and the denoised estimate at every sigma of a schedule (and a sigma_data other than 0.5)."""
    ours, reference = build(name, {"prediction_type": prediction_type, "sigma_data": 0.7})
    set_both(ours, reference, 25)
    rng = np.random.default_rng(11)
    x, out = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    with correctly_rounded_scalars():
        for sigma in reference.sigmas[:-1]:
            s = np.float32(sigma.item())
            expected_in = reference.precondition_inputs(torch.from_numpy(x), sigma).numpy()
            np.testing.assert_array_equal(ours.precondition_inputs(x, s), expected_in)
            expected_out = reference.precondition_outputs(torch.from_numpy(x), torch.from_numpy(out), sigma)
            np.testing.assert_array_equal(ours.precondition_outputs(x, out, s), expected_out.numpy())
            np.testing.assert_array_equal(ours.precondition_noise(s), reference.precondition_noise(sigma).numpy())


def test_euler_pred_original_sample_replaces_the_denoised_estimate():
    ours, reference = build(EULER, {})
    set_both(ours, reference, 4)
    rng = np.random.default_rng(2)
    x, x0 = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t = ours.timesteps[1]
    ours.set_begin_index(1)
    reference.set_begin_index(1)
    got = ours.step(x0, t, x, pred_original_sample=x0)
    expected = reference.step(
        torch.from_numpy(x0), reference.timesteps[1], torch.from_numpy(x), pred_original_sample=torch.from_numpy(x0)
    )
    np.testing.assert_array_equal(got.prev_sample, expected.prev_sample.numpy())
    assert got.pred_original_sample is x0


@pytest.mark.parametrize("name", [EULER, DPM])
def test_float16_latents_stay_float16_and_the_network_input_matches_diffusers(name):
    """diffusers scales float16 latents in float32 and rounds once to float16; so does diffrt (bit-identical)."""
    ours, reference = build(name, {})
    set_both(ours, reference, 4)
    x = (np.random.default_rng(3).standard_normal(SHAPE) * 80).astype(np.float16)
    for i, t in enumerate(ours.timesteps):
        scaled = ours.scale_model_input(x, t)
        expected = reference.precondition_inputs(torch.from_numpy(x), reference.sigmas[i]).numpy()
        np.testing.assert_array_equal(scaled, expected)
        assert scaled.dtype == np.float16
        x = ours.step(stand_in_model(scaled, t).astype(np.float16), t, x, generator=0).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


@pytest.mark.parametrize("name", [EULER, DPM])
def test_add_noise_after_a_step_uses_the_current_step_as_in_diffusers(name):
    """Inpainting re-noises the known region after each step: with a begin index set, add_noise takes the sigma of
    the step about to run, whatever timesteps it is given."""
    ours, reference = build(name, {})
    set_both(ours, reference, 10)
    for side in (ours, reference):
        side.set_begin_index(3)
    rng = np.random.default_rng(8)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    x = ours.add_noise(image, noise, ours.timesteps[3:4])
    for i, x_ours, x_ref in run_loop(ours, reference, x, 0):
        assert_within_ulps(x_ours, x_ref, 2, f"{name} inpainting step {i}")
        expected = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), reference.timesteps[:2])
        np.testing.assert_array_equal(ours.add_noise(image, noise, ours.timesteps[:2]), expected.numpy())
        assert ours.step_index == reference.step_index == 4 + i
        if i == 2:
            break


# ----- plain diffusers (its own float32 rounding) ---------------------------------------------------------------
# Measured over every config in this file: schedules within PLAIN_TABLE_ULPS (torch's vectorised exp / log / pow are
# an ulp off in a few table entries; an ulp of sigma near 1 moves log(sigma) / 4 by several ulps of its small value),
# every step within 4.1e-7 (Euler) / 5.5e-7 (DPM-Solver) x max(|x|, 1): one-ulp scalar sqrt / exp / log in c_in,
# c_out and the solver weights.
PLAIN_TABLE_ULPS = 8
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels


PLAIN_CONFIGS = [{"sigma_schedule": s, "prediction_type": p} for s in SCHEDULES for p in PREDICTIONS]
PLAIN_DPM_CONFIGS = [
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "sigma_schedule": "exponential"},
    {"solver_order": 3, "lower_order_final": False, "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize(
    "name, config",
    [(EULER, c) for c in PLAIN_CONFIGS] + [(DPM, c) for c in PLAIN_CONFIGS + PLAIN_DPM_CONFIGS],
    ids=[f"euler-{i}" for i in ids(PLAIN_CONFIGS)] + [f"dpm-{i}" for i in ids(PLAIN_CONFIGS + PLAIN_DPM_CONFIGS)],
)
def test_plain_diffusers_within_measured_tolerance(name, config, steps):
    ours, reference = build(name, config, exact=False)
    for table in ("sigmas", "timesteps"):  # the 1000-step training schedules before set_timesteps
        assert max_ulps(getattr(ours, table), getattr(reference, table).numpy()) <= PLAIN_TABLE_ULPS
    set_both(ours, reference, steps, exact=False)
    assert max_ulps(ours.sigmas, reference.sigmas.numpy()) <= PLAIN_TABLE_ULPS
    assert max_ulps(ours.timesteps, reference.timesteps.numpy()) <= PLAIN_TABLE_ULPS
    ours.timesteps = reference.timesteps.numpy()  # the loop looks steps up by timestep: use diffusers' values
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    churn = {"s_churn": 1.0} if name == EULER else {}
    for i, x_ours, x_ref in run_loop(ours, reference, x, 0, exact=False, step_kwargs=churn):
        _close(x_ours, x_ref, f"{name} plain step {i} {config}", rtol=PLAIN_RTOL)


# ----- refusals -------------------------------------------------------------------------------------------------
def refused_by_diffusers(name: str, config: dict, steps: int = 4) -> bool:
    """Whether diffusers refuses ``config`` at construction, at set_timesteps or at its first step."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = getattr(diffusers, name).from_config(dict(config))
            reference.set_timesteps(steps)
            x = torch.ones(SHAPE)
            reference.step(x, reference.timesteps[0], x)
    except (ValueError, NotImplementedError, TypeError, ZeroDivisionError, UnboundLocalError):
        return True
    return False


EULER_REFUSED = [
    {"sigma_schedule": "linear"},
    {"prediction_type": "sample"},  # diffusers fails at the first step
    {"final_sigmas_type": "last"},
    {"sigma_min": None},
    {"sigma_min": 0.0, "sigma_schedule": "exponential"},
    {"rho": 0.0},
]


@pytest.mark.parametrize("bad", EULER_REFUSED, ids=ids(EULER_REFUSED))
def test_euler_refuses_what_diffusers_refuses(bad):
    assert refused_by_diffusers(EULER, bad)
    with pytest.raises(ConfigError):
        SCHEDULERS[EULER].from_config(bad)


@pytest.mark.parametrize(
    "arguments",
    [{}, {"num_inference_steps": 0}, {"num_inference_steps": 2.5}, {"sigmas": 0.5}],
    ids=["nothing", "zero-steps", "fractional-steps", "scalar-sigmas"],
)
def test_euler_refuses_bad_set_timesteps_arguments(arguments):
    with pytest.raises(ConfigError):
        SCHEDULERS[EULER].from_config({}).set_timesteps(**arguments)


def test_euler_refuses_an_integer_timestep_like_diffusers():
    ours, reference = build(EULER, {})
    set_both(ours, reference, 4)
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError):
        reference.step(torch.from_numpy(x), 0, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="integer"):
        ours.step(x, 0, x)


# ----- EDMDPMSolverMultistepScheduler ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
def test_dpm_sampling_matches_diffusers(sigma_schedule, prediction_type, steps):
    assert_sampling_parity(DPM, {"sigma_schedule": sigma_schedule, "prediction_type": prediction_type}, steps)


# diffusers' EDM third-order update has no SDE branch (test_dpm_sde_third_order_is_refused covers it)
SOLVERS = [
    {"algorithm_type": algorithm, "solver_order": order, "solver_type": solver_type}
    for algorithm in ("dpmsolver++", "sde-dpmsolver++")
    for order in (1, 2, 3)
    for solver_type in ("midpoint", "heun")
    if not (algorithm == "sde-dpmsolver++" and order == 3)
]
FINALS = [{}, {"final_sigmas_type": "sigma_min"}, {"lower_order_final": False}]


@pytest.mark.parametrize("steps", [4, 10, 25])  # 25 >= 15: lower_order_final no longer applies
@pytest.mark.parametrize("final", FINALS, ids=ids(FINALS))
@pytest.mark.parametrize("solver", SOLVERS, ids=ids(SOLVERS))
def test_dpm_solvers_match_diffusers(solver, final, steps):
    config = {**solver, **final}
    if final.get("final_sigmas_type") == "sigma_min" and ends_between_equal_sigmas(config, steps):
        assert_first_order_where_diffusers_returns_nan(config, steps)
    else:
        assert_sampling_parity(DPM, config, steps, seed=steps)


def ends_between_equal_sigmas(config: dict, steps: int) -> bool:
    """Whether diffusers' last step (of 3 or more) runs its heun / third-order weights at h = 0 (the final sigma is
    the last one)."""
    first_order_final = config.get("lower_order_final", True) and steps < 15 or config.get("euler_at_final")
    order = config.get("solver_order", 2)
    solver_type = config.get("solver_type", "midpoint")
    return steps > 2 and order > 1 and not first_order_final and (order == 3 or solver_type == "heun")


def assert_first_order_where_diffusers_returns_nan(config: dict, steps: int) -> None:
    """final_sigmas_type="sigma_min" ends with a step from sigma_min to sigma_min (h = 0 in float32). Every order's
    update tends to the first-order one there, which diffusers' first-order and midpoint updates compute; its heun /
    third-order weights compute 0 / 0, so diffusers returns NaN where diffrt steps at first order. Every earlier
    step matches to the bit."""
    ours, reference = build(DPM, config)
    set_both(ours, reference, steps)
    assert np.log(ours.sigmas[-1]) == np.log(ours.sigmas[-2])  # equal in float32 (exponential: sigmas an ulp apart)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    outputs = list(run_loop(ours, reference, x, 0))
    for i, x_ours, x_ref in outputs[:-1]:
        assert_within_ulps(x_ours, x_ref, 2, f"step {i} {config}")
    (_, last_ours, last_ref), (_, before, _) = outputs[-1], outputs[-2]
    assert np.isnan(last_ref).all()
    ratio = np.float32(ours.sigmas[-1]) / np.float32(ours.sigmas[-2])  # 1, or an ulp off it (exponential)
    np.testing.assert_array_equal(last_ours, ratio * before)


DPM_FIELDS = [
    {"euler_at_final": True, "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"euler_at_final": True, "solver_order": 3, "lower_order_final": False},
    {"sigma_schedule": "exponential", "solver_order": 3, "final_sigmas_type": "sigma_min", "euler_at_final": True},
    {"sigma_schedule": "exponential", "algorithm_type": "sde-dpmsolver++", "prediction_type": "v_prediction"},
    {"algorithm_type": "deis", "final_sigmas_type": "sigma_min"},  # diffusers runs "deis" as dpmsolver++
    {"solver_type": "logrho"},  # ... and logrho / bh1 / bh2 as midpoint
    {"solver_type": "bh2", "solver_order": 3},
    {"solver_order": 4},  # runs as third order, as in diffusers
    {"sigma_data": 0.6, "prediction_type": "v_prediction"},
    {"sigma_min": 0.03, "sigma_max": 14.6, "solver_order": 3},
    {"rho": 3.0},  # torch multiplies x ** 3 out
    {"rho": 2.0, "sigma_schedule": "karras"},
    {"rho": 5.5, "sigma_min": 0.01},
    {"num_train_timesteps": 40},
]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("extra", DPM_FIELDS, ids=ids(DPM_FIELDS))
def test_dpm_config_fields_match_diffusers(extra, steps):
    assert_sampling_parity(DPM, extra, steps)
    ours, reference = build(DPM, extra)
    assert ours.config.algorithm_type == reference.config.algorithm_type
    assert ours.config.solver_type == reference.config.solver_type


@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_dpm_schedule_before_set_timesteps_matches_diffusers(sigma_schedule, num_train_timesteps):
    ours, reference = build(DPM, {"sigma_schedule": sigma_schedule, "num_train_timesteps": num_train_timesteps})
    assert_schedule_equal(ours, reference)
    assert ours.num_inference_steps is reference.num_inference_steps is None


# Thresholding: ns.dynamic_threshold takes torch.quantile's float32 rank and lerp to the bit, so thresholded runs
# are bit-identical too (measured: 0 ulps; NumPy's float64 quantile had put the threshold an ulp off, 23 ulps).
THRESHOLDS = [
    {"sample_max_value": 1.5, "solver_order": 3},
    {"sample_max_value": 1.2, "dynamic_thresholding_ratio": 0.9, "algorithm_type": "sde-dpmsolver++"},
    {"sample_max_value": 1.0, "prediction_type": "v_prediction"},
]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("extra", THRESHOLDS, ids=ids(THRESHOLDS))
def test_dpm_thresholding_matches_diffusers(extra, steps):
    ours, reference = build(DPM, {"thresholding": True, **extra})
    set_both(ours, reference, steps)
    assert_schedule_equal(ours, reference)
    x = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32) * np.float32(reference.init_noise_sigma)
    for i, x_ours, x_ref in run_loop(ours, reference, x, 4):
        assert_within_ulps(x_ours, x_ref, 2, f"thresholding step {i} {extra}")


@pytest.mark.parametrize("sigma_schedule", SCHEDULES)
@pytest.mark.parametrize("solver", [{"solver_type": "heun"}, {"solver_order": 3}], ids=["heun", "third-order"])
def test_dpm_last_step_of_zero_log_snr_length_is_first_order(solver, sigma_schedule):
    config = {**solver, "final_sigmas_type": "sigma_min", "lower_order_final": False, "sigma_schedule": sigma_schedule}
    assert ends_between_equal_sigmas(config, 6)
    assert_first_order_where_diffusers_returns_nan(config, 6)


def test_dpm_sde_third_order_is_refused():
    """diffusers accepts sde-dpmsolver++ with solver_order=3 but fails at its first third-order step."""
    config = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    with pytest.raises(ConfigError, match="solver_order"):
        SCHEDULERS[DPM].from_config(config)
    reference = diffusers.EDMDPMSolverMultistepScheduler.from_config(config)
    reference.set_timesteps(10)
    x = torch.ones(SHAPE)
    with pytest.raises(UnboundLocalError):
        for t in reference.timesteps:
            x = reference.step(torch.zeros(SHAPE), t, x).prev_sample


DPM_REFUSED = [
    {"algorithm_type": "dpmsolver"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "deis"},  # diffusers checks the name as given against final_sigmas_type="zero"
    {"solver_type": "bh3"},
    {"sigma_schedule": "linear"},
    {"prediction_type": "sample"},  # diffusers fails at the first step
    {"final_sigmas_type": "last"},  # diffusers fails at set_timesteps
    {"sigma_max": None},
    {"sigma_min": -1.0, "sigma_schedule": "exponential"},
    {"rho": 0},
]


@pytest.mark.parametrize("bad", DPM_REFUSED, ids=ids(DPM_REFUSED))
def test_dpm_refuses_what_diffusers_refuses(bad):
    assert refused_by_diffusers(DPM, bad)
    with pytest.raises(ConfigError):
        SCHEDULERS[DPM].from_config(bad)


def test_dpm_refuses_a_step_before_set_timesteps_like_diffusers():
    ours, reference = build(DPM, {})
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        reference.step(torch.from_numpy(x), reference.timesteps[0], torch.from_numpy(x))
    with pytest.raises(ConfigError, match="set_timesteps"):
        ours.step(x, ours.timesteps[0], x)
    for bad in (None, 0, 2.5):
        with pytest.raises(ConfigError):
            ours.set_timesteps(bad)


@pytest.mark.parametrize("name", [EULER, DPM])
def test_step_counts_beyond_num_train_timesteps_are_accepted_as_in_diffusers(name):
    """EDM schedules are continuous: diffusers takes any step count, num_train_timesteps does not bound it."""
    assert_sampling_parity(name, {"num_train_timesteps": 10}, 16)
