"""CogVideoXDDIMScheduler and CogVideoXDPMScheduler match diffusers, driven as diffusers' CogVideoX pipelines drive
them: DDIM with ``step(noise_pred, t, latents, eta=, generator=)``, DPM with the previous x0 estimate and the
previous timestep handed back in, both sides drawing the DPM noise from one NumPy stream.

Rounding. With ``scaled_linear`` betas (CogVideoX's own configs) diffusers keeps the table in float64 and every
sample below is bit-identical. Float32 tables (``linear``, ``squaredcos_cap_v2``, ``trained_betas``) put torch's
float32 ``sqrt`` / ``exp`` / ``log`` / ``expm1`` in the step coefficients, and torch does not round those correctly
(sqrt lands an ulp low for ~0.6% of inputs, exp for ~1.4%); diffrt rounds correctly. The ``torch_rounding`` fixture
swaps torch's own float32 kernels into the noise_schedule helpers, and then every sample is again bit-identical:
everything built on those four functions is exact. Without it (``test_real_rounding_...``) the last-bit coefficient
differences reach 9.1e-7 of the sample's scale after 50 steps (measured), so that test uses rtol 2e-6.
"""

import importlib
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from parity import SHAPE, _close, config_id, shared_noise, stand_in_model
from ulps import assert_within_ulps

import diffrt.runtime.schedulers.cogvideox_ddim  # noqa: F401  (registers CogVideoXDDIMScheduler)
import diffrt.runtime.schedulers.cogvideox_dpm  # noqa: F401  (registers CogVideoXDPMScheduler)
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS
from diffrt.runtime.schedulers import noise_schedule as ns
from diffrt.runtime.schedulers.base import KARRAS_SCHEDULERS

DDIM, DPM = "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"
NAMES = (DDIM, DPM)
# The shape of CogVideoX's published scheduler configs: v-prediction on a zero-terminal-SNR table, trailing spacing.
COGVIDEOX = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
ULPS = 2


@pytest.fixture
def torch_rounding(monkeypatch):
    """Make the float32 helpers round as torch's CPU kernels do (see the module docstring)."""

    def torch_op(op):
        return lambda x: op(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()

    for name, op in [("sqrt", torch.sqrt), ("log", torch.log), ("exp", torch.exp), ("expm1_", torch.expm1)]:
        monkeypatch.setattr(ns, f"torch_{name}32", torch_op(op))


def build_pair(name: str, config: dict, steps: int):
    reference = getattr(diffusers, name).from_config(dict(config))
    ours = SCHEDULERS[name].from_config(dict(config))
    reference.set_timesteps(steps)
    ours.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())
    assert ours.timesteps.dtype == np.int64
    return ours, reference


def pipeline_loop(ours, reference, start=0, x_init=None, seed=0, back=1, rng=None, **step_kwargs):
    """Denoise on both sides over ``timesteps[start:]`` as pipeline_cogvideox.py does; yields (i, ours, diffusers)
    after every step. The DPM gets the x0 estimate made ``back`` steps ago and that step's timestep (the pipeline:
    the previous step's, back = 1; none at the first step)."""
    rng = np.random.default_rng(seed) if rng is None else rng
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE, dtype=np.float32) if x_init is None else x_init
    x_ours, x_ref = x.copy(), torch.from_numpy(x.copy())
    x0_ours, x0_ref = [], []
    t_ours, t_ref = ours.timesteps[start:], reference.timesteps[start:]
    with shared_noise(reference, seed):
        for i, (t, t_r) in enumerate(zip(t_ours, t_ref, strict=True)):
            out = stand_in_model(ours.scale_model_input(x_ours, t), t)
            out_ref = torch.from_numpy(stand_in_model(reference.scale_model_input(x_ref, t_r).numpy(), float(t_r)))
            if isinstance(ours, SCHEDULERS[DPM]):
                made = i - back
                old, old_r, t_back, t_back_r = (
                    (x0_ours[made], x0_ref[made], t_ours[made], t_ref[made]) if made >= 0 else (None,) * 4
                )
                x_ours, x0 = ours.step(out, old, t, t_back, x_ours, generator=rng, **step_kwargs)
                x_ref, x0_r = reference.step(out_ref, old_r, t_r, t_back_r, x_ref, generator=None, **step_kwargs)
                x0_ours.append(x0)
                x0_ref.append(x0_r)
            else:
                x_ours = ours.step(out, t, x_ours, generator=rng, **step_kwargs).prev_sample
                x_ref = reference.step(out_ref, t_r, x_ref, generator=None, return_dict=False, **step_kwargs)[0]
            yield i, x_ours, x_ref.numpy()


