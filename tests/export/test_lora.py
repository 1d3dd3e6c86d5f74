"""diffrt.runtime.lora: LoRA files read and fused in NumPy, checked against diffusers' load_lora_weights + fuse_lora.

Each parity test loads the tiny SD1 pipeline in diffusers, fuses the same files with the same adapter weights, and
compares every parameter of the UNet and the text encoder with base + our delta.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from diffrt.export import weights as W
from diffrt.runtime.errors import CheckpointError
from diffrt.runtime.lora import LoraAdapter, LoraModule, LoraSpec, lora_deltas, read_lora

COMPONENTS = ("unet", "text_encoder")
TOLERANCE = 1e-5

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def assert_one_sentence(error: pytest.ExceptionInfo, path: object) -> str:
    """The house rule: a CheckpointError of one sentence that names the file (or argument) at fault."""
    message = str(error.value)
    assert type(error.value) is CheckpointError
    assert str(path) in message, message
    assert "\n" not in message and message.endswith("."), message
    assert ". " not in message.replace(str(path), "<path>")[:-1], message
    return message


_BASE: dict[str, object] = {}


def _pipeline(folder: Path):
    """A fresh StableDiffusionPipeline of ``folder``: the slow load happens once per worker, then deep copies."""
    from diffusers import StableDiffusionPipeline

    key = str(folder)
    if key not in _BASE:
        _BASE[key] = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    base = _BASE[key]
    components = dict(base.components)
    for name in COMPONENTS:
        components[name] = copy.deepcopy(components[name])
    return StableDiffusionPipeline(**components)


def _state(model) -> dict[str, np.ndarray]:
    """Effective weights of a (possibly PEFT-wrapped, fused) model under the plain parameter names."""
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value.detach().float().numpy().copy()
    return out


def diffusers_fused(folder: Path, files: list[Path], adapter_weights: list[float]):
    """(base, fused) weights per component after load_lora_weights + set_adapters + fuse_lora in diffusers."""
    pipe = _pipeline(folder)
    base = {c: _state(getattr(pipe, c)) for c in COMPONENTS}
    names = [f"lora{i}" for i in range(len(files))]
    for name, path in zip(names, files):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=list(adapter_weights))
    pipe.fuse_lora(components=list(COMPONENTS), adapter_names=names)
    return base, {c: _state(getattr(pipe, c)) for c in COMPONENTS}


def shapes_of(state: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, tuple[int, ...]]]:
    return {c: {k: tuple(v.shape) for k, v in params.items()} for c, params in state.items()}


def model_targets(sd1: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes of the tiny SD1 model, read from the safetensors headers alone."""
    return {
        "unet": W.tensor_shapes(sd1 / "unet" / "diffusion_pytorch_model.safetensors"),
        "text_encoder": W.tensor_shapes(sd1 / "text_encoder" / "model.safetensors"),
    }


def assert_matches_diffusers(base, fused, deltas) -> float:
    """Every parameter: fused == base + delta within TOLERANCE; returns the worst error."""
    worst = 0.0
    for component in COMPONENTS:
        ours = deltas.get(component, {})
        changed = {k for k in base[component] if not np.array_equal(base[component][k], fused[component][k])}
        assert changed == set(ours), (component, sorted(changed ^ set(ours))[:5])
        for name, before in base[component].items():
            expected = before + ours[name] if name in ours else before
            error = float(np.abs(fused[component][name] - expected).max()) if before.size else 0.0
            assert error <= TOLERANCE, (component, name, error)
            worst = max(worst, error)
    return worst


def save_np(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata)
    return path


def peft_pair(module: str, rank: int, out: int, inp: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{module}.lora_A.weight": rng.standard_normal((rank, inp)).astype(np.float32),
        f"{module}.lora_B.weight": rng.standard_normal((out, rank)).astype(np.float32),
    }


TO_Q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
ATTN2_TO_K = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"

# ---------------------------------------------------------------------------------------------------------------
# parity with diffusers
# ---------------------------------------------------------------------------------------------------------------

PARITY_CASES = [
    (["peft_unet"], [1.0]),
    (["peft_text_encoder"], [1.0]),
    (["peft_both"], [1.0]),
    (["peft_locon"], [1.0]),
    (["peft_fp16"], [0.7]),
    (["attn_procs"], [1.0]),
    (["kohya"], [1.0]),
    (["kohya_locon_bf16"], [1.0]),
    (["kohya_no_alpha"], [1.0]),
    (["peft_unet", "kohya_locon_bf16"], [0.8, 0.5]),
    (["peft_both", "kohya"], [0.8, 0.5]),
]


