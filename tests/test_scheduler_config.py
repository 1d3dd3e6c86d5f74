"""Schedulers are built from diffusers configs as users have them: unchanged files, shared between schedulers,
with clear errors for values no scheduler accepts."""

import json
import logging

import diffusers
import numpy as np
import pytest

from diffrt.runtime import SCHEDULERS, ConfigError, PackageError, scheduler_from_config
from diffrt.runtime.schedulers import EulerDiscreteScheduler
from diffrt.runtime.schedulers import noise_schedule as ns

REQUIRED = {
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "TCDScheduler",
}
SD_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def test_every_required_scheduler_is_exported():
    assert REQUIRED <= set(SCHEDULERS)
    import diffrt.runtime.schedulers as package

    for name in REQUIRED:
        assert getattr(package, name) is SCHEDULERS[name]


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_config_fields_and_defaults_equal_diffusers(name):
    """Same field names and defaults as diffusers, so configs round-trip between the two unchanged."""
    ours = SCHEDULERS[name]()
    reference = getattr(diffusers, name)()
    unsupported = {"solver_p"}  # UniPC's nested predictor scheduler object (not JSON-configurable)
    ref_config = {k: v for k, v in reference.config.items() if not k.startswith("_") and k not in unsupported}
    for key, value in ref_config.items():
        assert key in ours.config, f"{name} lacks config field {key}"
        assert ours.config[key] == value or (value is None and ours.config[key] is None), (
            f"{name}.{key}: {ours.config[key]!r} != diffusers {value!r}"
        )


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_order_and_init_noise_sigma_equal_diffusers(name):
    ours = SCHEDULERS[name].from_config(SD_CONFIG)
    reference = getattr(diffusers, name).from_config(SD_CONFIG)
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    assert ours.order == reference.order
    assert float(ours.init_noise_sigma) == pytest.approx(float(reference.init_noise_sigma), rel=1e-6)


def test_swapping_schedulers_through_a_shared_config_is_silent(caplog):
    """pipe.scheduler = X.from_config(pipe.scheduler.config): other schedulers' fields are not warned about."""
    pndm_config = diffusers.PNDMScheduler(**SD_CONFIG, skip_prk_steps=True).config
    with caplog.at_level(logging.WARNING, logger="diffrt.schedulers"):
        for name in sorted(REQUIRED):
            SCHEDULERS[name].from_config(dict(pndm_config))
    assert caplog.text == ""


def test_unknown_config_field_warns_and_is_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="diffrt.schedulers"):
        scheduler = EulerDiscreteScheduler.from_config({**SD_CONFIG, "made_up_field": 3})
    assert "made_up_field" in caplog.text
    assert "made_up_field" not in scheduler.config


def test_unknown_beta_schedule_names_field_and_accepted_values():
    with pytest.raises(ConfigError, match=r"beta_schedule='cubic' is not supported.*'linear', 'scaled_linear'"):
        EulerDiscreteScheduler.from_config({"beta_schedule": "cubic"})


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5])
def test_bad_num_inference_steps_is_a_clear_error(name, steps):
    scheduler = SCHEDULERS[name].from_config(SD_CONFIG)
    with pytest.raises(ConfigError, match=r"num_inference_steps=.* accepted: an integer from 1 to num_train_timesteps"):
        scheduler.set_timesteps(steps)


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("prediction_type", "noise", "'epsilon', 'v_prediction', 'sample'"),
        ("timestep_spacing", "middle", "'linspace', 'leading', 'trailing'"),
        ("final_sigmas_type", "one", "'zero', 'sigma_min'"),
    ],
)
def test_bad_choice_fields_name_the_field(field, value, accepted):
    with pytest.raises(ConfigError, match=rf"{field}='{value}' is not supported.*{accepted}"):
        EulerDiscreteScheduler.from_config({field: value})


def test_conflicting_sigma_schedules_are_refused():
    with pytest.raises(ConfigError, match="use_karras_sigmas and use_beta_sigmas"):
        EulerDiscreteScheduler.from_config({"use_karras_sigmas": True, "use_beta_sigmas": True})


