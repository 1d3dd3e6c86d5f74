"""Single-file LDM checkpoints -> diffusers components (diffrt.export.single_file).

Tiny fixture folders are written in the LDM layout by the independent inverse in ``ldm_layout``; diffusers'
``from_single_file`` proves those files right, and our conversion must give the folders' weights back exactly.
Real-size architectures are checked on the meta device (shapes only, nothing allocated).
"""

from functools import cache

import ldm_layout
import pytest
import torch
from ldm_layout import one_sentence, shapes_of
from safetensors.torch import load_file

from diffrt.export import single_file as sf
from diffrt.runtime.errors import CheckpointError

FIXTURES = {  # fixture name -> (text layout, pipeline class, family)
    "sd1": ("clip", "StableDiffusionPipeline", "sd1"),
    "sd2": ("open_clip", "StableDiffusionPipeline", "sd2"),
    "inpaint": ("clip", "StableDiffusionInpaintPipeline", "sd1-inpaint"),
}
TEXT_LAYOUT = {"sd1": "clip", "sd2": "open_clip", "sd1-inpaint": "clip", "sd2-inpaint": "open_clip"}
SD_FAMILIES = tuple(TEXT_LAYOUT)  # SDXL families: tests/export/test_single_file_sdxl.py


@pytest.fixture(scope="module")
def ldm_files(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_files")
    return {
        name: ldm_layout.write_single_file(tiny_models[name], root / f"{name}.safetensors", layout)
        for name, (layout, _, _) in FIXTURES.items()
    }


@pytest.fixture()
def tiny_sd1(ldm_files):
    return load_file(ldm_files["sd1"])


@cache
def real_size(family: str):
    """Meta-device diffusers models built from the built-in configs, and their LDM single-file layout (meta)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sf.builtin_configs(family)
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }
    weights = {name: model.state_dict() for name, model in models.items()}
    ldm = ldm_layout.components_to_ldm(
        weights["unet"], weights["vae"], weights["text_encoder"], configs["unet"], configs["vae"], TEXT_LAYOUT[family]
    )
    return models, ldm


# --- conversion of tiny checkpoints: exact weights --------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_diffusers_loads_the_ldm_file_into_the_fixture_weights(name, tiny_models, ldm_files):
    """The oracle: diffusers' own single-file loader reads our LDM files back into the fixture's exact weights."""
    import diffusers

    pipeline = getattr(diffusers, FIXTURES[name][1]).from_single_file(
        str(ldm_files[name]), config=str(tiny_models[name]), local_files_only=True
    )
    for component, expected in ldm_layout.folder_weights(tiny_models[name]).items():
        loaded = getattr(pipeline, component).state_dict()
        assert set(loaded) == set(expected), component
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), component


@pytest.mark.parametrize("name", FIXTURES)
def test_convert_single_file_gives_the_fixture_weights(name, tiny_models, ldm_files):
    configs = ldm_layout.read_configs(tiny_models[name])
    model = sf.convert_single_file(load_file(ldm_files[name]), configs=configs)
    assert model.family == FIXTURES[name][2]
    assert model.configs["unet"] == configs["unet"]
    assert model.configs["tokenizer_pad_token"] == ("!" if name == "sd2" else "<|endoftext|>")
    for component, expected in ldm_layout.folder_weights(tiny_models[name]).items():
        got = model.state_dicts[component]
        assert set(got) == set(expected), (component, sorted(set(got) ^ set(expected))[:5])
        for key, value in expected.items():
            assert torch.equal(got[key], value), (component, key)
    if name == "sd2":  # the scheduler came from the folder: no prediction-type assumption; the extra layer is noted
        assert not any("v_prediction" in note for note in model.notes)
        assert any("layer(s) 3 dropped" in note for note in model.notes)


def test_component_converters_alone(tiny_models, tiny_sd1):
    configs = ldm_layout.read_configs(tiny_models["sd1"])
    expected = ldm_layout.folder_weights(tiny_models["sd1"])
    unet = sf.convert_unet(tiny_sd1, configs["unet"])
    vae = sf.convert_vae(tiny_sd1, configs["vae"])
    text = sf.convert_text_encoder(tiny_sd1, configs["text_encoder"], "sd1")
    for got, want in ((unet, expected["unet"]), (vae, expected["vae"]), (text, expected["text_encoder"])):
        assert set(got) == set(want) and all(torch.equal(got[k], v) for k, v in want.items())
    assert vae["decoder.mid_block.attentions.0.to_q.weight"].ndim == 2  # 1x1 conv in the file, linear in diffusers
    assert tiny_sd1["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4


def test_wrapped_and_legacy_key_forms_convert_the_same(tiny_models):
    """`text_model.`-less CLIP names, a flattened `state_dict.` wrapper and a nested .ckpt dict all convert alike."""
    folder = tiny_models["sd1"]
    configs = ldm_layout.read_configs(folder)
    expected = ldm_layout.folder_weights(folder)["text_encoder"]
    plain = ldm_layout.folder_to_ldm(folder, "clip", text_model_segment=False)
    assert not any(k.startswith("cond_stage_model.transformer.text_model.") for k in plain)
    for state_dict in (
        plain,
        {f"state_dict.{k}": v for k, v in plain.items()},
        {"state_dict": plain, "global_step": 470000, "epoch": 3},
    ):
        model = sf.convert_single_file(state_dict, configs=configs)
        assert all(torch.equal(model.state_dicts["text_encoder"][k], v) for k, v in expected.items())
    assert sf.detect_layout({f"state_dict.{k}": tuple(v.shape) for k, v in plain.items()}).prefix == "state_dict."


def test_projection_kind_follows_the_config(tiny_models):
    """proj_in/proj_out stored as 1x1 convs convert to linear weights when the config says use_linear_projection."""
    folder = tiny_models["sd2"]
    configs = ldm_layout.read_configs(folder)
    state_dict = ldm_layout.folder_to_ldm(folder, "open_clip")
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    state_dict[key] = state_dict[key][:, :, None, None]
    model = sf.convert_single_file(state_dict, configs=configs)
    assert torch.equal(model.state_dicts["unet"]["mid_block.attentions.0.proj_in.weight"], state_dict[key][:, :, 0, 0])


# --- real-size detection, configs and conversion (meta device) --------------------------------------------------------


@pytest.mark.parametrize(
    "family, in_channels, prediction, diffusers_type",
    [
        ("sd1", 4, "epsilon", "v1"),
        ("sd2", 4, "v_prediction", "v2"),
        ("sd1-inpaint", 9, "epsilon", "inpainting"),
        ("sd2-inpaint", 9, "epsilon", "inpainting_v2"),
    ],
)
def test_detect_real_size_checkpoints(family, in_channels, prediction, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    models, ldm = real_size(family)
    shapes = shapes_of(ldm)
    guess = sf.detect_layout(shapes)
    assert (guess.family, guess.in_channels, guess.prediction_type) == (family, in_channels, prediction)
    assert guess.text_layout == TEXT_LAYOUT[family] and guess.prefix == ""
    assert guess.cross_attention_dim == (1024 if family.startswith("sd2") else 768)
    assert guess.diffusers_type == diffusers_type == infer_diffusers_model_type(ldm)
    assert any("v_prediction" in note for note in guess.notes) == (family == "sd2")
    sf.check_config(shapes, guess, sf.builtin_configs(family))
    for other in sf.FAMILIES:
        if other != family:
            with pytest.raises(CheckpointError, match="shapes do not match the given config"):
                sf.check_config(shapes, guess, sf.builtin_configs(other), label="the given config")

    model = sf.convert_single_file(ldm)  # pure renaming: runs on meta tensors
    assert model.family == family
    assert model.configs["scheduler"].get("prediction_type", "epsilon") == prediction
    for component, module in models.items():
        assert shapes_of(model.state_dicts[component]) == shapes_of(module.state_dict()), component


def test_sd2_base_global_step_means_epsilon():
    _, ldm = real_size("sd2")
    guess = sf.detect_layout(shapes_of(ldm), global_step=sf.SD2_BASE_GLOBAL_STEP)
    assert guess.prediction_type == "epsilon"
    model = sf.convert_single_file({"state_dict": ldm, "global_step": sf.SD2_BASE_GLOBAL_STEP})
    assert model.configs["scheduler"]["prediction_type"] == "epsilon"


# --- built-in configs -------------------------------------------------------------------------------------------------

LDM_YAML = {  # the fields of the original inference yamls (v1-inference, v2-inference-v, *-inpainting-inference)
    "sd1": dict(num_heads=8, context_dim=768, in_channels=4),
    "sd2": dict(num_head_channels=64, use_linear_in_transformer=True, context_dim=1024, in_channels=4),
    "sd1-inpaint": dict(num_heads=8, context_dim=768, in_channels=9),
    "sd2-inpaint": dict(num_head_channels=64, use_linear_in_transformer=True, context_dim=1024, in_channels=9),
}


def original_config(family: str) -> dict:
    unet = dict(
        image_size=32, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
        channel_mult=[1, 2, 4, 4], use_spatial_transformer=True, transformer_depth=1, legacy=False,
        **LDM_YAML[family],
    )  # fmt: skip
    ddconfig = dict(
        double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
        num_res_blocks=2, attn_resolutions=[], dropout=0.0,
    )  # fmt: skip
    return {
        "model": {
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.012,
                "scale_factor": 0.18215,
                "unet_config": {"params": unet},
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_builtin_configs_match_diffusers_ldm_conversion(family):
    """The UNet / VAE configs equal what diffusers derives from the original LDM yaml for the same checkpoint."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    models, ldm = real_size(family)
    for derive, component in (
        (create_unet_diffusers_config_from_ldm, "unet"),
        (create_vae_diffusers_config_from_ldm, "vae"),
    ):
        derived = derive(original_config(family), ldm)
        ours = models[component].config
        for key, value in derived.items():
            mine = ours[key]
            assert (list(mine) if isinstance(mine, tuple) else mine) == value, (component, key)


@pytest.mark.parametrize("family", SD_FAMILIES)
def test_builtin_configs_are_complete_and_known(family):
    import diffusers
    from transformers import CLIPTextConfig

    configs = sf.builtin_configs(family)
    assert set(configs) == set(sf.CONFIG_COMPONENTS)
    assert configs["tokenizer_pad_token"] == ("!" if family.startswith("sd2") else "<|endoftext|>")
    index = configs["model_index"]
    assert index["_class_name"] == (
        "StableDiffusionInpaintPipeline" if "inpaint" in family else "StableDiffusionPipeline"
    )
    assert hasattr(diffusers, index["_class_name"])
    for component in ("unet", "vae", "scheduler"):
        cls = getattr(diffusers, configs[component]["_class_name"])
        assert index[component] == ["diffusers", cls.__name__]
        _, unused, _ = cls.extract_init_dict(configs[component])
        assert not {k for k in unused if not k.startswith("_")}, (component, unused)
    known = set(CLIPTextConfig().to_dict())
    assert not set(configs["text_encoder"]) - known
    scheduler = getattr(diffusers, configs["scheduler"]["_class_name"]).from_config(configs["scheduler"])
    assert scheduler.config.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    configs["unet"]["in_channels"] = 99  # a fresh copy every call
    assert sf.builtin_configs(family)["unet"]["in_channels"] in (4, 9)


def test_unknown_family_is_refused():
    accepted = "accepted families: sd1, sd2, sd1-inpaint, sd2-inpaint, sdxl, sdxl-refiner, sdxl-inpaint"
    with pytest.raises(CheckpointError, match=accepted) as error:
        sf.builtin_configs("sd3")
    assert one_sentence(str(error.value))


# --- errors -----------------------------------------------------------------------------------------------------------


def test_tiny_checkpoint_without_configs_asks_for_config_dir(tiny_sd1):
    with pytest.raises(CheckpointError) as error:
        sf.convert_single_file(tiny_sd1, source="tiny.safetensors")
    message = str(error.value)
    assert message.startswith("tiny.safetensors looks like sd1 but its shapes do not match the sd1 config (")
    assert "conv_in has 32 output channels, the config says 320" in message
    assert message.endswith("pass --config DIR with the model's diffusers configs.") and one_sentence(message)


def test_configs_of_another_model_are_refused(tiny_models, tiny_sd1):
    with pytest.raises(CheckpointError, match="do not match the given config .*cross_attention_dim") as error:
        configs = ldm_layout.read_configs(tiny_models["sd1"])
        configs["unet"] = {**configs["unet"], "cross_attention_dim": 48}
        sf.convert_single_file(tiny_sd1, configs=configs)
    assert one_sentence(str(error.value))
    with pytest.raises(CheckpointError, match="conv_in has 4 input channels, the config says 9"):
        sf.convert_single_file(tiny_sd1, configs=ldm_layout.read_configs(tiny_models["inpaint"]))


def test_missing_keys_are_listed(tiny_models, tiny_sd1):
    configs = ldm_layout.read_configs(tiny_models["sd1"])
    no_text_norm = {k: v for k, v in tiny_sd1.items() if "final_layer_norm" not in k}
    del tiny_sd1["first_stage_model.decoder.up.0.block.1.conv2.weight"]
    with pytest.raises(CheckpointError, match=r"lacks 1 key \(first_stage_model\.decoder\.up\.0\.block\.1\.conv2\."):
        sf.convert_single_file(tiny_sd1, configs=configs)
    with pytest.raises(
        CheckpointError, match=r"lacks 2 keys \(.*final_layer_norm.bias, .*\) that the text enc"
    ) as error:
        sf.convert_single_file(no_text_norm, configs=configs)
    assert one_sentence(str(error.value))


def test_unexpected_keys_are_listed(tiny_models, tiny_sd1):
    configs = ldm_layout.read_configs(tiny_models["sd1"])
    with pytest.raises(CheckpointError, match=r"holds 1 key \(model\.diffusion_model\.label_emb\.0\.0\.weight\)"):
        sf.convert_single_file({**tiny_sd1, "model.diffusion_model.label_emb.0.0.weight": torch.zeros(2)}, configs)
    extras = {"embedding_manager.a": torch.zeros(1), "embedding_manager.b": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"holds 2 keys \(embedding_manager\.a, embedding_manager\.b\)") as error:
        sf.convert_single_file({**tiny_sd1, **extras}, configs)
    assert one_sentence(str(error.value))
    # Known extras pass: EMA copies, schedule buffers, CLIP position_ids (ldm_layout writes those already).
    ema = {"model_ema.diffusion_modelinput_blocks00weight": torch.zeros(1), "posterior_mean_coef1": torch.zeros(1)}
    sf.convert_single_file({**tiny_sd1, **ema}, configs)


def _shapes(**overrides) -> dict:
    _, ldm = real_size("sd1")
    return {**shapes_of(ldm), **overrides}


@pytest.mark.parametrize(
    "shapes, pattern",
    [
        (
            {
                "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
                sf.CONV_IN_KEY: (320, 4, 3, 3),
            },
            r"SDXL text-encoder keys under conditioner\.embedders\.0\.transformer\.\*, which match no SDXL layout",
        ),
        (
            {"encoder.weight": (3, 3), "decoder.bias": (3,)},
            "looked for the UNet key model.diffusion_model.input_blocks",
        ),
        ({}, "found no keys at all"),
        (
            {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)},
            r"not a Stable Diffusion 1\.x/2\.x single file .*--config DIR",
        ),
        ({sf.CONV_IN_KEY: (320, 4, 3, 3)}, r"neither a text encoder .*\(found None\)"),
    ],
    ids=["sdxl-clip-only", "random", "empty", "sd3-like", "unet-only-unknown-width"],
)
def test_unrecognised_layouts(shapes, pattern):
    with pytest.raises(CheckpointError, match=pattern) as error:
        sf.detect_layout(shapes, source="model.safetensors")
    assert str(error.value).startswith("model.safetensors ") and one_sentence(str(error.value))


def test_depth_and_other_channel_counts_are_refused():
    _, sd2 = real_size("sd2")
    depth = {**shapes_of(sd2), sf.CONV_IN_KEY: (320, 5, 3, 3)}
    with pytest.raises(CheckpointError, match="depth model .* use the model's diffusers folder") as error:
        sf.detect_layout(depth)
    assert one_sentence(str(error.value))
    with pytest.raises(CheckpointError, match="takes 8 input channels .* accepted: 4 .* or 9"):
        sf.detect_layout(_shapes(**{sf.CONV_IN_KEY: (320, 8, 3, 3)}))


def test_unsupported_unet_configs_are_refused(tiny_models, tiny_sd1):
    configs = ldm_layout.read_configs(tiny_models["sd1"])
    configs["unet"] = {**configs["unet"], "addition_embed_type": "text_time"}
    with pytest.raises(CheckpointError, match="addition_embed_type='text_time'.*accepted: null") as error:
        sf.convert_single_file(tiny_sd1, configs)
    assert one_sentence(str(error.value))