@pytest.mark.parametrize("names, adapter_weights", PARITY_CASES, ids=["+".join(c[0]) for c in PARITY_CASES])
def test_fused_weights_match_diffusers(tiny_models, lora_files, names, adapter_weights):
    files = [lora_files[n] for n in names]
    base, fused = diffusers_fused(tiny_models["sd1"], files, adapter_weights)
    adapters = [read_lora(LoraSpec(path, w)) for path, w in zip(files, adapter_weights)]
    deltas, summaries = lora_deltas(adapters, shapes_of(base))

    worst = assert_matches_diffusers(base, fused, deltas)
    print(f"{'+'.join(names)}: worst |diffusers - ours| = {worst:.3g}")
    largest = max(float(np.abs(d).max()) for c in deltas.values() for d in c.values())
    assert largest > 0.05, largest  # the updates are large enough for a wrong scale to fail the comparison

    for name, summary, adapter, w in zip(names, summaries, adapters, adapter_weights):
        expected_format = "attn-procs" if name.startswith("attn") else name.split("_")[0]
        assert adapter.format == summary["format"] == expected_format
        assert summary["weight"] == w and summary["file"] == str(lora_files[name])
        assert summary["sha256"] == W.file_sha256(lora_files[name])
    if len(names) == 1:  # one module per parameter diffusers changed
        assert summaries[0]["modules"] == {c: len(deltas.get(c, {})) for c in COMPONENTS}
        assert sum(summaries[0]["modules"].values()) == adapters[0].count()


def test_same_deltas_for_targets_with_text_model_prefix(lora_files, tiny_models):
    targets = model_targets(tiny_models["sd1"])
    prefixed = {**targets, "text_encoder": {f"text_model.{k}": v for k, v in targets["text_encoder"].items()}}
    adapter = read_lora(lora_files["kohya"])
    plain, _ = lora_deltas([adapter], targets)
    with_prefix, _ = lora_deltas([adapter], prefixed)
    assert set(with_prefix["text_encoder"]) == {f"text_model.{k}" for k in plain["text_encoder"]}
    for key, value in plain["text_encoder"].items():
        np.testing.assert_array_equal(with_prefix["text_encoder"][f"text_model.{key}"], value)


def test_unprefixed_attention_processor_keys_are_the_unet(lora_files, tiny_models):
    """Pre-2023 files without the unet. prefix (diffusers 0.42 skips them): read as the UNet, like the prefixed file."""
    targets = model_targets(tiny_models["sd1"])
    prefixed, _ = lora_deltas([read_lora(lora_files["attn_procs"])], targets)
    adapter = read_lora(lora_files["attn_procs_unprefixed"])
    assert adapter.format == "attn-procs" and set(adapter.modules) == {"unet"}
    unprefixed, _ = lora_deltas([adapter], targets)
    assert set(unprefixed) == {"unet"} and set(unprefixed["unet"]) == set(prefixed["unet"])
    for key, value in prefixed["unet"].items():
        np.testing.assert_array_equal(unprefixed["unet"][key], value)