def test_config_reads_as_attributes_and_is_read_only():
    scheduler = EulerDiscreteScheduler.from_config(SD_CONFIG)
    assert scheduler.config.beta_schedule == "scaled_linear"
    with pytest.raises(TypeError, match="read-only"):
        scheduler.config.beta_schedule = "linear"
    with pytest.raises(TypeError, match="read-only"):
        scheduler.config["beta_schedule"] = "linear"
    with pytest.raises(AttributeError, match="no field 'made_up'"):
        _ = scheduler.config.made_up


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_schedulers_copy_and_pickle_mid_run(name, copier):
    """Servers copy a configured scheduler per request: a copy taken mid-run continues exactly as the original."""
    import copy
    import pickle

    scheduler = SCHEDULERS[name].from_config(SD_CONFIG)
    scheduler.set_timesteps(6)
    x = np.ones((1, 4, 4, 4), np.float32)
    for t in scheduler.timesteps[:2]:
        x = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, generator=0).prev_sample
    clone = copy.deepcopy(scheduler) if copier == "deepcopy" else pickle.loads(pickle.dumps(scheduler))
    assert clone.config == scheduler.config and clone.step_index == scheduler.step_index
    a, b = x.copy(), x.copy()
    for t in scheduler.timesteps[scheduler.step_index :]:
        a = scheduler.step(0.1 * scheduler.scale_model_input(a, t), t, a, generator=1).prev_sample
        b = clone.step(0.1 * clone.scale_model_input(b, t), t, b, generator=1).prev_sample
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fixture", ["sd1", "sd2", "inpaint", "ddpm"])
def test_scheduler_of_a_diffusers_folder_equals_diffusers(tiny_models, fixture):
    folder = tiny_models[fixture] / "scheduler"
    config = json.loads((folder / "scheduler_config.json").read_text())
    ours = scheduler_from_config(folder)
    reference = getattr(diffusers, config["_class_name"]).from_pretrained(folder)
    assert type(ours).__name__ == type(reference).__name__
    ours.set_timesteps(20)
    reference.set_timesteps(20)
    np.testing.assert_array_equal(ours.timesteps, reference.timesteps.numpy())


def test_saved_config_loads_in_diffusers(tmp_path):
    ours = SCHEDULERS["DPMSolverMultistepScheduler"].from_config({**SD_CONFIG, "use_karras_sigmas": True})
    ours.save_config(tmp_path)
    reference = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert reference.config.use_karras_sigmas and reference.config.beta_schedule == "scaled_linear"
    chosen = lambda config: {k: v for k, v in config.items() if k != "_use_default_values"}
    assert chosen(scheduler_from_config(tmp_path).config) == chosen(ours.config)


def test_a_config_handed_to_another_scheduler_carries_chosen_fields_not_defaults():
    file_config = {**SD_CONFIG, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True}
    for source in (SCHEDULERS["PNDMScheduler"], diffusers.PNDMScheduler):
        pndm = source.from_config(file_config)
        ours = SCHEDULERS["DDIMScheduler"].from_config(pndm.config)
        reference = diffusers.DDIMScheduler.from_config(pndm.config)
        assert ours.config.clip_sample is False and reference.config.clip_sample is False  # kept though PNDM ignores it
        dpm = SCHEDULERS["DPMSolverMultistepScheduler"].from_config(pndm.config)
        assert dpm.config.timestep_spacing == "linspace"  # PNDM's default "leading" is not forced on
        dpm.set_timesteps(4)
        ref = diffusers.DPMSolverMultistepScheduler.from_config(pndm.config)
        ref.set_timesteps(4)
        np.testing.assert_array_equal(dpm.timesteps, ref.timesteps.numpy())


def test_missing_or_unknown_scheduler_config_is_a_clear_error(tmp_path):
    with pytest.raises(PackageError, match="scheduler config .* does not exist"):
        scheduler_from_config(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "FancyScheduler"}))
    with pytest.raises(ConfigError, match="_class_name='FancyScheduler' is not supported; accepted: .*DDIMScheduler"):
        scheduler_from_config(tmp_path)
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        scheduler_from_config(tmp_path)


def test_generator_accepts_seed_or_numpy_generator_only():
    from diffrt.runtime.schedulers import randn

    np.testing.assert_array_equal(randn((2, 3), 7), randn((2, 3), np.random.default_rng(7)))
    with pytest.raises(ConfigError, match="accepted: a numpy.random.Generator, an int seed, or None"):
        randn((2,), "seed")


# ----- shared schedule math against its references ----------------------------------------------------------
@pytest.mark.parametrize("a, b", [(0.6, 0.6), (0.5, 2.0), (3.0, 1.5), (1.0, 1.0)])
def test_beta_quantiles_equal_scipy(a, b):
    from scipy import special, stats

    for q in np.linspace(0, 1, 23):
        assert ns.beta_ppf(float(q), a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-12)
    for x in np.linspace(0.01, 0.99, 17):
        assert ns.betainc(float(x), a, b) == pytest.approx(special.betainc(a, b, x), abs=1e-13)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("rescale", [False, True])