def assert_loop_parity(name: str, config: dict, steps: int, ulps: int = ULPS, **loop_kwargs) -> None:
    ours, reference = build_pair(name, config, steps)
    for i, x_ours, x_ref in pipeline_loop(ours, reference, **loop_kwargs):
        assert x_ours.dtype == np.float32
        assert_within_ulps(x_ours, x_ref, ulps, f"{name} step {i}/{steps} {config}")


# ----- sampling parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("name", NAMES)
def test_sampling_matches_diffusers_bit_for_bit(name, spacing, prediction_type, steps):
    assert_loop_parity(name, {"timestep_spacing": spacing, "prediction_type": prediction_type}, steps)


@pytest.mark.parametrize(
    "extra",
    [
        COGVIDEOX,
        {**COGVIDEOX, "snr_shift_scale": 1.0},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "linear", **COGVIDEOX},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
        {"snr_shift_scale": 1.7, "beta_schedule": "linear"},
        {"snr_shift_scale": 0.5},
        {"set_alpha_to_one": False},
        {"set_alpha_to_one": False, "timestep_spacing": "trailing", "beta_schedule": "linear"},
        {"steps_offset": 1},
        {"timestep_spacing": "linspace", "steps_offset": 3},  # steps_offset only shifts leading spacing
        {"num_train_timesteps": 500},
        # fields diffusers declares and never reads: x0 is not clipped however tight the range
        {"clip_sample": True, "clip_sample_range": 0.1, "sample_max_value": 0.1},
        {"clip_sample": False},
    ],
    ids=config_id,
)
@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("name", NAMES)
def test_config_fields_match_diffusers_bit_for_bit(name, extra, steps, torch_rounding):
    assert_loop_parity(name, extra, steps, seed=steps)


@pytest.mark.parametrize("extra", [{"beta_schedule": "linear"}, {"beta_schedule": "squaredcos_cap_v2"}], ids=config_id)
@pytest.mark.parametrize("name", NAMES)
def test_real_rounding_of_float32_tables_stays_within_2e_6(name, extra):
    ours, reference = build_pair(name, extra, 50)
    for i, x_ours, x_ref in pipeline_loop(ours, reference):
        _close(x_ours, x_ref, f"{name} step {i} {extra}", rtol=4e-6)


@pytest.mark.parametrize("name", NAMES)
def test_video_latents_of_any_layout_match(name):
    """(batch, frames, channels, height, width) latents, as the CogVideoX transformer takes them."""
    ours, reference = build_pair(name, COGVIDEOX, 6)
    x = np.random.default_rng(3).standard_normal((1, 3, 4, 6, 5), dtype=np.float32)
    for i, x_ours, x_ref in pipeline_loop(ours, reference, x_init=x, seed=3):
        assert_within_ulps(x_ours, x_ref, ULPS, f"{name} video step {i}")


# ----- tables and the forward process -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [{}, {"snr_shift_scale": 1.0}, {"beta_schedule": "linear"}, {"beta_schedule": "squaredcos_cap_v2"}],
    ids=config_id,
)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alpha_bar_table_matches_diffusers(extra, zero_snr, torch_rounding):
    config = {**extra, "rescale_betas_zero_snr": zero_snr}
    ours, reference = build_pair(DDIM, config, 10)
    table = reference.alphas_cumprod.numpy()
    assert ours.alphas_cumprod.dtype == table.dtype  # float64 for scaled_linear, float32 otherwise
    if table.dtype == np.float64 and zero_snr:
        # torch's float64 sqrt is not correctly rounded either (~0.7% of inputs one ulp off, measured): 4 of the
        # 1000 entries differ in the last float64 bit, far below anything float32 samples can see
        np.testing.assert_allclose(ours.alphas_cumprod, table, rtol=1e-15, atol=0)
    else:
        np.testing.assert_array_equal(ours.alphas_cumprod, table)
    assert float(ours.final_alpha_cumprod) == float(reference.final_alpha_cumprod)


