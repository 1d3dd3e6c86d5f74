"""SDXL export: the text_time UNet, both text encoders, the package layout, and the runtime's view of the package.

diffusers' and transformers' modules, loaded from the tiny SDXL fixture folders, are the oracle in every comparison.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from diffrt.export.models import UNet2DConditionModel
from diffrt.export.source import load_source, read_config_dir
from diffrt.runtime import networks
from diffrt.runtime.engines import SessionSettings
from diffrt.runtime.errors import CheckpointError, ConfigError, PackageError
from diffrt.runtime.package import EnginePackage

KINDS = ("sdxl", "sdxl_inpaint", "sdxl_refiner")
PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_inpaint": "StableDiffusionXLInpaintPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}
TIME_IDS = {"sdxl": 6, "sdxl_inpaint": 6, "sdxl_refiner": 5}
PROMPTS = (["a photograph of an astronaut riding a horse"], ["a cat", "", "two dogs on a red sofa"])
RTOL = 1e-5


def rel_err(got: np.ndarray, want) -> float:
    want = want.detach().numpy() if torch.is_tensor(want) else want
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unet_inputs(unet_config: dict, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random UNet inputs with plausible time ids: sizes in pixels, a crop corner (or an aesthetic score)."""
    g = torch.Generator().manual_seed(seed)
    n = (unet_config["projection_class_embeddings_input_dim"] - 32) // unet_config["addition_time_embed_dim"]
    time_ids = torch.tensor([[1024.0, 768.0, 16.0, 0.0, 1024.0, 1024.0][:n], [512.0, 512.0, 0.0, 8.0, 6.0, 2.5][:n]])
    return {
        "sample": torch.randn(batch, unet_config["in_channels"], size, size, generator=g),
        "encoder_hidden_states": torch.randn(batch, 77, unet_config["cross_attention_dim"], generator=g),
        "text_embeds": torch.randn(batch, 32, generator=g),
        "time_ids": time_ids[:batch],
    }


@pytest.fixture(scope="module")
def diffusers_unets(sdxl_models):
    from diffusers import UNet2DConditionModel as DiffusersUNet

    return {kind: DiffusersUNet.from_pretrained(sdxl_models[kind] / "unet").eval() for kind in KINDS}


# ----- the UNet ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_text_time_unet_equals_diffusers_with_added_cond_kwargs(diffusers_unets, kind):
    theirs = diffusers_unets[kind]
    ours = UNet2DConditionModel.from_config(dict(theirs.config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    feeds = unet_inputs(dict(theirs.config), batch=2, size=16, seed=1)
    added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]}
    with torch.no_grad():
        want = theirs(feeds["sample"], 381.0, feeds["encoder_hidden_states"], added_cond_kwargs=added).sample
        got = ours(feeds["sample"], 381.0, feeds["encoder_hidden_states"], **added)
    assert feeds["time_ids"].shape[1] == TIME_IDS[kind]
    assert float((got - want).abs().max()) <= 1e-5


