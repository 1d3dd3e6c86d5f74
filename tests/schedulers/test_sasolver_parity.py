"""SASolverScheduler matches diffusers across its config space, drawing the same noise.

SA-Solver builds every step's coefficients from float32 scalar exp / log / sqrt, which torch rounds through MKL
(faithfully, not always correctly; see scalar_rounding.py). The sweep therefore runs diffusers inside
``correctly_rounded_scalars()`` and holds every step within 2 ulps (measured: 0, bit-identical, in every config
below); ``test_plain_diffusers_*`` runs diffusers untouched, within the tolerance that one-ulp coefficients explain.
"""

import contextlib

import diffusers
import numpy as np
import pytest
import torch
from parity import SD_BASE, SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps, max_ulps

import diffrt.runtime.schedulers.sasolver as sasolver
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import noise_schedule as ns

NAME = "SASolverScheduler"
SIGMA_SCHEDULES = ({}, {"use_karras_sigmas": True}, {"use_exponential_sigmas": True}, {"use_beta_sigmas": True})
# Plain diffusers (MKL-rounded scalars) against diffrt: measured at most 6.6e-7 x max(|x|, 1) over the sweep below.
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels


def build(config: dict):
    """(diffrt, diffusers) schedulers from one config."""
    return sasolver.SASolverScheduler.from_config(dict(config)), diffusers.SASolverScheduler.from_config(dict(config))


def run_loop(ours, reference, x: np.ndarray, seed: int, exact: bool):
    """Both sides denoise ``x`` over diffusers' timesteps from their begin index; yields (i, ours, diffusers)."""
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    start = reference.begin_index or 0
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)):
            x_ours = ours.step(stand_in_model(x_ours, t_ours), t_ours, x_ours, generator=rng).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.numpy(), float(t_ref)))
            x_ref = reference.step(out_ref, t_ref, x_ref).prev_sample
            yield i, x_ours, x_ref.numpy()


def assert_sasolver_parity(config: dict, steps: int, seed: int = 0, exact: bool = True) -> None:
    """Same timesteps and sigmas, then every step of the sampling loop within 2 ulps (``exact``) or PLAIN_RTOL.
    Where the first timestep repeats (cosine betas with resampled sigmas), diffusers starts at its second copy and
    fails on the last step; there every earlier step must match and diffrt must refuse the last one (ConfigError)."""
    ours, reference = build(config)
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    loop = run_loop(ours, reference, x, seed, exact)
    if steps > 1 and reference.timesteps[0] == reference.timesteps[1]:
        ran = 0
        with pytest.raises(ConfigError, match="past the end"):
            for i, x_ours, x_ref in loop:
                assert_within_ulps(x_ours, x_ref, 2, f"step {i + 1}/{steps} {config}")
                ran = i + 1
        assert ran == steps - 1
        with pytest.raises((IndexError, AssertionError)):  # sigma index past the end, or a predictor order of 0
            reference.step(torch.zeros(SHAPE), reference.timesteps[-1], torch.zeros(SHAPE))
        return
    for i, x_ours, x_ref in loop:
        what = f"step {i + 1}/{steps} {config}"
        if exact:
            assert_within_ulps(x_ours, x_ref, 2, what)
        else:
            _close(x_ours, x_ref, what, rtol=PLAIN_RTOL)
        assert x_ours.dtype == np.float32


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("sigmas", SIGMA_SCHEDULES, ids=lambda s: next(iter(s), "default"))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_sampling_matches_diffusers(spacing, prediction_type, sigmas, steps):
    config = {**SD_BASE, "timestep_spacing": spacing, "prediction_type": prediction_type, **sigmas}
    assert_sasolver_parity(config, steps)


ORDERS = [(p, c) for p in range(1, 5) for c in range(1, 5)]


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("predictor_order, corrector_order", ORDERS, ids=[f"p{p}c{c}" for p, c in ORDERS])
@pytest.mark.parametrize("algorithm_type", ["data_prediction", "noise_prediction"])
def test_orders_and_algorithms_match_diffusers(algorithm_type, predictor_order, corrector_order, steps):
    config = {
        **SD_BASE,
        "algorithm_type": algorithm_type,
        "predictor_order": predictor_order,
        "corrector_order": corrector_order,
    }
    assert_sasolver_parity(config, steps, seed=steps)


