"""SDXL LoRA: diffusers/PEFT, kohya (diffusers names) and kohya SGM (input_blocks...) files fused into the UNet and
both text encoders, checked against diffusers' StableDiffusionXLPipeline load_lora_weights + set_adapters +
fuse_lora on the tiny SDXL fixture; then in engine packages (fused at export, swapped by ``apply_loras``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import safetensors.numpy
from test_lora import assert_one_sentence, save_np

from diffrt.export import weights as W
from diffrt.export.lora_package import fuse_into_source
from diffrt.export.source import load_source
from diffrt.runtime.errors import CheckpointError
from diffrt.runtime.lora import LoraSpec, lora_deltas, read_lora

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TOLERANCE = 1e-5
KINDS = ("peft", "kohya", "sgm")


@pytest.fixture(scope="module")
def sdxl_loras(sdxl_models, tmp_path_factory):
    """{peft,kohya,sgm}_{a,b} -> file for the tiny SDXL base (see fixtures/sdxl_loras.py)."""
    from fixtures.sdxl_loras import build_sdxl_loras

    return build_sdxl_loras(sdxl_models["sdxl"], tmp_path_factory.mktemp("sdxl_loras"))


_BASE: dict[str, object] = {}


def _pipeline(folder):
    """A fresh diffusers StableDiffusionXLPipeline of ``folder``: loaded once, then deep copies of its networks."""
    from diffusers import StableDiffusionXLPipeline

    key = str(folder)
    if key not in _BASE:
        _BASE[key] = StableDiffusionXLPipeline.from_pretrained(folder)
    components = dict(_BASE[key].components)
    for name in COMPONENTS:
        components[name] = copy.deepcopy(components[name])
    return StableDiffusionXLPipeline(**components)


def _state(model) -> dict[str, np.ndarray]:
    """Effective weights of a (possibly PEFT-wrapped, fused) model under the plain parameter names."""
    return {
        key.replace(".base_layer.", "."): value.detach().float().numpy().copy()
        for key, value in model.state_dict().items()
        if ".lora_" not in key
    }


def diffusers_fused(folder, specs) -> tuple[dict, dict, object]:
    """(base, fused) weights per component after diffusers fuses ``specs``, and the fused pipeline."""
    pipe = _pipeline(folder)
    base = {c: _state(getattr(pipe, c)) for c in COMPONENTS}
    names = [f"lora{i}" for i in range(len(specs))]
    for name, spec in zip(names, specs):
        pipe.load_lora_weights(str(spec.path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=[spec.weight for spec in specs])
    pipe.fuse_lora(components=list(COMPONENTS), adapter_names=names)
    return base, {c: _state(getattr(pipe, c)) for c in COMPONENTS}, pipe


def ours_fused(folder, specs) -> tuple[dict, list]:
    """Our fused weights per component (``fuse_into_source`` on ``load_source``) and the adapter summaries."""
    fused = fuse_into_source(load_source(folder), specs)
    state = {}
    for name in COMPONENTS:
        weights = fused.source.components[name].load_weights()
        state[name] = {key: value.detach().float().numpy() for key, value in weights.items()}
    return state, fused.summaries


def sdxl_targets(folder) -> dict[str, dict[str, tuple[int, ...]]]:
    return {
        "unet": W.tensor_shapes(folder / "unet" / "diffusion_pytorch_model.safetensors"),
        "text_encoder": W.tensor_shapes(folder / "text_encoder" / "model.safetensors"),
        "text_encoder_2": W.tensor_shapes(folder / "text_encoder_2" / "model.safetensors"),
    }


# ---------------------------------------------------------------------------------------------------------------
# weights: parity with diffusers' fuse_lora
# ---------------------------------------------------------------------------------------------------------------

CASES = [(kind, names, weights) for kind in KINDS for names, weights in ((["a"], [0.7]), (["a", "b"], [0.8, 0.5]))]


@pytest.mark.parametrize("kind, names, adapter_weights", CASES, ids=[f"{k}-{'+'.join(n)}" for k, n, _ in CASES])
def test_fused_sdxl_weights_match_diffusers(sdxl_models, sdxl_loras, kind, names, adapter_weights):
    folder = sdxl_models["sdxl"]
    specs = [LoraSpec(sdxl_loras[f"{kind}_{name}"], w) for name, w in zip(names, adapter_weights)]
    base, theirs, _ = diffusers_fused(folder, specs)
    ours, summaries = ours_fused(folder, specs)

    worst, largest = 0.0, 0.0
    for component in COMPONENTS:
        assert set(ours[component]) == set(theirs[component]), component
        changed = {k for k, v in base[component].items() if not np.array_equal(v, theirs[component][k])}
        assert changed, f"diffusers changed nothing in {component}"
        for key, value in theirs[component].items():
            error = float(np.abs(ours[component][key] - value).max()) if value.size else 0.0
            assert error <= TOLERANCE, (component, key, error)
            worst = max(worst, error)
        largest = max(largest, *(float(np.abs(theirs[component][k] - base[component][k]).max()) for k in changed))
    print(f"{kind} {'+'.join(names)}: worst |diffusers - ours| = {worst:.3g}, largest update {largest:.3g}")
    assert largest > 0.05  # the updates are large enough for a wrong scale or a wrong layer to fail
    fmt = "peft" if kind == "peft" else "kohya"
    assert [s["format"] for s in summaries] == [fmt] * len(names)
    assert all(s["modules"]["text_encoder_2"] > 0 and s["modules"]["unet"] > 0 for s in summaries)


def test_the_three_layouts_of_one_adapter_give_the_same_update(sdxl_models, sdxl_loras):
    """The SGM names resolve to exactly the layers the diffusers-layout names do, conv and embeddings included."""
    targets = sdxl_targets(sdxl_models["sdxl"])
    for name in ("a", "b"):
        deltas = {kind: lora_deltas([read_lora(sdxl_loras[f"{kind}_{name}"])], targets)[0] for kind in KINDS}
        for kind in ("kohya", "sgm"):
            assert deltas[kind].keys() == deltas["peft"].keys()
            for component, params in deltas["peft"].items():
                assert params.keys() == deltas[kind][component].keys(), (kind, component)
                for key, value in params.items():
                    np.testing.assert_allclose(deltas[kind][component][key], value, rtol=1e-6, atol=1e-7)
    b = lora_deltas([read_lora(sdxl_loras["sgm_b"])], targets)[0]["unet"]
    for layer in (
        "conv_in.weight",
        "conv_out.weight",
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.resnets.2.conv_shortcut.weight",
        "mid_block.resnets.1.time_emb_proj.weight",
    ):
        assert layer in b, layer


def test_sgm_names_follow_the_block_structure(sdxl_models, tmp_path):
    """Each LDM block number lands on its diffusers block: resnets, attentions, op / conv samplers, middle run."""
    targets = sdxl_targets(sdxl_models["sdxl"])
    rng = np.random.default_rng(0)
    expected = {
        "input_blocks_0_0": "conv_in.weight",
        "input_blocks_2_0_in_layers_2": "down_blocks.0.resnets.1.conv1.weight",
        "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut.weight",
        "input_blocks_5_1_transformer_blocks_1_attn2_to_k": "down_blocks.1.attentions.1.transformer_blocks.1."
        "attn2.to_k.weight",
        "middle_block_0_emb_layers_1": "mid_block.resnets.0.time_emb_proj.weight",
        "middle_block_1_proj_in": "mid_block.attentions.0.proj_in.weight",
        "middle_block_2_out_layers_3": "mid_block.resnets.1.conv2.weight",
        "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks_3_0_in_layers_2": "up_blocks.1.resnets.0.conv1.weight",
        "output_blocks_1_1_transformer_blocks_0_ff_net_2": "up_blocks.0.attentions.1.transformer_blocks.0."
        "ff.net.2.weight",
        "out_2": "conv_out.weight",
        "label_emb_0_0": "add_embedding.linear_1.weight",
        "time_embed_2": "time_embedding.linear_2.weight",
    }
    tensors = {}
    for sgm, layer in expected.items():
        shape = targets["unet"][layer]
        tensors[f"lora_unet_{sgm}.lora_down.weight"] = rng.standard_normal((2, *shape[1:])).astype(np.float32)
        tensors[f"lora_unet_{sgm}.lora_up.weight"] = rng.standard_normal((shape[0], 2, 1, 1)[: len(shape)])
    # Layers of equal shapes would take a wrong block number silently, so the resolved names are what is checked.
    deltas, _ = lora_deltas([read_lora(save_np(tmp_path / "sgm.safetensors", tensors))], targets)
    assert set(deltas["unet"]) == set(expected.values())


# ---------------------------------------------------------------------------------------------------------------
# families: SDXL adapters only for SDXL models
# ---------------------------------------------------------------------------------------------------------------


def test_sdxl_adapter_on_an_sd1_model_is_refused(tiny_models, sdxl_loras):
    source = load_source(tiny_models["sd1"])
    for kind in KINDS:
        with pytest.raises(CheckpointError) as error:
            fuse_into_source(source, [LoraSpec(sdxl_loras[f"{kind}_a"])])
        assert "SDXL" in assert_one_sentence(error, sdxl_loras[f"{kind}_a"])


def test_sd1_adapter_on_an_sdxl_model_is_refused(sdxl_models, lora_files):
    with pytest.raises(CheckpointError) as error:
        fuse_into_source(load_source(sdxl_models["sdxl"]), [LoraSpec(lora_files["kohya"])])
    message = assert_one_sentence(error, lora_files["kohya"])
    assert "cross-attention" in message and "32-wide" in message and "64" in message


def test_text_encoder_modules_on_the_refiner_are_refused(sdxl_models, sdxl_loras):
    """The refiner has no first text encoder; an adapter with lora_te1_ modules does not belong to it."""
    targets = {name: shapes for name, shapes in sdxl_targets(sdxl_models["sdxl"]).items() if name != "text_encoder"}
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(sdxl_loras["kohya_a"])], targets)
    assert "text_encoder" in assert_one_sentence(error, sdxl_loras["kohya_a"])


def test_second_text_encoder_of_another_width_is_refused(sdxl_models, tmp_path):
    name = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    tensors = {
        f"{name}.lora_down.weight": np.ones((2, 1280), np.float32),
        f"{name}.lora_up.weight": np.ones((1280, 2), np.float32),
    }
    path = save_np(tmp_path / "te2.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], sdxl_targets(sdxl_models["sdxl"]))
    message = assert_one_sentence(error, path)
    assert "SDXL" in message and "1280-wide" in message and "second text-encoder" in message


def test_sgm_names_that_match_no_block_are_listed(sdxl_models, tmp_path):
    name = "lora_unet_input_blocks_9_1_proj_in"
    tensors = {f"{name}.lora_down.weight": np.ones((2, 4), np.float32), f"{name}.lora_up.weight": np.ones((4, 2))}
    path = save_np(tmp_path / "deep.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], sdxl_targets(sdxl_models["sdxl"]))
    message = assert_one_sentence(error, path)
    assert name in message and "1 module that matches no layer" in message and "LDM layout" not in message


def test_refuses_to_read_conflicting_kohya_layouts(sdxl_models, sdxl_loras, tmp_path):
    """The same layer under its diffusers name and its SGM name is two modules for one parameter."""
    state = safetensors.numpy.load_file(str(sdxl_loras["kohya_a"]))
    sgm = safetensors.numpy.load_file(str(sdxl_loras["sgm_a"]))
    key = next(k for k in sgm if k.startswith("lora_unet_input_blocks_4_1_") and k.endswith("to_q.lora_down.weight"))
    stem = key.removesuffix(".lora_down.weight")
    state.update({k: v for k, v in sgm.items() if k.startswith(stem + ".")})
    path = save_np(tmp_path / "both.safetensors", state)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], sdxl_targets(sdxl_models["sdxl"]))
    assert "two modules" in assert_one_sentence(error, path)


# ---------------------------------------------------------------------------------------------------------------
# engine packages: fused at export, swapped by apply_loras
# ---------------------------------------------------------------------------------------------------------------

RTOL = 1e-4
PACKAGE_NETWORKS = ("unet", "text_encoder", "text_encoder_2")


def rel_err(got: np.ndarray, want) -> float:
    want = want.detach().numpy() if hasattr(want, "detach") else np.asarray(want)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


def session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def initializers(package, network) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(package / network / "model.onnx"))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.fixture(scope="module")
def package_adapters(sdxl_loras):
    """An SGM kohya adapter and a PEFT LoCon one; 0.2 keeps the random LoCon's activations in a range where torch
    and ONNX Runtime round alike (as for the SD1 LoCon export test)."""
    return (LoraSpec(sdxl_loras["sgm_a"], 0.8), LoraSpec(sdxl_loras["peft_b"], 0.2))


@pytest.fixture(scope="module")
def fused_sdxl_package(sdxl_models, package_adapters, tmp_path_factory):
    from diffrt.export.package import ExportOptions, export_package

    out = tmp_path_factory.mktemp("sdxl_lora") / "fused"
    return export_package(
        load_source(sdxl_models["sdxl"]), out, ExportOptions(loras=package_adapters, check=False)
    ).path


def test_exported_graphs_equal_diffusers_fused_networks(sdxl_models, fused_sdxl_package, package_adapters):
    import torch

    _, _, pipe = diffusers_fused(sdxl_models["sdxl"], package_adapters)
    g = torch.Generator().manual_seed(0)
    config = pipe.unet.config
    feeds = {
        "sample": torch.randn(2, config.in_channels, 16, 16, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, config.cross_attention_dim, generator=g),
        "text_embeds": torch.randn(2, 32, generator=g),
        "time_ids": torch.tensor([[1024.0, 768.0, 16.0, 0.0, 1024.0, 1024.0], [512.0, 512.0, 0.0, 8.0, 640.0, 512.0]]),
    }
    added = {"text_embeds": feeds["text_embeds"], "time_ids": feeds["time_ids"]}
    with torch.no_grad():
        want = pipe.unet(feeds["sample"], 621.0, feeds["encoder_hidden_states"], added_cond_kwargs=added).sample
    onnx_feeds = {k: v.numpy() for k, v in feeds.items()} | {"timestep": np.full((2,), 621.0, np.float32)}
    (got,) = session(fused_sdxl_package / "unet" / "model.onnx").run(["out_sample"], onnx_feeds)
    assert rel_err(got, want) <= RTOL

    ids = torch.randint(1, 1000, (2, 77), generator=g)
    ids[:, -1] = 999
    for name in ("text_encoder", "text_encoder_2"):
        s = session(fused_sdxl_package / name / "model.onnx")
        out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids.numpy()}), strict=True))
        with torch.no_grad():
            theirs = getattr(pipe, name)(ids, output_hidden_states=True)
        layers = getattr(pipe, name).config.num_hidden_layers
        assert rel_err(out["last_hidden_state"], theirs.last_hidden_state) <= RTOL, name
        assert rel_err(out[f"hidden_states.{layers - 1}"], theirs.hidden_states[-2]) <= RTOL, name
        if name == "text_encoder_2":
            assert rel_err(out["text_embeds"], theirs.text_embeds) <= RTOL


def test_adapters_change_every_lora_network(sdxl_packages, fused_sdxl_package):
    """The comparison above is not won by graphs that ignored the adapters."""
    for network in PACKAGE_NETWORKS:
        plain, fused = initializers(sdxl_packages["sdxl"], network), initializers(fused_sdxl_package, network)
        assert plain.keys() == fused.keys()
        assert any(not np.array_equal(plain[k], fused[k]) for k in plain), network


def test_apply_loras_on_an_sdxl_package_equals_the_fused_export(
    sdxl_packages, fused_sdxl_package, package_adapters, tmp_path
):
    from diffrt.export.lora_package import LORA_BASE, apply_loras

    plain = sdxl_packages["sdxl"]
    report = apply_loras(plain, tmp_path / "applied", package_adapters)
    assert set(report.rewritten) == set(PACKAGE_NETWORKS) and report.rewritten["text_encoder_2"] > 0
    for network in PACKAGE_NETWORKS:
        applied, fused = initializers(report.path, network), initializers(fused_sdxl_package, network)
        assert applied.keys() == fused.keys()
        for key, value in fused.items():
            np.testing.assert_array_equal(applied[key], value, err_msg=f"{network}: {key}")
    for network in ("vae_encoder", "vae_decoder"):
        assert (report.path / network / "model.onnx").read_bytes() == (plain / network / "model.onnx").read_bytes()
    restored = apply_loras(report.path, tmp_path / "restored", ()).path
    for network in PACKAGE_NETWORKS:
        back, original = initializers(restored, network), initializers(plain, network)
        for key, value in original.items():
            np.testing.assert_array_equal(back[key], value, err_msg=f"{network}: {key}")
        assert not (restored / network / LORA_BASE).exists()


def test_fused_package_generates_diffusers_fused_images(
    sdxl_models, sdxl_packages, fused_sdxl_package, package_adapters
):
    from pipeline_parity import assert_images_close, run_diffrt, run_diffusers

    from diffrt.runtime.pipelines import StableDiffusionXLPipeline

    _, _, theirs = diffusers_fused(sdxl_models["sdxl"], package_adapters)
    theirs.set_progress_bar_config(disable=True)
    mine = StableDiffusionXLPipeline.from_pretrained(fused_sdxl_package, provider="cpu")
    kwargs = dict(prompt="a photograph of an astronaut riding a horse", negative_prompt="blurry", height=32, width=48)
    kwargs["num_inference_steps"] = 3
    image = run_diffrt(mine, 4, **kwargs)
    assert_images_close(image, run_diffusers(theirs, 4, **kwargs))
    plain = StableDiffusionXLPipeline.from_pretrained(sdxl_packages["sdxl"], provider="cpu")
    assert np.abs(run_diffrt(plain, 4, **kwargs) - image).max() > 0.05  # the adapters show in the image
