"""FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler and FlowMatchLCMScheduler match diffusers:
timesteps and sigmas bit for bit (np.array_equal) for every schedule option, and every step of the sampling loop
within 2 float32 ulps (measured: 0, bit-identical, everywhere). Euler's and LCM's steps use only float32 +, -, *
(no transcendental functions), so plain diffusers matches to the bit; Heun's churn takes a 0-d sqrt, which torch
rounds faithfully but not always correctly, so those runs use ``correctly_rounded_scalars()`` and
``test_plain_diffusers_heun_churn_*`` holds untouched diffusers to a measured tolerance.
"""

import contextlib
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift
from parity import SHAPE, _close, shared_noise, stand_in_model
from scalar_rounding import correctly_rounded_scalars
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.flow_match_euler as fme
import diffrt.runtime.schedulers.flow_match_heun  # noqa: F401
import diffrt.runtime.schedulers.flow_match_lcm  # noqa: F401
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

EULER, HEUN, LCM = "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler"
FLUX = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
FLUX_MU = fme.calculate_shift(4096)  # a 1024 x 1024 Flux image: 64 x 64 latent tokens
# (config, set_timesteps keyword arguments): the schedule options of Euler and LCM
SCHEDULES = {
    "default": ({}, {}),
    "sd3-shift3": ({"shift": 3.0}, {}),
    "flux-exponential-mu": (FLUX, {"mu": FLUX_MU}),
    "linear-time-shift": ({**FLUX, "time_shift_type": "linear"}, {"mu": 1.7}),
    "shift-terminal": ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    "ltx-dynamic-terminal": ({"use_dynamic_shifting": True, "shift_terminal": 0.1}, {"mu": 2.05}),
    "karras": ({"shift": 3.0, "use_karras_sigmas": True}, {}),
    "exponential": ({"shift": 3.0, "use_exponential_sigmas": True}, {}),
    "beta": ({"shift": 3.0, "use_beta_sigmas": True}, {}),
    "karras-dynamic": ({**FLUX, "use_karras_sigmas": True}, {"mu": 0.8}),
    "invert-sigmas": ({"invert_sigmas": True}, {}),
    "train-500": ({"num_train_timesteps": 500, "shift": 2.0}, {}),
}
# explicit schedules (set_timesteps with no step count, or with a matching one)
CUSTOM = {
    "sigmas": ({"shift": 3.0}, {"sigmas": [1.0, 0.75, 0.5, 0.25]}),
    "sigmas-dynamic": (FLUX, {"sigmas": list(np.linspace(1.0, 1 / 6, 6)), "mu": FLUX_MU}),
    "sigmas-with-count": ({}, {"num_inference_steps": 3, "sigmas": [0.9, 0.5, 0.2]}),
    "sigmas-terminal-karras": ({"shift_terminal": 0.05, "use_karras_sigmas": True}, {"sigmas": [1.0, 0.6, 0.3]}),
    "timesteps": ({"shift": 3.0}, {"timesteps": [1000.0, 750.0, 500.0, 250.0]}),
    "sigmas-and-timesteps": ({"shift": 2.0}, {"sigmas": [1.0, 0.6, 0.2], "timesteps": [999.0, 600.0, 200.0]}),
    "timesteps-inverted": ({"invert_sigmas": True}, {"timesteps": [900.0, 500.0, 100.0]}),
    "sigmas-ending-at-zero": (FLUX, {"sigmas": [1.0, 0.5, 0.0], "mu": 1.0}),
    "timesteps-dynamic": (FLUX, {"timesteps": [999.0, 500.0, 20.0], "mu": 0.7}),
    "float32-array-exponential": ({"use_exponential_sigmas": True}, {"sigmas": np.array([1.0, 0.5, 0.2], np.float32)}),
}
# torch's 0-d sqrt(sigma_hat^2 - sigma^2) lands one ulp off the correctly rounded value for a few of the
# (shift 2, 20 steps) sigmas below; one ulp in that coefficient measured at most 2.6e-7 x max(|x|, 1) over the loop
PLAIN_RTOL = 4e-6  # several times what this host measures (see above): other CPUs run other torch kernels
# diffusers' own divide-by-zero warnings (1 / t at sigma 0, shift_terminal on one step), which diffrt silences
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")