def test_training_tables_equal_diffusers(schedule, rescale):
    reference = diffusers.DDPMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=rescale)
    betas = ns.make_betas(1000, 0.0001, 0.02, schedule)
    if rescale:
        betas = ns.rescale_zero_terminal_snr(betas)
    # torch's float32 linspace rounds differently in the last bit; compare alphas = 1 - betas, because after
    # rescaling, betas are recovered as 1 - alpha with alpha near 1 and keep only ~3 significant float32 digits.
    # Near the zero-SNR end alpha = alpha_bar[t] / alpha_bar[t-1] divides two tiny float32 numbers.
    np.testing.assert_allclose(1 - betas, 1 - reference.betas.numpy(), rtol=5e-5 if rescale else 1e-6)
    np.testing.assert_allclose(ns.alphas_cumprod(betas), reference.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-9)


def test_dynamic_threshold_equals_torch_quantile_rule():
    import torch

    x = np.random.default_rng(0).standard_normal((3, 4, 5, 5)).astype(np.float32) * 3
    flat = torch.from_numpy(x).reshape(3, -1)
    s = torch.clamp(torch.quantile(flat.abs(), 0.9, dim=1), min=1, max=2.5).unsqueeze(1)
    expected = (torch.clamp(flat, -s, s) / s).reshape(x.shape).numpy()
    np.testing.assert_allclose(ns.dynamic_threshold(x, 0.9, 2.5), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_float16_model_outputs_give_float16_samples_close_to_float32(name):
    """fp16 engines hand the scheduler fp16 arrays: samples come back fp16 (as diffusers returns the model output's
    dtype), finite, and within fp16 rounding of the float32 run; internal math is not done in fp16."""

    def run(dtype):
        scheduler = SCHEDULERS[name].from_config(SD_CONFIG)
        scheduler.set_timesteps(10)
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((1, 4, 8, 8)) * scheduler.init_noise_sigma).astype(dtype)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            eps = (0.8 * np.tanh(model_input.astype(np.float32))).astype(dtype)
            x = scheduler.step(eps, t, x, generator=np.random.default_rng(int(t))).prev_sample
        return x

    x16, x32 = run(np.float16), run(np.float32)
    assert x16.dtype == np.float16 and x32.dtype == np.float32
    assert np.isfinite(x16).all()
    assert np.abs(x16.astype(np.float32) - x32).max() <= 2e-2 * max(1.0, np.abs(x32).max())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_step_before_set_timesteps_works_or_says_what_to_do(name):
    scheduler = SCHEDULERS[name].from_config(SD_CONFIG)
    x = np.ones((1, 4, 4, 4), np.float32)
    t = scheduler.timesteps[0]
    try:
        out = scheduler.step(0.1 * scheduler.scale_model_input(x, t), t, x, generator=0).prev_sample
    except ConfigError as error:
        assert "set_timesteps" in str(error)
    else:
        assert out.shape == x.shape and np.isfinite(out).all()


@pytest.mark.parametrize(
    "field,value,accepted",
    [
        ("beta_start", "abc", "a number"),
        ("beta_end", None, "a number"),
        ("beta_start", float("nan"), "a number"),
        ("num_train_timesteps", "many", "an integer"),
        ("num_train_timesteps", 1000.5, "an integer"),
        ("clip_sample", "yes", "true or false"),
        ("trained_betas", [0.1, "x"], "a list of finite numbers (or null)"),
        ("prediction_type", 3, "a string"),
    ],
)
def test_a_config_field_of_the_wrong_kind_is_one_sentence_naming_it(field, value, accepted):
    with pytest.raises(ConfigError) as error:
        SCHEDULERS["DDIMScheduler"].from_config({**SD_CONFIG, field: value})
    message = str(error.value)
    assert f"field {field}={value!r} is not accepted" in message and f"accepted: {accepted}." in message


def test_a_config_file_with_a_non_numeric_field_is_refused_at_load(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(
        json.dumps({**SD_CONFIG, "_class_name": "PNDMScheduler", "beta_end": "0.012"})
    )
    with pytest.raises(ConfigError, match=r"PNDMScheduler: scheduler config field beta_end='0.012'"):
        scheduler_from_config(tmp_path)