def test_kohya_alpha_is_per_module(lora_files, tiny_models, tmp_path):
    """A to_q alpha unlike the others scales to_q alone (diffusers 0.42 gives attention layers the majority alpha)."""
    state = safetensors.numpy.load_file(str(lora_files["kohya"]))
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    state[f"{name}.alpha"] = np.array(1.0, np.float32)
    path = save_np(tmp_path / "kohya_alpha.safetensors", state)
    deltas, _ = lora_deltas([read_lora(path)], model_targets(tiny_models["sd1"]))
    down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
    expected = (1.0 / down.shape[0]) * (up.astype(np.float64) @ down.astype(np.float64))
    got = deltas["unet"]["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    other = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k"
    down, up = state[f"{other}.lora_down.weight"], state[f"{other}.lora_up.weight"]
    expected = (8.0 / down.shape[0]) * (up.astype(np.float64) @ down.astype(np.float64))
    got = deltas["unet"]["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight"]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pickled_lora_needs_allow_pickle_and_then_matches(lora_files, tiny_models, tmp_path):
    pickled = tmp_path / "kohya.bin"
    torch.save(safetensors.torch.load_file(str(lora_files["kohya"])), pickled)
    with pytest.raises(CheckpointError) as error:  # the runtime has no torch: it never unpickles
        read_lora(pickled)
    assert "--allow-pickle" in assert_one_sentence(error, pickled) and "torch-free runtime" in str(error.value)
    with pytest.raises(CheckpointError) as error:  # export without the opt-in: weights.py's refusal
        read_lora(pickled, pickle_loader=W.lora_pickle_loader(False))
    assert "allow_pickle" in assert_one_sentence(error, pickled)
    targets = model_targets(tiny_models["sd1"])
    from_pickle, _ = lora_deltas([read_lora(pickled, pickle_loader=W.lora_pickle_loader(True))], targets)
    from_safetensors, _ = lora_deltas([read_lora(lora_files["kohya"])], targets)
    for component, params in from_safetensors.items():
        for key, value in params.items():
            np.testing.assert_array_equal(from_pickle[component][key], value)


# ---------------------------------------------------------------------------------------------------------------
# LoraModule and name resolution
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "down_shape, up_shape, shape",
    [
        ((3, 8), (5, 3), (5, 8)),  # Linear
        ((3, 8, 3, 3), (5, 3, 1, 1), (5, 8, 3, 3)),  # LoCon 3x3 conv
        ((3, 8, 1, 1), (5, 3, 1, 1), (5, 8, 1, 1)),  # 1x1 conv
        ((3, 8, 1, 1), (5, 3, 1, 1), (5, 8)),  # a 1x1 conv LoRA on a Linear layer (proj_in in SD1 vs SD2)
        ((3, 8), (5, 3), (5, 8, 1, 1)),  # a Linear LoRA on a 1x1 conv
    ],
)
def test_module_delta_is_a_convolution_of_the_halves(down_shape, up_shape, shape):
    rng = np.random.default_rng(0)
    module = LoraModule(rng.standard_normal(down_shape).astype(np.float32), rng.standard_normal(up_shape), 6.0)
    assert module.rank == 3
    delta = module.delta(shape)
    assert delta.shape == shape and delta.dtype == np.float32
    # Independent formula: PEFT's conv merge, conv2d(down^T, up)^T, is an einsum over rank.
    down = module.down.reshape(3, shape[1], *(shape[2:] or (1, 1)))
    expected = 2.0 * np.einsum("or,rihw->oihw", module.up.reshape(shape[0], 3), down).reshape(shape)
    np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-5)
    assert LoraModule(module.down, module.up, None).delta(shape) == pytest.approx(expected / 2.0, abs=1e-5)
    assert not module.fits((5, 9)) and not module.fits((4, 8))
    with pytest.raises(ValueError):
        module.delta((5, 8, 3, 5))


def test_kohya_names_resolve_by_the_model_names_not_by_splitting(tmp_path):
    """Underscores inside layer names (time_embedding.linear_1, to_out.0) are found by looking names up."""
    rng = np.random.default_rng(1)
    targets = {
        "unet": {"time_embedding.linear_1.weight": (6, 4), "blocks.0.to_out.0.weight": (4, 4)},
        "text_encoder": {"encoder.layers.0.self_attn.out_proj.weight": (4, 4)},
    }

    def module(out, inp):
        return LoraModule(rng.standard_normal((2, inp)).astype(np.float32), rng.standard_normal((out, 2)), 4.0)

    adapter = LoraAdapter(
        path=Path("x.safetensors"),
        sha256="0",
        weight=0.5,
        format="kohya",
        modules={
            "unet": {"time_embedding_linear_1": module(6, 4), "blocks_0_to_out_0": module(4, 4)},
            "text_encoder": {"text_model_encoder_layers_0_self_attn_out_proj": module(4, 4)},
        },
    )
    deltas, summaries = lora_deltas([adapter], targets)
    assert set(deltas["unet"]) == set(targets["unet"]) and summaries[0]["modules"] == {"unet": 2, "text_encoder": 1}
    m = adapter.modules["unet"]["time_embedding_linear_1"]
    np.testing.assert_allclose(deltas["unet"]["time_embedding.linear_1.weight"], 0.5 * 2.0 * (m.up @ m.down), atol=1e-6)

    ambiguous = {"unet": {"a_b.c.weight": (4, 4), "a.b_c.weight": (4, 4)}}
    adapter.modules = {"unet": {"a_b_c": module(4, 4)}}
    with pytest.raises(CheckpointError) as error:
        lora_deltas([adapter], ambiguous)
    assert "several layers" in assert_one_sentence(error, "x.safetensors")