def build(name: str, config: dict):
    return SCHEDULERS[name].from_config(dict(config)), getattr(diffusers, name).from_config(dict(config))


def set_both(ours, reference, **kwargs):
    reference.set_timesteps(**kwargs)
    ours.set_timesteps(**kwargs)
    assert_schedule_equal(ours, reference)


def assert_schedule_equal(ours, reference):
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, reference.sigmas.numpy())
    assert ours.timesteps.dtype == ours.sigmas.dtype == np.float32
    assert ours.num_inference_steps == getattr(reference, "num_inference_steps", None)


def run_loop(ours, reference, x, seed=0, step_kwargs=None, exact=True, dtype=np.float32):
    """Both sides denoise ``x`` from their begin index with one stand-in model and one noise stream."""
    step_kwargs = step_kwargs or {}
    rng = np.random.default_rng(seed)
    x_ours, x_ref = x.astype(dtype), torch.from_numpy(x.astype(dtype))
    start = reference.begin_index or 0
    rounding = correctly_rounded_scalars() if exact else contextlib.nullcontext()
    with shared_noise(reference, seed), rounding:
        for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps[start:], reference.timesteps[start:], strict=True)):
            out = stand_in_model(x_ours.astype(np.float32), float(t_ours)).astype(dtype)
            x_ours = ours.step(out, t_ours, x_ours, generator=rng, **step_kwargs).prev_sample
            out_ref = torch.from_numpy(stand_in_model(x_ref.float().numpy(), float(t_ref)).astype(dtype))
            x_ref = reference.step(out_ref, t_ref, x_ref, **step_kwargs).prev_sample
            assert x_ours.dtype == dtype
            yield i, x_ours, x_ref.numpy()


def assert_loop_parity(name, config, set_kwargs, seed=0, step_kwargs=None):
    ours, reference = build(name, config)
    assert_schedule_equal(ours, reference)  # the training tables too
    reference.set_timesteps(**set_kwargs)
    if np.isnan(reference.sigmas.numpy()).any():  # shift_terminal on a 1-step schedule: 0 / 0
        with pytest.raises(ConfigError, match="shift_terminal"):
            ours.set_timesteps(**set_kwargs)
        return
    ours.set_timesteps(**set_kwargs)
    assert_schedule_equal(ours, reference)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32)
    for i, got, ref in run_loop(ours, reference, x, seed, step_kwargs):
        assert_within_ulps(got, ref, 2, f"{name} step {i} {config} {set_kwargs}")


# ----- FlowMatchEulerDiscreteScheduler ----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_euler_sampling_matches_diffusers(schedule, steps):
    config, set_kwargs = schedule
    assert_loop_parity(EULER, config, {"num_inference_steps": steps, **set_kwargs})


@pytest.mark.parametrize("schedule", CUSTOM.values(), ids=CUSTOM.keys())
@pytest.mark.parametrize("name", [EULER, LCM])
def test_custom_sigmas_and_timesteps_match_diffusers(name, schedule):
    config, set_kwargs = schedule
    assert_loop_parity(name, config, set_kwargs, seed=4)


@pytest.mark.parametrize("schedule", ["default", "flux-exponential-mu", "shift-terminal", "invert-sigmas"])
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_euler_stochastic_sampling_draws_the_same_noise(schedule, steps):
    config, set_kwargs = SCHEDULES[schedule]
    assert_loop_parity(EULER, {**config, "stochastic_sampling": True}, {"num_inference_steps": steps, **set_kwargs})


