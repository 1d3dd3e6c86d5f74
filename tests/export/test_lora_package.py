"""LoRA in engine packages: adapters fused at export generate diffusers' fused images, and `diffrt lora apply`
swaps adapters in an exported package to exactly what a fresh export with those adapters gives."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

from diffrt.cli import main
from diffrt.export.graph_folder import WEIGHTS_MAP
from diffrt.export.lora_package import LORA_BASE, apply_loras
from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime import PackageError
from diffrt.runtime.lora import LoraSpec
from diffrt.runtime.pipelines import StableDiffusionPipeline

PROMPT = "a photograph of an astronaut riding a horse"
NETWORKS = ("unet", "text_encoder")


@pytest.fixture(scope="module")
def two_adapters(lora_files):
    return (LoraSpec(lora_files["peft_both"], 0.8), LoraSpec(lora_files["kohya"], 0.5))


@pytest.fixture(scope="module")
def fused_package(tiny_models, two_adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "fused"
    return export_package(load_source(tiny_models["sd1"]), out, ExportOptions(loras=two_adapters)).path


def initializers(package, network) -> dict[str, np.ndarray]:
    model = onnx.load(str(package / network / "model.onnx"))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def assert_same_weights(a, b) -> None:
    for network in NETWORKS:
        left, right = initializers(a, network), initializers(b, network)
        assert left.keys() == right.keys()
        for name in left:
            np.testing.assert_array_equal(left[name], right[name], err_msg=f"{network}: {name}")


def diffusers_fused(folder, adapters):
    pipe = load_diffusers("StableDiffusionPipeline", folder, clip_skip_shim=False)
    names = []
    for i, spec in enumerate(adapters):
        pipe.load_lora_weights(str(spec.path), adapter_name=f"a{i}")
        names.append(f"a{i}")
    pipe.set_adapters(names, adapter_weights=[spec.weight for spec in adapters])
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names)
    return pipe


def test_export_with_two_adapters_generates_diffusers_fused_images(tiny_models, fused_package, two_adapters):
    theirs = diffusers_fused(tiny_models["sd1"], two_adapters)
    mine = StableDiffusionPipeline.from_pretrained(fused_package)
    kwargs = dict(prompt=[PROMPT, "a red cube"], negative_prompt=["blurry", "dark"], num_inference_steps=4)
    assert_images_close(run_diffrt(mine, 3, **kwargs), run_diffusers(theirs, 3, **kwargs))


def test_export_with_a_locon_adapter_generates_diffusers_fused_images(tiny_models, lora_files, tmp_path):
    # 0.2: at 1.0 the fixture's random LoCon is ten times the base weights; activations then grow until torch and
    # ONNX Runtime round differently (the export check's error: 1.2e-6 relative at 0.2, 4e-3 at 1.0).
    adapters = (LoraSpec(lora_files["kohya_locon_bf16"], 0.2), LoraSpec(lora_files["peft_text_encoder"], 0.7))
    package = export_package(load_source(tiny_models["sd1"]), tmp_path / "locon", ExportOptions(loras=adapters)).path
    theirs = diffusers_fused(tiny_models["sd1"], adapters)
    mine = StableDiffusionPipeline.from_pretrained(package)
    kwargs = dict(prompt=PROMPT, num_inference_steps=4)
    assert_images_close(run_diffrt(mine, 5, **kwargs), run_diffusers(theirs, 5, **kwargs))


@pytest.mark.parametrize("name", ["peft_unet", "peft_fp16", "attn_procs", "peft_locon", "kohya_no_alpha"])
def test_export_with_each_format_generates_diffusers_fused_images(tiny_models, lora_files, tmp_path, name):
    adapters = (LoraSpec(lora_files[name], 0.6),)
    package = export_package(
        load_source(tiny_models["sd1"]), tmp_path / name, ExportOptions(loras=adapters, check=False)
    ).path
    theirs = diffusers_fused(tiny_models["sd1"], adapters)
    mine = StableDiffusionPipeline.from_pretrained(package)
    kwargs = dict(prompt=PROMPT, num_inference_steps=3)
    assert_images_close(run_diffrt(mine, 2, **kwargs), run_diffusers(theirs, 2, **kwargs))


def test_adapters_change_the_image(packages, fused_package):
    plain = StableDiffusionPipeline.from_pretrained(packages["sd1"])
    fused = StableDiffusionPipeline.from_pretrained(fused_package)
    kwargs = dict(prompt=PROMPT, num_inference_steps=3)
    assert np.abs(run_diffrt(plain, 0, **kwargs) - run_diffrt(fused, 0, **kwargs)).max() > 0.05


def test_provenance_records_each_adapter_with_its_hash_and_weight(fused_package, two_adapters):
    recorded = json.loads((fused_package / "diffrt.json").read_text())["loras"]
    assert [r["weight"] for r in recorded] == [0.8, 0.5]
    for record, spec in zip(recorded, two_adapters, strict=True):
        assert record["sha256"] == hashlib.sha256(spec.path.read_bytes()).hexdigest()
        assert record["modules"]["unet"] > 0
    assert recorded[0]["modules"]["text_encoder"] > 0 and recorded[1]["format"] == "kohya"


def test_weights_map_covers_every_matrix_and_kernel_of_the_unet_and_text_encoder(packages, tiny_models):
    from safetensors.numpy import load_file

    mapped = json.loads((packages["sd1"] / "unet" / WEIGHTS_MAP).read_text())["parameters"]
    weights = load_file(str(tiny_models["sd1"] / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {k for k, v in weights.items() if v.ndim >= 2} == set(mapped)
    text = json.loads((packages["sd1"] / "text_encoder" / WEIGHTS_MAP).read_text())["parameters"]
    assert "encoder.layers.0.self_attn.q_proj.weight" in text and any(t for e in text.values() for _, t in e)


def test_lora_apply_gives_the_package_a_fresh_export_gives(packages, fused_package, two_adapters, tmp_path):
    applied = apply_loras(packages["sd1"], tmp_path / "applied", two_adapters).path
    assert_same_weights(applied, fused_package)
    for network in ("vae_encoder", "vae_decoder"):  # untouched graphs are copied byte for byte
        assert (applied / network / "model.onnx").read_bytes() == (
            packages["sd1"] / network / "model.onnx"
        ).read_bytes()
    a = StableDiffusionPipeline.from_pretrained(applied)
    b = StableDiffusionPipeline.from_pretrained(fused_package)
    kwargs = dict(prompt=PROMPT, num_inference_steps=3, output_type="np")
    assert np.array_equal(a(**kwargs, generator=1).images, b(**kwargs, generator=1).images)


def test_lora_apply_replaces_adapters_and_never_stacks_them(packages, fused_package, lora_files, tmp_path):
    other = (LoraSpec(lora_files["attn_procs"], 0.7),)
    swapped = apply_loras(fused_package, tmp_path / "swapped", other).path
    from_plain = apply_loras(packages["sd1"], tmp_path / "from_plain", other).path
    assert_same_weights(swapped, from_plain)
    assert json.loads((swapped / "diffrt.json").read_text())["loras"][0]["weight"] == 0.7
    restored = apply_loras(fused_package, tmp_path / "restored", ()).path
    assert_same_weights(restored, packages["sd1"])
    assert not any((restored / n / LORA_BASE).exists() for n in NETWORKS)
    assert json.loads((restored / "diffrt.json").read_text())["loras"] == []


def test_lora_apply_in_place_needs_force(packages, lora_files, tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(packages["sd1"], package)
    spec = (LoraSpec(lora_files["peft_unet"]),)
    with pytest.raises(Exception, match="pass --force"):
        apply_loras(package, package, spec)
    apply_loras(package, package, spec, force=True)
    assert json.loads((package / "diffrt.json").read_text())["loras"][0]["modules"]["unet"] > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_lora_apply_refuses_a_package_without_a_weights_map(packages, lora_files, tmp_path):
    package = tmp_path / "old"
    shutil.copytree(packages["sd1"], package)
    (package / "unet" / WEIGHTS_MAP).unlink()
    with pytest.raises(PackageError, match="weights.json"):
        apply_loras(package, tmp_path / "out", (LoraSpec(lora_files["peft_unet"]),))
    assert not (tmp_path / "out").exists()


def test_cli_export_and_lora_apply(tiny_models, lora_files, packages, tmp_path, capsys):
    first, second = f"{lora_files['peft_unet']}:0.6", f"{lora_files['kohya']}:0.3"
    out = tmp_path / "cli"
    assert main(["export", str(tiny_models["sd1"]), str(out), "--lora", first, "--lora", second, "--no-check"]) == 0
    applied = tmp_path / "cli_applied"
    assert main(["lora", "apply", str(packages["sd1"]), str(applied), "--lora", first, "--lora", second]) == 0
    assert "weights rewritten" in capsys.readouterr().out
    assert_same_weights(out, applied)


def test_cli_reports_a_file_without_lora_keys_in_one_line(packages, tmp_path, capsys):
    from safetensors.numpy import save_file

    bogus = tmp_path / "not_a_lora.safetensors"
    save_file({"some.weight": np.zeros((2, 2), np.float32)}, str(bogus))
    assert main(["lora", "apply", str(packages["sd1"]), str(tmp_path / "out"), "--lora", str(bogus)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffrt lora: ") and "not_a_lora.safetensors" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
