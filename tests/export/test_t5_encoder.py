"""A tiny T5 encoder exports to ONNX under its contract and ONNX Runtime matches transformers on real token ids."""

import json

import numpy as np
import pytest
import torch
from fixtures.tiny_cogvideox import build_t5_text_encoder, build_t5_tokenizer

from diffrt.export.onnx_export import compare_graph, export_graph, reference_outputs
from diffrt.export.source import Component
from diffrt.export.t5_encoder import build_t5_encoder
from diffrt.runtime.errors import CheckpointError, ConfigError
from diffrt.runtime.networks import t5_encoder_network
from diffrt.runtime.t5_tokenizer import T5Tokenizer

PROMPTS = [
    "a photograph of an astronaut riding a horse on the moon",
    "",
    "a panda playing guitar, cinematic \u2026 \ufb01ne \U0001f431",
    "a cat " * 150,  # truncated at 226
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5_encoder")
    tokenizer = build_t5_tokenizer(root / "tokenizer")
    vocab_size = T5Tokenizer.from_pretrained(tokenizer).vocab_size
    return {"tokenizer": tokenizer, "text_encoder": build_t5_text_encoder(root / "text_encoder", vocab_size, seed=3)}


@pytest.fixture(scope="module")
def exported(folders, tmp_path_factory):
    network, module = build_t5_encoder(folders["text_encoder"])
    report = export_graph(module, network, tmp_path_factory.mktemp("graph") / "text_encoder", (2, 64, 64))
    return network, module, report


def test_contract():
    network = t5_encoder_network({"d_model": 32, "vocab_size": 205})
    assert network.input_names == ["input_ids"] and network.output_names == ["last_hidden_state"]
    assert network.shapes(2, 64, 64) == {"input_ids": (2, 226), "last_hidden_state": (2, 226, 32)}
    assert network.inputs[0].dtype == "int64" and network.outputs[0].dtype == "float32"
    assert network.dynamic_axes() == {
        "input_ids": {0: "batch", 1: "sequence"},
        "last_hidden_state": {0: "batch", 1: "sequence"},
    }
    assert t5_encoder_network({"d_model": 4096, "vocab_size": 32128}, 77).shapes(1, 8, 8)["input_ids"] == (1, 77)
    with pytest.raises(ConfigError, match="d_model=None"):
        t5_encoder_network({"vocab_size": 10})
    with pytest.raises(ConfigError, match="sequence_length=0"):
        t5_encoder_network({"d_model": 8, "vocab_size": 10}, 0)


def test_graph_matches_transformers_on_tokenizer_ids(folders, exported):
    import onnxruntime as ort
    from transformers import T5EncoderModel

    network, _, report = exported
    assert report.path.is_file() and not report.external_data
    reference = T5EncoderModel.from_pretrained(folders["text_encoder"], local_files_only=True).eval()
    tokenizer = T5Tokenizer.from_pretrained(folders["tokenizer"])
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    worst = 0.0
    for prompts in (PROMPTS[:1], PROMPTS):  # batch 1 and 4, the full 226 tokens
        ids = tokenizer(prompts, max_length=226).input_ids
        assert ids.shape == (len(prompts), 226)
        with torch.no_grad():
            want = reference(torch.from_numpy(ids)).last_hidden_state.numpy()  # no mask, as diffusers calls it
        (got,) = session.run(["last_hidden_state"], {"input_ids": ids})
        assert got.shape == want.shape == (len(prompts), 226, 32) and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    print(f"T5 encoder ONNX vs transformers: max relative error {worst:.2e}")
    assert worst < 1e-4


def test_dynamic_sequence_and_random_ids(exported):
    network, module, report = exported
    references = reference_outputs(module, network, [(1, 64, 64), (3, 64, 64)])
    abs_err, rel_err = compare_graph(report.path, network, references)
    assert rel_err < 1e-4, (abs_err, rel_err)
    short = t5_encoder_network({"d_model": 32, "vocab_size": network.vocab_size}, sequence_length=77)
    assert compare_graph(report.path, short, reference_outputs(module, short, [(2, 64, 64)]))[1] < 1e-4


def test_component_and_model_sources_build_the_same_module(folders):
    from transformers import T5EncoderModel

    from diffrt.export import weights

    folder = folders["text_encoder"]
    config = json.loads((folder / "config.json").read_text())
    component = Component("text_encoder", "T5EncoderModel", config, lambda: weights.load_component_weights(folder))
    ids = torch.from_numpy(np.arange(40, dtype=np.int64).reshape(2, 20) % config["vocab_size"])
    outputs = []
    for source in (folder, component, T5EncoderModel.from_pretrained(folder, local_files_only=True)):
        network, module = build_t5_encoder(source)
        assert network.name == "text_encoder" and network.vocab_size == config["vocab_size"]
        with torch.no_grad():
            outputs.append(module(ids)[0])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.testing.assert_close(outputs[0], outputs[2], rtol=1e-5, atol=1e-6)


def test_embedding_saved_under_either_name_loads(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = folders["text_encoder"]
    state = load_file(folder / "model.safetensors")
    assert "shared.weight" in state and "encoder.embed_tokens.weight" not in state  # transformers 5 keeps one
    other = tmp_path / "embed_tokens_only"
    other.mkdir()
    (other / "config.json").write_text((folder / "config.json").read_text())
    state["encoder.embed_tokens.weight"] = state.pop("shared.weight").half()  # fp16 weights load as float32
    save_file(state, other / "model.safetensors")
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        a = build_t5_encoder(folder)[1](ids)[0]
        b = build_t5_encoder(other)[1](ids)[0]
    assert b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_errors(folders, tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        build_t5_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(CheckpointError, match="accepted: a T5EncoderModel"):
        build_t5_encoder(tmp_path)
    (tmp_path / "config.json").write_text((folders["text_encoder"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="holds no weights"):
        build_t5_encoder(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        build_t5_encoder(tmp_path)
    config = json.loads((folders["text_encoder"] / "config.json").read_text())
    bad = Component("text_encoder", "T5EncoderModel", {**config, "d_ff": 48}, lambda: _weights(folders))
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        build_t5_encoder(bad)
    with pytest.raises(CheckpointError, match="is a CLIPTextModel"):
        build_t5_encoder(Component("text_encoder", "CLIPTextModel", config, dict))


def _weights(folders):
    from diffrt.export import weights

    return weights.load_component_weights(folders["text_encoder"])
