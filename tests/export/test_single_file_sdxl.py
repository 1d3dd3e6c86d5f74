"""SDXL single files (Stability's SGM layout) -> diffusers components and engine packages.

The tiny SDXL fixture folders are written as one SGM-layout file each by the independent inverse in ``ldm_layout``;
diffusers' own single-file loader proves those files right, our conversion must give the folders' weights back
exactly, and the package exported from a file must be the one exported from its folder. Real-size architectures
(SDXL 1.0 base, refiner, inpainting) are checked on the meta device (shapes only, nothing allocated).
"""

from functools import cache
from pathlib import Path

import ldm_layout
import pytest
import torch
from ldm_layout import one_sentence, shapes_of
from safetensors.torch import load_file

from diffrt.export import single_file as sf
from diffrt.export.source import read_config_dir
from diffrt.runtime.errors import CheckpointError

KINDS = {  # fixture name -> (diffusers pipeline class, detected family, diffusers' model type)
    "sdxl": ("StableDiffusionXLPipeline", "sdxl", "xl_base"),
    "sdxl_refiner": ("StableDiffusionXLImg2ImgPipeline", "sdxl-refiner", "xl_refiner"),
    "sdxl_inpaint": ("StableDiffusionXLInpaintPipeline", "sdxl-inpaint", "xl_inpaint"),
}
BIG_G_BASE, BIG_G_REFINER = "conditioner.embedders.1.model.", "conditioner.embedders.0.model."