@pytest.mark.parametrize("extra", [{}, COGVIDEOX, {"beta_schedule": "linear"}], ids=config_id)
@pytest.mark.parametrize("name", NAMES)
def test_add_noise_and_velocity_match_diffusers_at_every_timestep(name, extra, torch_rounding):
    ours, reference = build_pair(name, extra, 4)
    rng = np.random.default_rng(5)
    timesteps = np.arange(1000)
    x0, noise = (rng.standard_normal((1000, 2, 3), dtype=np.float32) for _ in range(2))
    args_ref = (torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(timesteps))
    assert_within_ulps(ours.add_noise(x0, noise, timesteps), reference.add_noise(*args_ref).numpy(), 0, "add_noise")
    velocity = reference.get_velocity(*args_ref).numpy()
    assert_within_ulps(ours.get_velocity(x0, noise, timesteps), velocity, 0, "get_velocity")


def video2video_timesteps_reference(reference, steps: int, strength: float):
    """diffusers' own video-to-video schedule choice, taken from its pipeline class."""
    holder = SimpleNamespace(scheduler=reference)
    pipeline = diffusers.CogVideoXVideoToVideoPipeline
    return pipeline.get_timesteps(holder, steps, reference.timesteps, strength, "cpu")


@pytest.mark.parametrize("strength", [0.3, 0.8, 1.0])
@pytest.mark.parametrize("name", NAMES)
def test_video_to_video_entry_matches_diffusers(name, strength):
    """Same start for ``strength``, same noised video at its first timestep, and the loop from there, where the
    DPM's first step has no previous x0 or timestep (the pipeline slices its timesteps first)."""
    ours, reference = build_pair(name, COGVIDEOX, 20)
    ref_timesteps, _ = video2video_timesteps_reference(reference, 20, strength)
    our_timesteps = ours.set_timesteps_for_strength(20, strength)
    np.testing.assert_array_equal(our_timesteps, ref_timesteps.numpy())
    rng = np.random.default_rng(6)
    video, noise = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(2))
    first = np.repeat(our_timesteps[:1], SHAPE[0])
    noisy = reference.add_noise(torch.from_numpy(video), torch.from_numpy(noise), torch.from_numpy(first)).numpy()
    assert_within_ulps(ours.add_noise(video, noise, first), noisy, ULPS, "add_noise")
    start = 20 - len(our_timesteps)
    for i, x_ours, x_ref in pipeline_loop(ours, reference, start=start, x_init=noisy, seed=6):
        assert_within_ulps(x_ours, x_ref, ULPS, f"{name} video2video step {i} strength={strength}")


# ----- step arguments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_eta_and_clipped_model_output_are_ignored_like_diffusers(name):
    """The pipelines pass ``eta`` because DDIM takes it; both CogVideoX schedulers accept it and ignore it."""
    plain = list(pipeline_loop(*build_pair(name, COGVIDEOX, 5), seed=8))
    for i, x_ours, x_ref in pipeline_loop(
        *build_pair(name, COGVIDEOX, 5), seed=8, eta=1.0, use_clipped_model_output=True
    ):
        np.testing.assert_array_equal(x_ours, plain[i][1])
        assert_within_ulps(x_ours, x_ref, ULPS, f"{name} step {i} with eta")