TAU_FUNCTIONS = {
    "ode": lambda t: 0,
    "sde": lambda t: 1,
    "half": lambda t: 0.5,
    "varying": lambda t: 0.3 if t > 500 else 1.7,
}


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("algorithm_type", ["data_prediction", "noise_prediction"])
@pytest.mark.parametrize("tau", TAU_FUNCTIONS, ids=str)
def test_tau_functions_match_diffusers(tau, algorithm_type, steps):
    config = {**SD_BASE, "algorithm_type": algorithm_type, "tau_func": TAU_FUNCTIONS[tau], "predictor_order": 3}
    assert_sasolver_parity(config, steps, seed=3)


@pytest.mark.parametrize(
    "extra",
    [
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0},
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "predictor_order": 3, "corrector_order": 3},
        {"use_flow_sigmas": True, "prediction_type": "epsilon"},
        {"thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
        {"thresholding": True},
        {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"},
        {"lambda_min_clipped": -5.1, "timestep_spacing": "trailing", "algorithm_type": "noise_prediction"},
        {"lower_order_final": False, "predictor_order": 3, "corrector_order": 3},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "use_exponential_sigmas": True},
        {"beta_schedule": "squaredcos_cap_v2", "use_beta_sigmas": True},
        {"trained_betas": np.linspace(1e-4, 2e-2, 1000).tolist()},
        {"num_train_timesteps": 500, "timestep_spacing": "leading"},
        {"steps_offset": 0, "timestep_spacing": "leading"},
    ],
    ids=lambda e: ",".join(f"{k}={'<list>' if isinstance(v, list) else v}" for k, v in e.items()),
)
@pytest.mark.parametrize("steps", [4, 25])
def test_config_fields_match_diffusers(extra, steps):
    assert_sasolver_parity({**SD_BASE, **extra}, steps)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"timestep_spacing": "leading"},
        {"algorithm_type": "noise_prediction", "predictor_order": 3, "corrector_order": 4},
        {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
        {"tau_func": TAU_FUNCTIONS["varying"]},
    ],
    ids=lambda e: ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in e.items()) or "default",
)
def test_plain_diffusers_matches_within_scalar_rounding(extra, steps):
    assert_sasolver_parity({**SD_BASE, **extra}, steps, exact=False)


@pytest.mark.parametrize("begin_index", [0, 7, 24])
@pytest.mark.parametrize("algorithm_type", ["data_prediction", "noise_prediction"])
def test_img2img_start_and_add_noise_match_diffusers(algorithm_type, begin_index):
    config = {**SD_BASE, "algorithm_type": algorithm_type, "predictor_order": 3}
    ours, reference = build(config)
    reference.set_timesteps(25)
    ours.set_timesteps(25)
    reference.set_begin_index(begin_index)
    ours.set_begin_index(begin_index)
    rng = np.random.default_rng(5)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    first = reference.timesteps[begin_index : begin_index + 1].repeat(SHAPE[0])
    noisy_ref = reference.add_noise(torch.from_numpy(image), torch.from_numpy(noise), first).numpy()
    noisy = ours.add_noise(image, noise, np.repeat(ours.timesteps[begin_index : begin_index + 1], SHAPE[0]))
    assert_within_ulps(noisy, noisy_ref, 2, "add_noise")
    for i, x_ours, x_ref in run_loop(ours, reference, noisy_ref, 5, exact=True):
        assert_within_ulps(x_ours, x_ref, 2, f"img2img step {i} from {begin_index}")


def test_a_timestep_off_the_schedule_runs_the_last_step_like_diffusers():
    ours, reference = build(SD_BASE)
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    with shared_noise(reference, 0), correctly_rounded_scalars():
        ref = reference.step(torch.from_numpy(x), 5, torch.from_numpy(x)).prev_sample.numpy()
    got = ours.step(x, 5, x, generator=np.random.default_rng(0)).prev_sample
    assert ours.step_index == reference.step_index == 10
    assert_within_ulps(got, ref, 2, "off-schedule timestep")


def test_float16_in_float16_out():
    ours = sasolver.SASolverScheduler.from_config(SD_BASE)
    ours.set_timesteps(4)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float16)
    for t in ours.timesteps:
        x = ours.step(stand_in_model(x, t).astype(np.float16), t, x, generator=0).prev_sample
        assert x.dtype == np.float16 and np.isfinite(x).all()