def test_euler_ignores_churn_arguments_like_diffusers():
    churn = {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": 1e9, "s_noise": 1.3}
    assert_loop_parity(EULER, {"shift": 3.0}, {"num_inference_steps": 6}, step_kwargs=churn)


@pytest.mark.parametrize("mu", [1.3, np.float64(1.3)], ids=["float", "numpy-float64"])
def test_more_steps_than_training_steps_and_numpy_mu_match_diffusers(mu):
    ours, reference = build(EULER, {**FLUX, "time_shift_type": "linear", "num_train_timesteps": 100})
    set_both(ours, reference, num_inference_steps=150, mu=mu)


def test_set_shift_changes_the_next_schedule_like_diffusers():
    ours, reference = build(EULER, {"shift": 3.0})
    ours.set_shift(5.0)
    reference.set_shift(5.0)
    assert ours.shift == reference.shift == 5.0
    set_both(ours, reference, num_inference_steps=10)
    assert (ours.sigma_min, ours.sigma_max) == (reference.sigma_min, reference.sigma_max)


@pytest.mark.parametrize(
    "shift", [np.float64(2.7), np.float32(1.7), 2.7], ids=["numpy-float64", "numpy-float32", "float"]
)
@pytest.mark.parametrize("name", [EULER, LCM])
def test_set_shift_keeps_numpys_promotion_on_custom_sigmas(name, shift):
    # float32 custom sigmas shifted by a NumPy float64 shift are computed in float64 by diffusers (NumPy 2 promotion)
    ours, reference = build(name, {"shift_terminal": 0.1})
    ours.set_shift(shift)
    reference.set_shift(shift)
    sigmas = np.sort(np.random.default_rng(14).uniform(0.05, 1.0, 40))[::-1].tolist()
    set_both(ours, reference, sigmas=sigmas)


def test_sigma_bounds_from_a_shared_config_apply_like_diffusers():
    # diffusers keeps fields of other schedulers' configs and its karras rule reads sigma_min / sigma_max
    config = {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 0.9}
    ours, reference = build(EULER, config)
    set_both(ours, reference, num_inference_steps=8)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(
    "name, config", [(EULER, {}), (EULER, {"stochastic_sampling": True}), (LCM, {}), (HEUN, {})], ids=str
)
def test_half_precision_steps_match_diffusers(name, config, dtype):
    ours, reference = build(name, {"shift": 3.0, **config})
    set_both(ours, reference, num_inference_steps=6)
    x = np.random.default_rng(2).standard_normal(SHAPE, dtype=np.float32)
    for i, got, ref in run_loop(ours, reference, x, seed=2, dtype=dtype):
        np.testing.assert_array_equal(got, ref, err_msg=f"step {i}")


@pytest.mark.parametrize("stochastic", [False, True])
def test_per_token_timesteps_step_each_token_from_its_own_sigma(stochastic):
    ours, reference = build(EULER, {"shift": 3.0, "stochastic_sampling": stochastic})
    set_both(ours, reference, num_inference_steps=8)
    rng = np.random.default_rng(3)
    sample, velocity = rng.standard_normal((2, 16, 8), dtype=np.float32), rng.standard_normal((2, 16, 8), np.float32)
    # conditioning tokens sit at lower noise levels than the rest (LTX's conditioned frames)
    per_token = np.where(np.arange(16) < 5, ours.timesteps[5], ours.timesteps[2]).astype(np.float32)
    per_token = np.stack([per_token, np.roll(per_token, 3)])
    for k in range(2, 5):
        t = ours.timesteps[k]
        with shared_noise(reference, k):
            ref = reference.step(
                torch.from_numpy(velocity), torch.tensor(t), torch.from_numpy(sample),
                per_token_timesteps=torch.from_numpy(per_token),
            ).prev_sample.numpy()  # fmt: skip
        got = ours.step(velocity, t, sample, per_token_timesteps=per_token, generator=np.random.default_rng(k))
        assert_within_ulps(got.prev_sample, ref, 0, f"per-token step {k}")
        assert got.prev_sample.dtype == np.float32 and ours.step_index == reference.step_index


# ----- image-to-image: scale_noise and set_begin_index --------------------------------------------------------
def sd3_img2img_timesteps(reference, steps, strength):
    """diffusers' own SD3 / Flux image-to-image start (it sets the begin index on the scheduler)."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    holder = SimpleNamespace(scheduler=reference)
    return StableDiffusion3Img2ImgPipeline.get_timesteps(holder, steps, strength, "cpu")[0]


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("name, config", [(EULER, {"shift": 3.0}), (LCM, FLUX), (HEUN, {"shift": 3.0})], ids=str)
def test_img2img_scale_noise_and_begin_index_match_diffusers(name, config, strength):
    ours, reference = build(name, config)
    kwargs = {"num_inference_steps": 10, **({"mu": 1.1} if config.get("use_dynamic_shifting") else {})}
    set_both(ours, reference, **kwargs)
    ref_timesteps = sd3_img2img_timesteps(reference, 10, strength)
    start = len(ours.timesteps) - len(ref_timesteps)
    ours.set_begin_index(start)
    assert ours.begin_index == reference.begin_index
    rng = np.random.default_rng(7)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    first = ref_timesteps[:1].repeat(SHAPE[0])
    noisy_ref = reference.scale_noise(torch.from_numpy(image), first, torch.from_numpy(noise)).numpy()
    noisy = ours.scale_noise(image, first.numpy(), noise)
    assert_within_ulps(noisy, noisy_ref, 0, f"{name} scale_noise strength={strength}")
    for i, got, ref in run_loop(ours, reference, noisy_ref, seed=7):
        assert_within_ulps(got, ref, 2, f"{name} img2img step {i} strength={strength}")


def test_scale_noise_looks_up_each_items_timestep_without_a_begin_index():
    ours, reference = build(EULER, {"shift": 3.0})
    set_both(ours, reference, num_inference_steps=10)
    rng = np.random.default_rng(8)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t = reference.timesteps[[2, 7]]
    ref = reference.scale_noise(torch.from_numpy(image), t, torch.from_numpy(noise)).numpy()
    assert_within_ulps(ours.scale_noise(image, t.numpy(), noise), ref, 0, "per-item scale_noise")
    # on the training table too (training scripts noise with it before any set_timesteps)
    ours, reference = build(EULER, {"shift": 3.0})
    t = reference.timesteps[[0, 500]]
    ref = reference.scale_noise(torch.from_numpy(image), t, torch.from_numpy(noise)).numpy()
    assert_within_ulps(ours.scale_noise(image, t.numpy(), noise), ref, 0, "training-table scale_noise")


# ----- FlowMatchHeunDiscreteScheduler -------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("config", [{}, {"shift": 3.0}, {"num_train_timesteps": 500, "shift": 1.5}], ids=str)
def test_heun_sampling_matches_diffusers(config, steps):
    assert_loop_parity(HEUN, config, {"num_inference_steps": steps})


HEUN_CHURN = [
    {"s_churn": 1.0},
    {"s_churn": 10.0, "s_noise": 1.003},
    {"s_churn": 2.0, "s_tmin": 0.3, "s_tmax": 0.9},
]


@pytest.mark.parametrize("step_kwargs", HEUN_CHURN, ids=str)
def test_heun_churn_draws_the_same_noise_as_diffusers(step_kwargs):
    assert_loop_parity(HEUN, {"shift": 2.0}, {"num_inference_steps": 20}, seed=5, step_kwargs=step_kwargs)


@pytest.mark.parametrize("step_kwargs", HEUN_CHURN, ids=str)
def test_plain_diffusers_heun_churn_matches_within_scalar_rounding(step_kwargs):
    ours, reference = build(HEUN, {"shift": 2.0})
    set_both(ours, reference, num_inference_steps=20)
    x = np.random.default_rng(6).standard_normal(SHAPE, dtype=np.float32)
    for i, got, ref in run_loop(ours, reference, x, seed=5, step_kwargs=step_kwargs, exact=False):
        _close(got, ref, f"heun churn step {i}", rtol=PLAIN_RTOL)


def test_heun_scale_noise_fixes_the_step_index_like_diffusers():
    ours, reference = build(HEUN, {"shift": 3.0})
    set_both(ours, reference, num_inference_steps=5)
    rng = np.random.default_rng(9)
    image, noise = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
    t = reference.timesteps[3]
    ref = reference.scale_noise(torch.from_numpy(image), t, torch.from_numpy(noise)).numpy()
    assert_within_ulps(ours.scale_noise(image, ours.timesteps[3], noise), ref, 0, "heun scale_noise")
    assert ours.step_index == reference.step_index == 4  # the second copy of a repeated timestep


# ----- FlowMatchLCMScheduler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 8])
@pytest.mark.parametrize(
    "schedule", ["default", "sd3-shift3", "flux-exponential-mu", "linear-time-shift", "shift-terminal", "beta"]
)
def test_lcm_sampling_matches_diffusers(schedule, steps):
    config, set_kwargs = SCHEDULES[schedule]
    assert_loop_parity(LCM, config, {"num_inference_steps": steps, **set_kwargs}, seed=11)


def test_lcm_refuses_scale_factors_it_cannot_apply():
    with pytest.raises(ConfigError, match="scale_factors"):
        SCHEDULERS[LCM].from_config({"scale_factors": [1.5, 2.0]})
    with pytest.raises(ConfigError, match="upscale_mode"):
        SCHEDULERS[LCM].from_config({"upscale_mode": "lanczos"})
    ours = SCHEDULERS[LCM].from_config({"scale_factors": [], "upscale_mode": "nearest"})
    with pytest.raises(ConfigError, match="scale_factors"):
        ours.set_scale_factors([2.0], "bicubic")


# ----- calculate_shift, surface, refusals ---------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 4600, 6400])
@pytest.mark.parametrize("bounds", [{}, {"base_shift": 0.5, "max_shift": 1.16, "max_seq_len": 8192}], ids=str)
def test_calculate_shift_matches_diffusers(seq_len, bounds):
    assert fme.calculate_shift(seq_len, **bounds) == diffusers_calculate_shift(seq_len, **bounds)


@pytest.mark.parametrize("name", [EULER, HEUN, LCM])
def test_surface_matches_diffusers(name):
    ours, reference = build(name, {"shift": 2.0})
    assert ours.order == reference.order and ours._compatibles == tuple(reference._compatibles) == ()
    assert (ours.sigma_min, ours.sigma_max) == (reference.sigma_min, reference.sigma_max)
    assert len(ours) == len(reference) == 1000
    assert ours.init_noise_sigma == 1.0


@pytest.mark.parametrize(
    "name, config",
    [
        (EULER, {"use_karras_sigmas": True, "use_beta_sigmas": True}),
        (LCM, {"use_exponential_sigmas": True, "use_karras_sigmas": True}),
        (EULER, {"time_shift_type": "cosine"}),
        (LCM, {"time_shift_type": "quadratic"}),
    ],
    ids=str,
)
def test_config_refusals_match_diffusers(name, config):
    with pytest.raises(ValueError):
        getattr(diffusers, name).from_config(config)
    with pytest.raises(ConfigError):
        SCHEDULERS[name].from_config(config)


@pytest.mark.parametrize(
    "config, set_kwargs",
    [
        ({"use_dynamic_shifting": True}, {"num_inference_steps": 4}),  # mu missing
        ({}, {"sigmas": [1.0, 0.5], "timesteps": [1000.0, 700.0, 300.0]}),
        ({}, {"num_inference_steps": 3, "sigmas": [1.0, 0.5]}),
        ({}, {"num_inference_steps": 2, "timesteps": [1000.0, 700.0, 300.0]}),
    ],
    ids=str,
)
@pytest.mark.parametrize("name", [EULER, LCM])
def test_set_timesteps_refusals_match_diffusers(name, config, set_kwargs):
    ours, reference = build(name, config)
    with pytest.raises(ValueError):
        reference.set_timesteps(**set_kwargs)
    with pytest.raises(ConfigError):
        ours.set_timesteps(**set_kwargs)


@pytest.mark.parametrize(
    "config, set_kwargs",
    [
        ({"use_exponential_sigmas": True}, {"sigmas": [1.0, 0.5, 0.0]}),  # log(0)
        ({**FLUX, "time_shift_type": "linear", "use_exponential_sigmas": True}, {"num_inference_steps": 8, "mu": -0.1}),
        (
            {**FLUX, "time_shift_type": "linear", "use_exponential_sigmas": True, "num_train_timesteps": 100},
            {"timesteps": [150.0, 90.0, 10.0], "mu": 0.2},  # 1 / t - 1 < 0 at t = 1.5 turns the first sigma negative
        ),
    ],
    ids=["sigmas-ending-at-zero", "negative-linear-mu", "timesteps-past-training"],
)
@pytest.mark.parametrize("name", [EULER, LCM])
def test_exponential_sigmas_need_positive_bounds_like_diffusers(name, config, set_kwargs):
    ours, reference = build(name, config)
    with pytest.raises(ValueError, match="math domain"):
        reference.set_timesteps(**set_kwargs)
    with pytest.raises(ConfigError, match="use_exponential_sigmas"):
        ours.set_timesteps(**set_kwargs)


@pytest.mark.parametrize("name", [EULER, HEUN, LCM])
def test_step_refusals(name):
    ours, reference = build(name, {})
    x = np.zeros(SHAPE, np.float32)
    if name != HEUN:  # Heun requires num_inference_steps, as diffusers' does
        with pytest.raises(ConfigError):  # diffusers fails with a TypeError deep inside
            ours.set_timesteps()
    set_both(ours, reference, num_inference_steps=2)
    with pytest.raises(ValueError, match="integer"):
        reference.step(torch.from_numpy(x), 1, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="integer"):
        ours.step(x, 1, x)
    with pytest.raises(ConfigError):  # not on the schedule (diffusers: IndexError)
        ours.step(x, np.float32(123.25), x)
    for t in ours.timesteps:
        ours.step(x, t, x)
    with pytest.raises(ConfigError, match="past the end"):  # diffusers: IndexError
        ours.step(x, ours.timesteps[-1], x)


def test_heun_half_precision_churn_matches_diffusers():
    ours, reference = build(HEUN, {"shift": 3.0})
    set_both(ours, reference, num_inference_steps=6)
    x = np.random.default_rng(12).standard_normal(SHAPE, dtype=np.float32)
    churn = {"s_churn": 1.0, "s_noise": 1.003}
    for i, got, ref in run_loop(ours, reference, x, seed=12, step_kwargs=churn, dtype=np.float16):
        np.testing.assert_array_equal(got, ref, err_msg=f"step {i}")


@pytest.mark.parametrize("name", [EULER, HEUN])
def test_half_precision_scale_noise_matches_diffusers(name):
    ours, reference = build(name, {"shift": 3.0})
    set_both(ours, reference, num_inference_steps=6)
    rng = np.random.default_rng(13)
    image, noise = rng.standard_normal(SHAPE).astype(np.float16), rng.standard_normal(SHAPE).astype(np.float16)
    t = reference.timesteps[2:3].repeat(SHAPE[0]) if name == EULER else reference.timesteps[2]
    ref = reference.scale_noise(torch.from_numpy(image), t, torch.from_numpy(noise)).numpy()
    got = ours.scale_noise(image, t.numpy(), noise)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, ref)
