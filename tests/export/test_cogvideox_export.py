"""CogVideoX packages: what `diffrt export` writes (graphs checked against torch, the layout, provenance), a
diffusers/PEFT LoRA fused at export equal to diffusers' load_lora_weights + fuse_lora, the refusals, and
`diffrt generate` writing videos."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffrt.runtime.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder_2b(tmp_path_factory):
    from fixtures import tiny_cogvideox as tc

    return tc.build_cogvideox_2b(tmp_path_factory.mktemp("cv") / "2b")


@pytest.fixture(scope="module")
def package_2b(folder_2b, tmp_path_factory):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    return export_package(load_source(folder_2b), tmp_path_factory.mktemp("cvp") / "2b", ExportOptions(batch=2)).path


def test_package_layout_and_checked_graphs(package_2b):
    index = json.loads((package_2b / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"
    for name in ("text_encoder", "transformer", "vae_encoder", "vae_decoder"):
        assert (package_2b / name / "model.onnx").is_file() and index[name][1] == "OnnxRuntimeModel"
    assert (package_2b / "tokenizer" / "tokenizer.json").is_file()
    provenance = json.loads((package_2b / "diffrt.json").read_text())
    for name, graph in provenance["networks"].items():
        check = graph["check"]
        assert check and len(check["sizes"]) >= 2, name
        assert check["max_rel_error"] < 1e-4, (name, check)


def test_vae_steps_carry_their_cache_in_one_graph(package_2b):
    """One decoder graph serves the first batch (no cache, odd frame count) and later ones (cache, even count)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(package_2b / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    assert inputs["has_cache"].type == "tensor(bool)"
    caches = [n for n in inputs if n.startswith("cache_in.")]
    assert caches and [o.name for o in session.get_outputs()][1:] == [c.replace("_in", "_out") for c in caches]


def peft_lora(folder, path, seed: int = 0):
    """A random PEFT LoRA (rank 4, alpha 8) on the transformer's attention, saved as diffusers saves it."""
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(CogVideoXTransformer3DModel.from_pretrained(folder, subfolder="transformer"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    model.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    CogVideoXPipeline.save_lora_weights(
        path, transformer_lora_layers=state, transformer_lora_adapter_metadata=config.to_dict()
    )
    return path / "pytorch_lora_weights.safetensors"


def test_lora_fused_at_export_equals_diffusers(folder_2b, tmp_path):
    from pipeline_parity import load_diffusers, shared_noise

    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.runtime.pipelines import CogVideoXPipeline

    lora = peft_lora(folder_2b, tmp_path / "lora")
    package = export_package(
        load_source(folder_2b), tmp_path / "fused", ExportOptions(batch=2, loras=(f"{lora}:0.7",))
    ).path
    provenance = json.loads((package / "diffrt.json").read_text())
    assert provenance["loras"][0]["modules"]["transformer"] == 4 * 2  # 4 projections x 2 blocks
    theirs = load_diffusers("CogVideoXPipeline", folder_2b, clip_skip_shim=False)
    theirs.load_lora_weights(lora, adapter_name="motion")
    theirs.set_adapters(["motion"], adapter_weights=[0.7])
    theirs.fuse_lora(components=["transformer"])
    mine = CogVideoXPipeline.from_pretrained(package, provider="cpu")
    mine.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a ball", num_frames=9, num_inference_steps=2, guidance_scale=4.0)
    with shared_noise(3), torch.no_grad():
        want = np.asarray(theirs(**kwargs, output_type="np").frames)
    got = np.asarray(mine(**kwargs, generator=3, output_type="np").frames)
    assert np.abs(got - want).max() <= 2e-3
    plain = load_diffusers("CogVideoXPipeline", folder_2b, clip_skip_shim=False)
    with shared_noise(3), torch.no_grad():
        without = np.asarray(plain(**kwargs, output_type="np").frames)
    assert np.abs(without - want).max() > 1e-2, "the LoRA changed nothing: the comparison would prove nothing"


def test_text_encoder_lora_is_refused_by_name(folder_2b, tmp_path):
    import safetensors.torch

    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    bad = tmp_path / "te.safetensors"
    safetensors.torch.save_file(
        {
            "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(2, 32),
            "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": torch.zeros(32, 2),
        },
        str(bad),
    )
    with pytest.raises(CheckpointError, match="te.safetensors"):
        export_package(load_source(folder_2b), tmp_path / "out", ExportOptions(loras=(str(bad),)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_generate_cli_writes_a_video(package_2b, tmp_path, suffix):
    from diffrt.runtime import load_video

    out = tmp_path / f"clip{suffix}"
    result = subprocess.run(
        [sys.executable, "-m", "diffrt", "generate", str(package_2b), "a ball", "--steps", "2", "--frames", "9",
         "--seed", "1", "--out", str(out), "--provider", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = load_video(out)
    assert len(frames) == 9 and frames[0].size == (32, 32)


def test_generate_cli_refuses_image_files_for_video_packages(package_2b, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "diffrt", "generate", str(package_2b), "a ball", "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "not a video file" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_lora_at_run_time_equals_lora_fused_at_export(folder_2b, package_2b, tmp_path):
    """A package with LoRA slots in its transformer: the adapter chosen per call gives the fused package's frames,
    and a call without adapters gives the plain package's."""
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.runtime.pipelines import CogVideoXPipeline

    lora = peft_lora(folder_2b, tmp_path / "lora", seed=1)
    source = load_source(folder_2b)
    slotted = export_package(source, tmp_path / "slotted", ExportOptions(batch=2, lora_slots=8)).path
    fused = export_package(
        load_source(folder_2b), tmp_path / "fused", ExportOptions(batch=2, loras=(f"{lora}:0.7",))
    ).path
    kwargs = dict(
        prompt="a ball", num_frames=9, num_inference_steps=2, guidance_scale=4.0, generator=3, output_type="np"
    )
    pipes = {}
    for name, path in (("slotted", slotted), ("fused", fused), ("plain", package_2b)):
        pipes[name] = CogVideoXPipeline.from_pretrained(path, provider="cpu")
        pipes[name].set_progress_bar_config(disable=True)
    pipes["slotted"].load_lora_weights(str(lora), adapter_name="motion")
    with_adapter = pipes["slotted"](**kwargs, adapters={"motion": 0.7}).frames
    without = pipes["slotted"](**kwargs, adapters={}).frames
    assert pipes["slotted"].get_list_adapters() == {"transformer": ["motion"]}
    assert np.abs(with_adapter - pipes["fused"](**kwargs).frames).max() <= 1e-4
    assert np.abs(without - pipes["plain"](**kwargs).frames).max() <= 1e-5
    assert np.abs(with_adapter - without).max() > 1e-2