@pytest.mark.parametrize(
    "bad",
    [
        {"algorithm_type": "dpmsolver++"},
        {"beta_schedule": "sigmoid"},
        {"use_karras_sigmas": True, "use_beta_sigmas": True},
        {"timestep_spacing": "uniform"},
    ],
    ids=str,
)
def test_refusals_match_diffusers(bad):
    with pytest.raises((ValueError, NotImplementedError)):
        reference = diffusers.SASolverScheduler.from_config({**SD_BASE, **bad})
        reference.set_timesteps(10)
    with pytest.raises(ConfigError):
        sasolver.SASolverScheduler.from_config({**SD_BASE, **bad}).set_timesteps(10)


@pytest.mark.parametrize(
    "bad, model_channels",
    [
        ({"prediction_type": "bogus"}, 4),  # ValueError at the first step
        ({"algorithm_type": "noise_prediction", "prediction_type": "flow_prediction"}, 4),  # ValueError at step
        ({"algorithm_type": "noise_prediction", "thresholding": True}, 4),  # indexes alpha_t with None: RuntimeError
        ({"variance_type": "learned_range"}, 8),  # keeps 3 channels, draws noise of 8: RuntimeError
        ({"predictor_order": 5}, 4),  # AssertionError once the history holds 5 outputs
        ({"corrector_order": 0}, 4),  # AssertionError at the first step
        ({"tau_func": "sde"}, 4),  # TypeError: not callable
    ],
    ids=str,
)
def test_configs_diffusers_fails_on_mid_run_are_refused_up_front(bad, model_channels):
    reference = diffusers.SASolverScheduler.from_config({**SD_BASE, **bad})
    reference.set_timesteps(25)
    x = torch.zeros(SHAPE)
    with pytest.raises((ValueError, RuntimeError, AssertionError, TypeError)):
        for t in reference.timesteps:
            x = reference.step(torch.ones((SHAPE[0], model_channels, *SHAPE[2:])), t, x).prev_sample
    with pytest.raises(ConfigError):
        sasolver.SASolverScheduler.from_config({**SD_BASE, **bad})


def test_step_before_set_timesteps_and_bad_step_counts_are_refused():
    ours = sasolver.SASolverScheduler.from_config(SD_BASE)
    with pytest.raises(ConfigError, match="set_timesteps"):
        ours.step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))
    for bad in (None, 0, 1001, 2.5):
        with pytest.raises(ConfigError, match="num_inference_steps"):
            ours.set_timesteps(bad)


def _torch_op(op):
    def run(x):
        return op(torch.from_numpy(np.atleast_1d(np.asarray(x, dtype=np.float32)).copy())).numpy().reshape(np.shape(x))

    return run


BETAS = (
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": np.linspace(1e-4, 2e-2, 1000).tolist()},
)


@pytest.mark.parametrize("betas", BETAS, ids=lambda b: next(iter(b.values())) if "beta_schedule" in b else "trained")
def test_training_tables_identical_given_torch_sqrt_and_log(betas, monkeypatch):
    # torch's vector sqrt is one ulp low for ~0.6% of entries (see test_schedules_exact); given it (the noise_schedule
    # hooks), every table diffusers builds is identical, the lambda_min_clipped search table included
    ours, reference = build(betas)
    assert max_ulps(ours.alpha_t, reference.alpha_t.numpy()) <= 1
    assert max_ulps(ours.sigmas, reference.sigmas.numpy()) <= 1
    monkeypatch.setattr(ns, "torch_sqrt32", _torch_op(torch.sqrt))
    monkeypatch.setattr(ns, "torch_log32", _torch_op(torch.log))
    ours, reference = build(betas)
    for table in ("betas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t", "sigmas"):
        np.testing.assert_array_equal(getattr(ours, table), getattr(reference, table).numpy(), err_msg=table)


def test_surface_matches_diffusers():
    ours, reference = build(SD_BASE)
    assert ours.order == reference.order and ours.init_noise_sigma == reference.init_noise_sigma
    assert set(ours._compatibles) == set(reference._compatibles)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.tau_func(200) == reference.tau_func(200) == 1 and ours.tau_func(801) == reference.tau_func(801) == 0
    x = np.ones(SHAPE, np.float32)
    assert ours.scale_model_input(x, 999) is x