@pytest.fixture(scope="module")
def sgm_files(sdxl_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("sgm_files")
    return {kind: ldm_layout.write_sdxl_single_file(sdxl_models[kind], root / f"{kind}.safetensors") for kind in KINDS}


@pytest.fixture()
def tiny_base(sgm_files):
    return load_file(sgm_files["sdxl"])


def assert_same_weights(got: dict, expected: dict, component: str) -> None:
    assert set(got) == set(expected), (component, sorted(set(got) ^ set(expected))[:5])
    for key, value in expected.items():
        assert torch.equal(got[key], value), (component, key)


# --- the writer, checked by diffusers -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_loads_the_sgm_file_into_the_fixture_weights(kind, sdxl_models, sgm_files):
    """The oracle: diffusers' own single-file loader reads our SGM files back into the fixture's exact weights."""
    import diffusers
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    folder, path = sdxl_models[kind], sgm_files[kind]
    pipeline = getattr(diffusers, KINDS[kind][0]).from_single_file(str(path), config=str(folder), local_files_only=True)
    expected = ldm_layout.sdxl_folder_weights(folder)
    assert ("text_encoder" in expected) == (kind != "sdxl_refiner")
    for component, weights in expected.items():
        if component == "text_encoder_2" and kind != "sdxl_refiner":
            # diffusers tells SDXL's two towers apart by width (768 vs 1280); the fixture's are both 32 wide, so its
            # pipeline loader reads the CLIP-L keys for text_encoder_2 too. Its bigG converter, fed the file without
            # the CLIP-L tower, is the same code path a real SDXL file takes.
            checkpoint = {k: v for k, v in load_file(path).items() if not k.startswith(ldm_layout.SDXL_CLIP)}
            model = create_diffusers_clip_model_from_ldm(
                CLIPTextModelWithProjection,
                checkpoint,
                subfolder="text_encoder_2",
                config=str(folder),
                local_files_only=True,
            )
        else:
            model = getattr(pipeline, component)
        assert_same_weights(model.state_dict(), weights, component)


# --- conversion of the tiny files: exact weights ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_convert_single_file_gives_the_fixture_weights(kind, sdxl_models, sgm_files):
    folder = sdxl_models[kind]
    configs = read_config_dir(folder)
    model = sf.convert_single_file(load_file(sgm_files[kind]), configs=configs, source=sgm_files[kind].name)
    assert model.family == KINDS[kind][1] and model.notes == []
    expected = ldm_layout.sdxl_folder_weights(folder)
    assert set(model.state_dicts) == set(expected)
    for component, weights in expected.items():
        assert model.configs[component] == configs[component]
        assert_same_weights(model.state_dicts[component], weights, component)
    assert model.configs["model_index"]["_class_name"] == KINDS[kind][0]
    assert model.configs["tokenizer_2_pad_token"] == "!"
    assert model.configs.get("tokenizer_pad_token") == (None if kind == "sdxl_refiner" else "<|endoftext|>")
    assert "text_encoder" not in model.configs if kind == "sdxl_refiner" else "text_encoder" in model.configs


def test_component_converters_alone(sdxl_models, tiny_base):
    """Each tower converts on its own; bigG's fused q/k/v is split and its projection stored transposed."""
    configs = read_config_dir(sdxl_models["sdxl"])
    expected = ldm_layout.sdxl_folder_weights(sdxl_models["sdxl"])
    second = sf.convert_text_encoder(tiny_base, configs["text_encoder_2"], "sdxl", component="text_encoder_2")
    first = sf.convert_text_encoder(tiny_base, configs["text_encoder"], "sdxl")
    unet = sf.convert_unet(tiny_base, configs["unet"])
    assert_same_weights(second, expected["text_encoder_2"], "text_encoder_2")
    assert_same_weights(first, expected["text_encoder"], "text_encoder")
    assert_same_weights(unet, expected["unet"], "unet")
    projection = tiny_base[BIG_G_BASE + "text_projection"]
    assert torch.equal(second["text_projection.weight"], projection.T) and not torch.equal(projection, projection.T)
    assert torch.equal(unet["add_embedding.linear_1.weight"], tiny_base["model.diffusion_model.label_emb.0.0.weight"])
    with pytest.raises(
        CheckpointError, match="a sdxl-refiner checkpoint has no text_encoder; accepted: text_encoder_2"
    ):
        sf.convert_text_encoder(tiny_base, configs["text_encoder"], "sdxl-refiner")


def test_files_without_extras_or_inside_a_state_dict_wrapper_convert_the_same(sdxl_models):
    """Without position_ids / logit_scale / denoiser.sigmas, and nested in a .ckpt-style dict, the weights agree."""
    folder = sdxl_models["sdxl"]
    configs = read_config_dir(folder)
    expected = ldm_layout.sdxl_folder_weights(folder)
    plain = ldm_layout.sdxl_folder_to_sgm(folder, extras=False)
    assert "denoiser.sigmas" not in plain and BIG_G_BASE + "logit_scale" not in plain
    for state_dict in (
        plain,
        {"state_dict": plain, "global_step": 1},
        {f"state_dict.{k}": v for k, v in plain.items()},
    ):
        model = sf.convert_single_file(state_dict, configs=configs)
        for component, weights in expected.items():
            assert_same_weights(model.state_dicts[component], weights, component)


# --- detection ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_detection_tells_base_refiner_and_inpainting_apart(kind, sgm_files):
    state_dict = load_file(sgm_files[kind])
    guess = sf.detect_layout(shapes_of(state_dict))
    _, family, diffusers_type = KINDS[kind]
    assert (guess.family, guess.diffusers_type, guess.prediction_type) == (family, diffusers_type, "epsilon")
    assert guess.in_channels == (9 if kind == "sdxl_inpaint" else 4)
    assert guess.text_layout == ("open_clip" if kind == "sdxl_refiner" else "clip+open_clip")
    assert guess.cross_attention_dim == (32 if kind == "sdxl_refiner" else 64)  # bigG alone, or CLIP-L ++ bigG


@cache
def real_size(family: str):
    """Meta-device diffusers models built from the built-in configs, and their SGM single-file layout (meta)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = sf.builtin_configs(family)
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        }
        if "text_encoder" in configs:
            models["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    weights = {name: model.state_dict() for name, model in models.items()}
    return models, ldm_layout.sdxl_components_to_sgm(weights, configs["unet"], configs["vae"])


@pytest.mark.parametrize("kind", KINDS)
def test_detect_and_convert_real_size_checkpoints(kind):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    _, family, diffusers_type = KINDS[kind]
    models, sgm = real_size(family)
    shapes = shapes_of(sgm)
    guess = sf.detect_layout(shapes)
    assert (guess.family, guess.prefix, guess.notes) == (family, "", ())
    assert guess.diffusers_type == diffusers_type == infer_diffusers_model_type(sgm)
    assert guess.cross_attention_dim == (1280 if kind == "sdxl_refiner" else 2048)
    sf.check_config(shapes, guess, sf.builtin_configs(family))
    for other in sf.FAMILIES:
        if other != family:
            with pytest.raises(CheckpointError, match="shapes do not match the given config") as error:
                sf.check_config(shapes, guess, sf.builtin_configs(other), label="the given config")
            assert one_sentence(str(error.value))

    model = sf.convert_single_file(sgm)  # pure renaming: runs on meta tensors
    assert (
        model.family == family and len(model.notes) == 1 and model.notes[0].startswith(f"Configs: built-in {family} (")
    )
    assert set(model.state_dicts) == set(models)
    for component, module in models.items():
        assert shapes_of(model.state_dicts[component]) == shapes_of(module.state_dict()), component


# --- built-in configs ---------------------------------------------------------------------------------------------

SGM_YAML = {  # network_config params of Stability's sd_xl_base.yaml / sd_xl_refiner.yaml (inpainting: 9 channels)
    "sdxl": dict(
        adm_in_channels=2816, in_channels=4, model_channels=320, channel_mult=[1, 2, 4], transformer_depth=[1, 2, 10],
        context_dim=2048,
    ),
    "sdxl-refiner": dict(
        adm_in_channels=2560, in_channels=4, model_channels=384, channel_mult=[1, 2, 4, 4], transformer_depth=4,
        context_dim=[1280, 1280, 1280, 1280],
    ),
    "sdxl-inpaint": dict(
        adm_in_channels=2816, in_channels=9, model_channels=320, channel_mult=[1, 2, 4], transformer_depth=[1, 2, 10],
        context_dim=2048,
    ),
}  # fmt: skip


def sgm_config(family: str) -> dict:
    network = dict(
        num_classes="sequential", out_channels=4, attention_resolutions=[4, 2], num_res_blocks=2, num_head_channels=64,
        use_linear_in_transformer=True, spatial_transformer_attn_type="softmax-xformers", legacy=False,
        **SGM_YAML[family],
    )  # fmt: skip
    ddconfig = dict(
        double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
        num_res_blocks=2, attn_resolutions=[], dropout=0.0,
    )  # fmt: skip
    return {
        "model": {
            "params": {
                "scale_factor": 0.13025,
                "network_config": {"params": network},
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }


@pytest.mark.parametrize("family", sf.SDXL_FAMILIES)
def test_builtin_configs_match_diffusers_sgm_conversion(family):
    """The UNet / VAE configs equal what diffusers derives from Stability's inference yaml for the same checkpoint."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    models, sgm = real_size(family)
    for derive, component in (
        (create_unet_diffusers_config_from_ldm, "unet"),
        (create_vae_diffusers_config_from_ldm, "vae"),
    ):
        derived = derive(sgm_config(family), sgm)
        ours = models[component].config
        for key, value in derived.items():
            mine = ours[key]
            assert (list(mine) if isinstance(mine, tuple) else mine) == value, (component, key)


@pytest.mark.parametrize("family", sf.SDXL_FAMILIES)
def test_builtin_configs_are_complete_and_known(family):
    import diffusers
    from transformers import CLIPTextConfig

    configs = sf.builtin_configs(family)
    refiner = family == "sdxl-refiner"
    assert set(configs) == set(sf.config_components(family))
    assert ("text_encoder" in configs) == ("tokenizer_pad_token" in configs) == (not refiner)
    assert configs["tokenizer_2_pad_token"] == "!" and configs.get("tokenizer_pad_token", "<|endoftext|>") == (
        "<|endoftext|>"
    )
    index = configs["model_index"]
    assert index["_class_name"] == dict((f, c) for c, f, _ in KINDS.values())[family]
    assert hasattr(diffusers, index["_class_name"])
    assert index["force_zeros_for_empty_prompt"] is (not refiner)
    assert index.get("requires_aesthetics_score", False) is refiner
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["text_encoder"] == ([None, None] if refiner else ["transformers", "CLIPTextModel"])
    for component in ("unet", "vae", "scheduler"):
        cls = getattr(diffusers, configs[component]["_class_name"])
        assert index[component] == ["diffusers", cls.__name__]
        _, unused, _ = cls.extract_init_dict(configs[component])
        assert not {k for k in unused if not k.startswith("_")}, (component, unused)
    known = set(CLIPTextConfig().to_dict())
    for component in ("text_encoder", "text_encoder_2"):
        assert not set(configs.get(component, {})) - known
    assert configs["vae"]["force_upcast"] is True and configs["vae"]["scaling_factor"] == 0.13025
    unet, pooled = configs["unet"], configs["text_encoder_2"]["projection_dim"]
    time_ids = (unet["projection_class_embeddings_input_dim"] - pooled) / unet["addition_time_embed_dim"]
    assert time_ids == (5 if refiner else 6)
    scheduler = diffusers.EulerDiscreteScheduler.from_config(configs["scheduler"])
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.timestep_spacing == "leading"


# --- errors -------------------------------------------------------------------------------------------------------


def test_tiny_sdxl_checkpoint_without_configs_asks_for_config_dir(tiny_base):
    with pytest.raises(CheckpointError) as error:
        sf.convert_single_file(tiny_base, source="tiny.safetensors")
    message = str(error.value)
    assert message.startswith("tiny.safetensors looks like sdxl but its shapes do not match the sdxl config (")
    assert "conv_in has 2 output channels, the config says 320" in message
    assert message.endswith("pass --config DIR with the model's diffusers configs.") and one_sentence(message)


def test_configs_of_another_sdxl_model_are_refused(sdxl_models, sgm_files, tiny_base):
    with pytest.raises(CheckpointError, match="cross-attention to_k takes 32 features, .* is 64") as error:
        sf.convert_single_file(load_file(sgm_files["sdxl_refiner"]), read_config_dir(sdxl_models["sdxl"]))
    assert one_sentence(str(error.value))
    configs = read_config_dir(sdxl_models["sdxl"])
    no_added = {**configs, "unet": {k: v for k, v in configs["unet"].items() if k != "addition_embed_type"}}
    with pytest.raises(CheckpointError, match="an added embedding of 80 features \\(SDXL\\), the config has none"):
        sf.convert_single_file(tiny_base, no_added)
    shallow = {**configs, "text_encoder_2": {**configs["text_encoder_2"], "num_hidden_layers": 4}}
    with pytest.raises(CheckpointError, match="the text encoder 2 has 5 layers, the config says 4"):
        sf.convert_single_file(tiny_base, shallow)  # SDXL keeps every bigG layer: no cut as for SD 2


def test_partial_sdxl_files_name_what_is_missing(sdxl_models, tiny_base):
    configs = read_config_dir(sdxl_models["sdxl"])
    no_norm = {k: v for k, v in tiny_base.items() if not k.startswith(BIG_G_BASE + "ln_final")}
    with pytest.raises(CheckpointError, match=r"lacks 2 keys \(conditioner\.embedders\.1\.model\.ln_final\.bias, .*\) "
                       "that the text encoder 2 config needs") as error:  # fmt: skip
        sf.convert_single_file(no_norm, configs)
    assert one_sentence(str(error.value))
    no_projection = {k: v for k, v in tiny_base.items() if k != BIG_G_BASE + "text_projection"}
    with pytest.raises(CheckpointError, match=r"lacks 1 key \(conditioner\.embedders\.1\.model\.text_projection\)"):
        sf.convert_single_file(no_projection, configs)
    no_added = {k: v for k, v in tiny_base.items() if ".label_emb." not in k}
    with pytest.raises(
        CheckpointError, match=r"no added embedding \(model\.diffusion_model\.label_emb\.0\.0\.weight\)"
    ):
        sf.convert_single_file(no_added, configs)
    no_unet = {k: v for k, v in tiny_base.items() if not k.startswith("model.diffusion_model.")}
    with pytest.raises(CheckpointError, match="holds SDXL text encoders but no UNet") as error:
        sf.convert_single_file(no_unet, configs, source="te.safetensors")
    assert str(error.value).startswith("te.safetensors ") and one_sentence(str(error.value))


def test_unknown_sdxl_keys_and_layouts_are_refused(sdxl_models, sgm_files, tiny_base):
    configs = read_config_dir(sdxl_models["sdxl"])
    extra = {"conditioner.embedders.2.model.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"holds 1 key \(conditioner\.embedders\.2\.model\.weight\) outside the "
                       "UNet, VAE and text encoders") as error:  # fmt: skip
        sf.convert_single_file({**tiny_base, **extra}, configs)
    assert one_sentence(str(error.value))
    stray = {BIG_G_BASE + "visual.proj": torch.zeros(32, 32)}  # a whole OpenCLIP model saved, image tower too
    with pytest.raises(CheckpointError, match=r"holds 1 key \(conditioner\.embedders\.1\.model\.visual\.proj\) under "
                       "the text encoder 2 namespace"):  # fmt: skip
        sf.convert_single_file({**tiny_base, **stray}, configs)
    mixed = {**load_file(sgm_files["sdxl_refiner"]), **{k: v for k, v in tiny_base.items() if "embedders.1." in k}}
    with pytest.raises(CheckpointError, match="match no SDXL layout diffrt knows; accepted: the base model's") as error:
        sf.detect_layout(shapes_of(mixed), source="mixed.safetensors")
    assert one_sentence(str(error.value))
    refiner = load_file(sgm_files["sdxl_refiner"])
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    refiner[conv_in] = torch.zeros(2, 9, 3, 3)
    with pytest.raises(
        CheckpointError, match="takes 9 input channels .* no supported sdxl-refiner model has; accepted: 4"
    ):
        sf.detect_layout(shapes_of(refiner))


# --- end to end: the package ------------------------------------------------------------------------------------


def _package_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["sdxl", "sdxl_refiner"])
def test_single_file_exports_to_the_folders_package(kind, sdxl_models, sdxl_packages, sgm_files, tmp_path):
    """With --config, an SGM file exports to the package its folder exports to, byte for byte: model_index.json,
    configs, tokenizer files, and ONNX graphs (so their initializers, the weights, too)."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    source = load_source(sgm_files[kind], config_dir=sdxl_models[kind])
    assert source.kind == "single_file" and f"detected layout: {KINDS[kind][1]}" in source.notes
    # The folder's package was checked against torch when exported; this one only needs to be the same.
    ours = _package_files(export_package(source, tmp_path / "pkg", ExportOptions(check=False)).path)
    theirs = _package_files(sdxl_packages[kind])
    ours.pop("diffrt.json")
    theirs.pop("diffrt.json")
    assert ours.keys() == theirs.keys()
    graphs = {name for name in ours if name.endswith(".onnx")}
    assert {"unet/model.onnx", "text_encoder_2/model.onnx", "vae_decoder/model.onnx"} <= graphs
    assert ("text_encoder/model.onnx" in graphs) == (kind == "sdxl")
    assert "model_index.json" in ours and "tokenizer_2/tokenizer_config.json" in ours
    for name in ours:
        assert ours[name] == theirs[name], name