def test_ddim_ignores_variance_noise_like_diffusers():
    ours, reference = build_pair(DDIM, COGVIDEOX, 4)
    x = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)
    t = ours.timesteps[1]
    given = np.full(SHAPE, 5.0, np.float32)
    ref = reference.step(torch.from_numpy(x), t, torch.from_numpy(x), eta=1.0, variance_noise=torch.from_numpy(given))
    out = ours.step(x, t, x, eta=1.0, variance_noise=given)
    np.testing.assert_array_equal(out.prev_sample, ours.step(x, t, x).prev_sample)
    assert_within_ulps(out.prev_sample, ref.prev_sample.numpy(), ULPS, "prev_sample")
    assert_within_ulps(out.pred_original_sample, ref.pred_original_sample.numpy(), ULPS, "pred_original_sample")


@pytest.mark.parametrize("back", [2, 3])
def test_dpm_second_order_uses_the_given_timestep_back_like_diffusers(back):
    """``timestep_back`` is where ``old_pred_original_sample`` was made; any earlier timestep is honoured."""
    assert_loop_parity(DPM, COGVIDEOX, 8, back=back, seed=10)


def test_dpm_draws_as_many_noises_as_diffusers():
    """Two draws per second-order step, the first unused, as diffusers draws them: the streams stay in step."""
    ours, reference = build_pair(DPM, {}, 6)
    rng = np.random.default_rng(0)
    module = importlib.import_module(type(reference).__module__)
    for i, _, _ in pipeline_loop(ours, reference, rng=rng):
        if i == 5:  # still inside the loop's shared stream
            next_ref = module.randn_tensor((3,)).numpy()
    fresh = np.random.default_rng(0)
    fresh.standard_normal((1 + 2 * 4 + 1) * int(np.prod(SHAPE)), dtype=np.float32)  # first, middle, last steps
    expected = fresh.standard_normal(3, dtype=np.float32)
    np.testing.assert_array_equal(rng.standard_normal(3, dtype=np.float32), expected)
    np.testing.assert_array_equal(next_ref, expected)


def test_dpm_with_an_int_seed_still_draws_two_different_noises():
    """An int seed makes one Generator per call, not one per draw: the used (second) noise is not the first."""
    ours = SCHEDULERS[DPM]()
    ours.set_timesteps(4)
    x = np.zeros(SHAPE, np.float32)
    t, t_back = ours.timesteps[1], ours.timesteps[0]
    first_order = ours.step(x, None, t, None, x, generator=7).prev_sample
    second_order = ours.step(x, x, t, t_back, x, generator=7).prev_sample
    assert not np.array_equal(first_order, second_order)  # x0 = old x0 = 0: only the noise differs


@pytest.mark.parametrize("name", NAMES)
def test_float16_latents_stay_float16(name):
    ours, _ = build_pair(name, COGVIDEOX, 4)
    x = np.random.default_rng(11).standard_normal(SHAPE, dtype=np.float32)
    old = None
    for i, t in enumerate(ours.timesteps):
        out = stand_in_model(x, t).astype(np.float16)
        if name == DPM:
            step = ours.step(out, old, t, ours.timesteps[i - 1] if i else None, x.astype(np.float16), generator=0)
            old = step.pred_original_sample
        else:
            step = ours.step(out, t, x.astype(np.float16))
        assert step.prev_sample.dtype == np.float16
        x = step.prev_sample.astype(np.float32)
    assert np.isfinite(x).all()


# ----- surface and refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_surface_matches_diffusers(name):
    ours, reference = build_pair(name, {}, 10)
    assert ours.order == reference.order == 1
    assert ours.init_noise_sigma == reference.init_noise_sigma == 1.0
    assert set(type(ours)._compatibles) == set(type(reference)._compatibles) == set(KARRAS_SCHEDULERS)
    assert len(ours) == len(reference) == 1000
    fresh = SCHEDULERS[name]()
    np.testing.assert_array_equal(fresh.timesteps, getattr(diffusers, name)().timesteps.numpy())
    x = np.ones(SHAPE, np.float32)
    assert ours.scale_model_input(x, ours.timesteps[0]) is x


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_diffusers_ignores_are_carried_not_used(name):
    """A CogVideoX scheduler_config.json loads unchanged; clip_sample & co. are kept for saving, as in diffusers."""
    config = {**COGVIDEOX, "clip_sample": False, "clip_sample_range": 1.0, "sample_max_value": 1.0, "_class_name": name}
    ours = SCHEDULERS[name].from_config(config)
    assert ours.config.clip_sample is False and ours.config.snr_shift_scale == 3.0
    assert "clip_sample" not in SCHEDULERS[name].config_fields()