def test_adapters_add_up_with_their_weights(lora_files, tiny_models):
    targets = model_targets(tiny_models["sd1"])
    one, _ = lora_deltas([read_lora(f"{lora_files['kohya']}:0.25")], targets)
    both, summaries = lora_deltas([read_lora(f"{lora_files['kohya']}:0.25"), read_lora(lora_files["kohya"])], targets)
    assert [s["weight"] for s in summaries] == [0.25, 1.0]
    for key, value in one["unet"].items():
        np.testing.assert_allclose(both["unet"][key], 5 * value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------


def test_file_without_lora_keys(tmp_path, tiny_models):
    path = save_np(tmp_path / "model.safetensors", {"conv_in.weight": np.zeros((4, 4, 3, 3), np.float32)})
    with pytest.raises(CheckpointError) as error:
        read_lora(path)
    assert "holds no LoRA weights" in assert_one_sentence(error, path) and "conv_in.weight" in str(error.value)


def test_keys_that_are_not_lora_beside_lora_keys(tmp_path):
    tensors = {**peft_pair(TO_Q, 4, 64, 64), "unet.extra.bias": np.zeros(3, np.float32)}
    path = save_np(tmp_path / "extra.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        read_lora(path)
    assert "unet.extra.bias" in assert_one_sentence(error, path)


def test_modules_that_match_no_layer_are_listed(tmp_path, tiny_models):
    tensors = {}
    for i in range(7):
        tensors.update(peft_pair(f"unet.down_blocks.{i + 5}.attentions.0.proj_in", 2, 8, 8, seed=i))
    tensors.update(peft_pair(TO_Q, 4, 64, 64))
    path = save_np(tmp_path / "other.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], model_targets(tiny_models["sd1"]))
    message = assert_one_sentence(error, path)
    assert "7 modules that match no layer" in message
    assert sum(f"down_blocks.{i + 5}." in message for i in range(7)) == 5 and "..." in message


def test_ldm_layout_kohya_names_get_a_hint(tmp_path, tiny_models):
    name = "lora_unet_input_blocks_1_1_proj_in"
    tensors = {
        f"{name}.lora_down.weight": np.ones((2, 32, 1, 1), np.float32),
        f"{name}.lora_up.weight": np.ones((32, 2)),
    }
    path = save_np(tmp_path / "sgm.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], model_targets(tiny_models["sd1"]))
    message = assert_one_sentence(error, path)
    assert "1 module that matches no layer" in message and name in message and "SDXL" in message


def test_shapes_that_do_not_fit(tmp_path, tiny_models):
    path = save_np(tmp_path / "shape.safetensors", peft_pair(TO_Q, 4, 64, 48))
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], model_targets(tiny_models["sd1"]))
    message = assert_one_sentence(error, path)
    assert "attn1.to_q" in message and "(4, 48)" in message and "(64, 64)" in message


@pytest.mark.parametrize(
    "tensors, family",
    [
        (peft_pair("text_encoder_2.encoder.layers.0.self_attn.q_proj", 4, 1280, 1280), "SDXL"),
        (
            {
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": np.ones((2, 8), np.float32),
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": np.ones((8, 2), np.float32),
            },
            "SDXL",
        ),
        (peft_pair(ATTN2_TO_K, 4, 64, 2048), "SDXL"),
        (peft_pair(ATTN2_TO_K, 4, 64, 1024), "Stable Diffusion 2.x"),
        (peft_pair("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", 4, 1024, 1024), "Stable Diffusion 2.x"),
        (peft_pair("transformer.transformer_blocks.0.attn.to_q", 4, 8, 8), "transformer model"),
    ],
    ids=["peft-te2", "kohya-te2", "sdxl-width", "sd2-width", "sd2-text-width", "transformer"],
)
def test_adapter_for_another_family(tmp_path, tiny_models, tensors, family):
    path = save_np(tmp_path / "family.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        lora_deltas([read_lora(path)], model_targets(tiny_models["sd1"]))
    assert family in assert_one_sentence(error, path)


@pytest.mark.parametrize(
    "key, kind",
    [
        ("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "Tucker"),
        ("lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a", "LoHa"),
        ("lora_unet_down_blocks_0_resnets_0_conv1.lokr_w1", "LoKr"),
        ("lora_unet_down_blocks_0_resnets_0_conv1.dora_scale", "DoRA"),
        ("unet.down_blocks.0.resnets.0.conv1.lora_B.bias", "bias"),
    ],
)
def test_unsupported_adapter_types_are_named(tmp_path, key, kind):
    path = save_np(tmp_path / "lycoris.safetensors", {key: np.ones((2, 2), np.float32)})
    with pytest.raises(CheckpointError) as error:
        read_lora(path)
    message = assert_one_sentence(error, path)
    assert kind in message and "does not support" in message


def test_dora_in_metadata_is_refused(tmp_path):
    metadata = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": True})}
    path = save_np(tmp_path / "dora.safetensors", peft_pair(TO_Q, 4, 64, 64), metadata)
    with pytest.raises(CheckpointError) as error:
        read_lora(path)
    assert "DoRA" in assert_one_sentence(error, path)


KOHYA_TO_Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.mark.parametrize(
    "tensors, words",
    [
        ({f"{TO_Q}.lora_A.weight": np.ones((4, 64), np.float32)}, "not its up half"),
        ({f"{KOHYA_TO_Q}.alpha": np.array(4.0, np.float32)}, "neither of its halves"),
        (
            {f"{KOHYA_TO_Q}.lora_down.weight": np.ones((4, 64)), f"{KOHYA_TO_Q}.lora_up.weight": np.ones((64, 2))},
            "do not pair up",
        ),
        (
            {
                f"{KOHYA_TO_Q}.lora_down.weight": np.ones((4, 64)),
                f"{KOHYA_TO_Q}.lora_up.weight": np.ones((64, 4)),
                f"{KOHYA_TO_Q}.alpha": np.ones(3),
            },
            "not one finite number",
        ),
    ],
    ids=["peft-half", "kohya-alpha-only", "ranks-differ", "alpha-vector"],
)
def test_modules_that_do_not_pair_up(tmp_path, tensors, words):
    path = save_np(tmp_path / "half.safetensors", tensors)
    with pytest.raises(CheckpointError) as error:
        read_lora(path)
    message = assert_one_sentence(error, path)
    assert words in message and "to_q" in message


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as error:
        read_lora(tmp_path / "absent.safetensors")
    assert "does not exist" in assert_one_sentence(error, tmp_path / "absent.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# LoraSpec, reading, torch-free import
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, weight",
    [
        ("a.safetensors", "a.safetensors", 1.0),
        ("a.safetensors:0.8", "a.safetensors", 0.8),
        ("dir/a.safetensors:-0.5", "dir/a.safetensors", -0.5),
        ("a.safetensors:2", "a.safetensors", 2.0),
        ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
        ("C:\\loras\\a.safetensors:0.3", "C:\\loras\\a.safetensors", 0.3),
        ("weird:name.safetensors", "weird:name.safetensors", 1.0),
    ],
)
def test_spec_parse(text, path, weight):
    spec = LoraSpec.parse(text)
    assert spec == LoraSpec(Path(path), weight)


@pytest.mark.parametrize("text", ["a.safetensors:abc", "a.safetensors:", "a.safetensors:nan", "a.bin:inf", ":0.5", ""])
def test_spec_parse_refuses_bad_weights(text):
    with pytest.raises(CheckpointError) as error:
        LoraSpec.parse(text)
    assert_one_sentence(error, repr(text))


def test_read_lora_takes_the_weight_from_the_argument(lora_files):
    adapter = read_lora(f"{lora_files['peft_unet']}:0.6")
    assert adapter.weight == 0.6 and adapter.path == lora_files["peft_unet"]
    assert read_lora(lora_files["peft_unet"]).weight == 1.0


def test_read_lora_takes_a_save_lora_weights_folder(lora_files, tmp_path):
    folder = lora_files["peft_unet"].parent
    adapter = read_lora(f"{folder}:0.5")
    assert adapter.path == lora_files["peft_unet"] and adapter.weight == 0.5
    assert adapter.sha256 == W.file_sha256(lora_files["peft_unet"])
    with pytest.raises(CheckpointError) as error:
        read_lora(tmp_path)
    assert "pytorch_lora_weights.safetensors" in assert_one_sentence(error, tmp_path)


def test_read_safetensors_numpy_widens_half_precision(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "bf16": torch.randn(3, 5, generator=generator).to(torch.bfloat16),
        "fp16": torch.randn(2, 3, 3, 1, generator=generator).to(torch.float16),
        "fp32": torch.randn(4, generator=generator),
        "fp64": torch.randn(2, 2, generator=generator, dtype=torch.float64),
        "alpha": torch.tensor(8),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "mixed.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"note": "x"})
    arrays, metadata = W.read_safetensors_numpy(path)
    assert metadata == {"note": "x"}
    for name, tensor in tensors.items():
        assert arrays[name].dtype == np.float32 and arrays[name].shape == tuple(tensor.shape)
        np.testing.assert_array_equal(arrays[name], tensor.float().numpy())


def test_read_safetensors_numpy_validates_the_header_first(tmp_path):
    path = tmp_path / "truncated.safetensors"
    save_np(path, {"a": np.ones((64, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as error:
        W.read_safetensors_numpy(path)
    assert "truncated" in assert_one_sentence(error, path)


def test_import_does_not_import_torch():
    code = "import sys, diffrt.runtime.lora; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