def test_sdxl_shaped_unet_reverses_per_block_heads_and_depths_like_diffusers():
    """SDXL's real layout in miniature: three levels, attention in the two deepest, different head counts and
    transformer depths per level. Up blocks and the mid block take the mirrored level's heads and depth."""
    from diffusers import UNet2DConditionModel as DiffusersUNet

    torch.manual_seed(0)
    config = dict(
        block_out_channels=(8, 16, 24),
        layers_per_block=(1, 2, 1),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 6),
        transformer_layers_per_block=(1, 2, 3),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=16 + 6 * 4,
        cross_attention_dim=16,
        norm_num_groups=4,
        sample_size=16,
    )
    theirs = DiffusersUNet(**config).eval()
    ours = UNet2DConditionModel.from_config(dict(theirs.config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert [len(b.attentions[0].transformer_blocks) for b in ours.up_blocks[:2]] == [3, 2]
    assert len(ours.mid_block.attentions[0].transformer_blocks) == 3
    g = torch.Generator().manual_seed(1)
    sample, states = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    added = {"text_embeds": torch.randn(2, 16, generator=g), "time_ids": torch.rand(2, 6, generator=g) * 1024}
    with torch.no_grad():
        want = theirs(sample, 42.0, states, added_cond_kwargs=added).sample
        got = ours(sample, 42.0, states, **added)
    assert float((got - want).abs().max()) <= 1e-5


def test_text_time_embedding_depends_on_the_time_ids(diffusers_unets):
    """The added embedding is not a no-op: other sizes or crops change the prediction (the base test could pass
    with time_ids ignored only if both UNets ignored them)."""
    theirs = diffusers_unets["sdxl"]
    ours = UNet2DConditionModel.from_config(dict(theirs.config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    feeds = unet_inputs(dict(theirs.config), batch=1, size=16, seed=2)
    with torch.no_grad():
        first = ours(
            feeds["sample"],
            500.0,
            feeds["encoder_hidden_states"],
            text_embeds=feeds["text_embeds"],
            time_ids=feeds["time_ids"],
        )
        moved = feeds["time_ids"] + torch.tensor([[0.0, 0.0, 64.0, 64.0, 0.0, 0.0]])
        second = ours(
            feeds["sample"], 500.0, feeds["encoder_hidden_states"], text_embeds=feeds["text_embeds"], time_ids=moved
        )
    assert float((first - second).abs().max()) > 1e-4


def test_text_time_unet_refuses_missing_added_inputs(diffusers_unets):
    theirs = diffusers_unets["sdxl"]
    ours = UNet2DConditionModel.from_config(dict(theirs.config)).eval()
    feeds = unet_inputs(dict(theirs.config), batch=1, size=16, seed=3)
    with pytest.raises(ValueError, match="time_ids must be given"):
        ours(feeds["sample"], 1.0, feeds["encoder_hidden_states"], text_embeds=feeds["text_embeds"])
    with pytest.raises(ValueError, match="text_embeds must be given"):
        ours(feeds["sample"], 1.0, feeds["encoder_hidden_states"], time_ids=feeds["time_ids"])
    config = {k: v for k, v in theirs.config.items() if k != "addition_time_embed_dim"}
    with pytest.raises(ConfigError, match="addition_time_embed_dim"):
        UNet2DConditionModel.from_config(config)


# ----- exported graphs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_unet_graph_takes_text_embeds_and_time_ids_and_equals_diffusers(sdxl_packages, diffusers_unets, kind):
    theirs = diffusers_unets[kind]
    s = session(sdxl_packages[kind] / "unet" / "model.onnx")
    names = [i.name for i in s.get_inputs()]
    assert names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    for batch, size in ((1, 16), (2, 24)):  # dynamic batch and size
        feeds = unet_inputs(dict(theirs.config), batch=batch, size=size, seed=batch)
        added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]}
        with torch.no_grad():
            want = theirs(feeds["sample"], 621.0, feeds["encoder_hidden_states"], added_cond_kwargs=added).sample
        onnx_feeds = {k: v.numpy() for k, v in feeds.items()} | {"timestep": np.full((batch,), 621.0, np.float32)}
        (got,) = s.run(None, onnx_feeds)
        assert rel_err(got, want) <= RTOL, (batch, size)


@pytest.mark.parametrize("encoder", ["text_encoder", "text_encoder_2"])
def test_text_encoder_graphs_give_pooled_and_every_hidden_state(sdxl_models, sdxl_packages, encoder):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    projection = encoder == "text_encoder_2"
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    model = model_class.from_pretrained(sdxl_models["sdxl"] / encoder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(sdxl_models["sdxl"] / encoder.replace("text_encoder", "tokenizer"))
    s = session(sdxl_packages["sdxl"] / encoder / "model.onnx")
    names = [o.name for o in s.get_outputs()]
    layers = model.config.num_hidden_layers
    pooled = "text_embeds" if projection else "pooler_output"
    assert names[:2] == ["last_hidden_state", pooled]
    assert names[-(layers + 1) :] == [f"hidden_states.{i}" for i in range(layers + 1)]
    for prompts in PROMPTS:
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
        got = dict(zip(names, s.run(None, {"input_ids": ids.astype(np.int64)}), strict=True))
        with torch.no_grad():
            out = model(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        assert rel_err(got["last_hidden_state"], out.last_hidden_state) <= RTOL
        assert rel_err(got[pooled], out.text_embeds if projection else out.pooler_output) <= RTOL
        assert len(out.hidden_states) == layers + 1
        for i, want in enumerate(out.hidden_states):
            assert rel_err(got[f"hidden_states.{i}"], want) <= RTOL
        # diffusers' SDXL prompt embedding (clip_skip None): hidden_states[-2], un-normed
        assert rel_err(got[f"hidden_states.{layers - 1}"], out.hidden_states[-2]) <= RTOL


# ----- the package --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_package_layout_and_model_index_mirror_diffusers(sdxl_models, sdxl_packages, kind):
    package = sdxl_packages[kind]
    index = json.loads((package / "model_index.json").read_text())
    source_index = json.loads((sdxl_models[kind] / "model_index.json").read_text())
    first = kind != "sdxl_refiner"
    assert index["_class_name"] == PIPELINES[kind]
    assert index["force_zeros_for_empty_prompt"] is source_index["force_zeros_for_empty_prompt"] is first
    if kind == "sdxl":
        assert "requires_aesthetics_score" not in index
    else:
        assert index["requires_aesthetics_score"] is source_index["requires_aesthetics_score"] is (not first)
    assert ("text_encoder" in index, "tokenizer" in index) == (first, first)
    assert index["text_encoder_2"][1] == "OnnxRuntimeModel" and index["tokenizer_2"] == [
        "transformers",
        "CLIPTokenizer",
    ]
    folders = {p.name for p in package.iterdir() if p.is_dir()}
    expected = {"text_encoder_2", "tokenizer_2", "unet", "vae_encoder", "vae_decoder", "scheduler"}
    assert folders == (expected | {"text_encoder", "tokenizer"} if first else expected)
    for name in ("text_encoder_2", "unet", "vae_encoder", "vae_decoder") + (("text_encoder",) if first else ()):
        assert (package / name / "model.onnx").is_file() and (package / name / "config.json").is_file()
    vae = json.loads((package / "vae_decoder" / "config.json").read_text())
    assert vae == json.loads((sdxl_models[kind] / "vae" / "config.json").read_text()) and vae["force_upcast"] is True
    notes = json.loads((package / "diffrt.json").read_text())["notes"]
    assert any("force_upcast" in note and "fp32" in note for note in notes)


def test_package_tokenizers_pad_as_the_source_tokenizers(sdxl_models, sdxl_packages):
    from transformers import CLIPTokenizer

    package = EnginePackage(sdxl_packages["sdxl"])
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        ours = package.tokenizer(name)
        theirs = CLIPTokenizer.from_pretrained(sdxl_models["sdxl"] / name)
        assert theirs.pad_token == pad
        for prompts in PROMPTS:
            want = theirs(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
            assert np.array_equal(ours(prompts, max_length=77).input_ids, want.input_ids)
        assert package.tokenizer(name) is ours  # built once
    assert package.tokenizer() is package.tokenizer("tokenizer")
    assert package.tokenizer("tokenizer_2")("a", max_length=77).input_ids[0, -1] == 0  # "!" is token 0
    with pytest.raises(PackageError, match="accepted: tokenizer, tokenizer_2"):
        package.tokenizer("tokenizer_3")
    refiner = EnginePackage(sdxl_packages["sdxl_refiner"])
    with pytest.raises(PackageError, match="no tokenizer/ folder"):
        refiner.tokenizer()
    assert refiner.index["requires_aesthetics_score"] is True


def test_force_upcast_vae_runs_fp32_under_auto_precision_in_sdxl_packages_only(sdxl_packages, tmp_path):
    auto = EnginePackage(sdxl_packages["sdxl"], session_settings=SessionSettings(precision="auto"))
    assert auto.vae_force_upcast
    assert auto.settings_for("vae_decoder").precision == auto.settings_for("vae_encoder").precision == "fp32"
    assert auto.settings_for("unet").precision == "auto"
    assert auto.settings_for("text_encoder_2").precision == "auto"
    fp16 = EnginePackage(sdxl_packages["sdxl"], session_settings=SessionSettings(precision="fp16"))
    assert fp16.settings_for("vae_decoder").precision == "fp16"  # an explicit choice is the user's
    # diffusers' SD 1.x/2.x pipelines ignore the flag (diffusers writes it into every VAE config): so do we.
    sd = tmp_path / "sd"
    shutil.copytree(sdxl_packages["sdxl"] / "vae_decoder", sd / "vae_decoder", ignore=shutil.ignore_patterns("*.onnx*"))
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    plain = EnginePackage(sd, session_settings=SessionSettings(precision="auto"))
    assert not plain.vae_force_upcast and plain.settings_for("vae_decoder").precision == "auto"


def test_engine_package_knows_text_encoder_2(sdxl_packages):
    package = EnginePackage(sdxl_packages["sdxl_refiner"])
    package.require(("text_encoder_2", "unet"), "StableDiffusionXLImg2ImgPipeline")
    with pytest.raises(PackageError, match="text_encoder/model.onnx.*holds text_encoder_2, unet"):
        package.require(("text_encoder",), "StableDiffusionXLPipeline")
    ids = package.tokenizer("tokenizer_2")(["a cat"], max_length=77).input_ids
    out = package.engine("text_encoder_2").run({"input_ids": ids}, ["text_embeds", "hidden_states.4"])
    assert out["text_embeds"].shape == (1, 32) and out["hidden_states.4"].shape == (1, 77, 32)


# ----- sources and contracts -------------------------------------------------------------------------------------
def test_sources_read_sdxl_components_tokenizers_and_pipeline_config(sdxl_models):
    base = load_source(sdxl_models["sdxl"])
    assert list(base.components) == ["text_encoder", "text_encoder_2", "unet", "vae"]
    assert base.components["text_encoder_2"].class_name == "CLIPTextModelWithProjection"
    assert base.pipeline_config == {"force_zeros_for_empty_prompt": True}
    assert {"tokenizer.json", "tokenizer_config.json"} <= base.tokenizer_2_files.keys()
    refiner = load_source(sdxl_models["sdxl_refiner"])
    assert list(refiner.components) == ["text_encoder_2", "unet", "vae"] and not refiner.tokenizer_files
    assert refiner.pipeline_config == {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}
    configs = read_config_dir(sdxl_models["sdxl"])
    assert configs["text_encoder_2"]["projection_dim"] == 32
    assert (configs["tokenizer_pad_token"], configs["tokenizer_2_pad_token"]) == ("<|endoftext|>", "!")
    refiner_configs = read_config_dir(sdxl_models["sdxl_refiner"])
    assert "text_encoder" not in refiner_configs and "tokenizer_pad_token" not in refiner_configs
    assert refiner_configs["tokenizer_2_pad_token"] == "!"


def test_pipeline_config_defaults_to_diffusers_when_model_index_is_silent(sdxl_models, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(sdxl_models["sdxl_inpaint"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    del index["force_zeros_for_empty_prompt"], index["requires_aesthetics_score"]
    (folder / "model_index.json").write_text(json.dumps(index))
    source = load_source(folder)
    assert source.pipeline_config == {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}


def test_sdxl_folder_without_text_encoder_2_is_refused(sdxl_models, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(sdxl_models["sdxl"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_2"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lists no text_encoder_2, which a StableDiffusionXLPipeline needs"):
        load_source(folder)


def test_text_time_unet_network_needs_text_embeds_dim(sdxl_models):
    config = json.loads((sdxl_models["sdxl"] / "unet" / "config.json").read_text())
    with pytest.raises(ConfigError, match="text_embeds_dim"):
        networks.unet_network(config, 2)
    with pytest.raises(ConfigError, match="projection_class_embeddings_input_dim"):
        networks.unet_network(config, 2, text_embeds_dim=31)  # 80 - 31 is no multiple of 8
    network = networks.unet_network(config, 2, text_embeds_dim=32)
    shapes = network.shapes(batch=3, height=64, width=32)
    assert shapes["text_embeds"] == (3, 32) and shapes["time_ids"] == (3, 6)
    assert shapes["encoder_hidden_states"] == (3, 77, 64)


def test_single_file_sdxl_source_takes_the_components_the_conversion_returns(sdxl_models, tmp_path, monkeypatch):
    """The single-file path is generic over the pipeline's components: a refiner-like conversion without the first
    text encoder gives a source without it, and a generated tokenizer_2 pads with the conversion's pad token."""
    from safetensors.torch import save_file

    from diffrt.export import single_file, weights
    from diffrt.export.package import ExportOptions, export_package

    folder = sdxl_models["sdxl_refiner"]
    configs = read_config_dir(folder)
    state_dicts = {name: weights.load_component_weights(folder / name) for name in ("text_encoder_2", "unet", "vae")}
    converted = single_file.SingleFileModel(
        family="sdxl_refiner", notes=[], configs={**configs, "tokenizer_2_pad_token": "!"}, state_dicts=state_dicts
    )
    monkeypatch.setattr(single_file, "convert_single_file", lambda *args, **kwargs: converted)
    checkpoint = tmp_path / "refiner.safetensors"
    save_file({"placeholder": torch.zeros(1)}, str(checkpoint))
    source = load_source(checkpoint)
    assert source.kind == "single_file" and list(source.components) == ["text_encoder_2", "unet", "vae"]
    assert source.pipeline_config == {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}
    assert source.tokenizer("tokenizer_2") == ({}, "!")
    package = export_package(source, tmp_path / "package", ExportOptions(check=False)).path
    index = json.loads((package / "model_index.json").read_text())
    assert "text_encoder" not in index and index["requires_aesthetics_score"] is True
    ids = EnginePackage(package).tokenizer("tokenizer_2")("a cat", max_length=77).input_ids
    assert ids[0, 4] == 0  # after the end token, padded with "!" (token 0)