def _diffusers_refuses(name: str, config: dict, steps: int) -> Exception | None:
    try:
        reference = getattr(diffusers, name).from_config(config)
        reference.set_timesteps(steps)
        x = torch.ones(SHAPE)
        t = reference.timesteps[0]
        if name == DPM:
            reference.step(x, None, t, None, x)
        else:
            reference.step(x, t, x)
    except (ValueError, NotImplementedError) as refused:
        return refused
    return None


@pytest.mark.parametrize(
    "config, steps",
    [
        ({"beta_schedule": "sigmoid"}, 4),  # diffusers: NotImplementedError at construction
        ({"beta_schedule": "exp"}, 4),
        ({"prediction_type": "flow_prediction"}, 4),  # diffusers: ValueError at the first step; diffrt: at once
        ({"timestep_spacing": "uniform"}, 4),  # diffusers: ValueError in set_timesteps
        ({}, 1001),  # more steps than training timesteps
        ({"num_train_timesteps": 100}, 101),
    ],
    ids=str,
)
@pytest.mark.parametrize("name", NAMES)
def test_refusals_match_diffusers(name, config, steps):
    assert _diffusers_refuses(name, config, steps) is not None
    with pytest.raises(ConfigError):
        ours = SCHEDULERS[name].from_config(config)
        ours.set_timesteps(steps)


@pytest.mark.parametrize("shift", [0.0, -1.0])
def test_non_positive_snr_shift_is_refused_where_diffusers_goes_non_finite(shift):
    reference = diffusers.CogVideoXDDIMScheduler(snr_shift_scale=shift)
    reference.set_timesteps(4)
    x = torch.ones(SHAPE)
    with np.errstate(all="ignore"):
        out = reference.step(x, reference.timesteps[0], x).prev_sample
    assert not torch.isfinite(out).all()
    for name in NAMES:
        with pytest.raises(ConfigError, match="snr_shift_scale"):
            SCHEDULERS[name](snr_shift_scale=shift)


@pytest.mark.parametrize("name", NAMES)
def test_step_before_set_timesteps_is_refused_like_diffusers(name):
    x = np.ones(SHAPE, np.float32)
    args = (x, None, 999, None, x) if name == DPM else (x, 999, x)
    with pytest.raises(ValueError):
        getattr(diffusers, name)().step(*(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args))
    with pytest.raises(ConfigError, match="set_timesteps"):
        SCHEDULERS[name]().step(*args)


def test_dpm_previous_x0_without_its_timestep_is_refused():
    ours, reference = build_pair(DPM, {}, 4)
    x = np.ones(SHAPE, np.float32)
    t = reference.timesteps[1]
    with pytest.raises(IndexError):  # diffusers fails on its multiplier list
        reference.step(torch.from_numpy(x), torch.from_numpy(x), t, None, torch.from_numpy(x))
    with pytest.raises(ConfigError, match="timestep_back"):
        ours.step(x, x, ours.timesteps[1], None, x)
    # into the last step the update is first order, and diffusers takes it without timestep_back; so do we
    last_ref = reference.step(
        torch.from_numpy(x), torch.from_numpy(x), reference.timesteps[-1], None, torch.from_numpy(x)
    )
    last = ours.step(x, x, ours.timesteps[-1], None, x)
    assert_within_ulps(last.prev_sample, last_ref[0].numpy(), ULPS, "last step")


def test_dpm_refuses_variance_noise_that_diffusers_would_silently_replace():
    ours, _ = build_pair(DPM, {}, 4)
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ConfigError, match="variance_noise"):
        ours.step(x, None, ours.timesteps[0], None, x, variance_noise=x)
