"""`diffrt quantize` and `diffrt export --quantize int8`: the UNet made static-QDQ int8, calibrated by the package's
own pipeline, recorded in diffrt.json, and still drawing what the float package draws."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest

from diffrt.runtime.errors import ConfigError, PackageError

PROMPTS = ("a photograph of an astronaut riding a horse", "a red car at night", "a bowl of fruit")


@pytest.fixture(scope="module")
def int8(packages, tmp_path_factory):
    from diffrt.runtime.quantize import Calibration, quantize_package

    out = tmp_path_factory.mktemp("int8") / "sd1"
    record = quantize_package(packages["sd1"], out, calibration=Calibration(prompts=PROMPTS, steps=3))
    return out, record


def _graph(package) -> onnx.ModelProto:
    return onnx.load(str(package / "unet" / "model.onnx"), load_external_data=False)


def test_the_unet_is_int8_qdq_with_the_first_and_last_convolutions_in_float(packages, int8):
    out, record = int8
    graph = _graph(out)
    ops = Counter(node.op_type for node in graph.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert ops["MultiHeadAttention"] > 0  # attention fused before quantizing, and left in float
    producers = {output: node for node in graph.graph.node for output in node.output}
    initializers = {init.name: init for init in graph.graph.initializer}

    def weight_is_int8(node) -> bool:
        source = producers.get(node.input[1])
        return (
            source is not None
            and source.op_type == "DequantizeLinear"
            and initializers[source.input[0]].data_type == onnx.TensorProto.INT8
        )

    nodes = {node.name: node for node in graph.graph.node}
    shortcuts = sorted(name for name in nodes if name.endswith("/conv_shortcut/Conv"))
    assert shortcuts
    for kept in ("/model/conv_in/Conv", "/model/conv_out/Conv", *shortcuts):
        assert not weight_is_int8(nodes[kept])
        assert initializers[nodes[kept].input[1]].data_type == onnx.TensorProto.FLOAT
    int8_nodes = [n for n in graph.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and weight_is_int8(n)]
    report = record["networks"]["unet"]
    assert len(int8_nodes) == report["quantized_nodes"] > 20
    assert sorted(report["kept_fp32"]) == sorted(["/model/conv_in/Conv", "/model/conv_out/Conv", *shortcuts])
    # Per-channel weights: each convolution's weight scale has one entry per output channel.
    conv = next(n for n in int8_nodes if n.op_type == "Conv")
    scale = initializers[producers[conv.input[1]].input[1]]
    assert len(scale.dims) == 1 and scale.dims[0] == initializers[producers[conv.input[1]].input[0]].dims[0] > 1
    size = lambda p: sum(f.stat().st_size for f in (p / "unet").iterdir())  # noqa: E731
    assert size(out) < 0.5 * size(packages["sd1"])


def test_diffrt_json_records_the_quantization_and_keeps_the_export_record(packages, int8):
    out, record = int8
    provenance = json.loads((out / "diffrt.json").read_text())
    original = json.loads((packages["sd1"] / "diffrt.json").read_text())
    assert provenance["quantization"] == record
    assert {k: v for k, v in provenance.items() if k != "quantization"} == original
    unet = record["networks"]["unet"]
    assert unet["options"]["weights"] == "int8 per-channel" and unet["options"]["activations"] == "uint8 per-tensor"
    assert record["calibration"]["prompts"] == list(PROMPTS) and record["calibration"]["steps"] == 3
    # Two calibration calls of 3 steps or more (PNDM adds one); the third call checks the result.
    assert unet["calibration_samples"] >= 2 * 3 and 0 < unet["max_rel_error"] < 0.25
    # The other networks are the float package's files, unchanged.
    for name in ("text_encoder", "vae_decoder"):
        assert (out / name / "model.onnx").read_bytes() == (packages["sd1"] / name / "model.onnx").read_bytes()


def test_the_int8_package_draws_close_to_the_float_one(packages, int8):
    from diffrt.runtime import StableDiffusionPipeline

    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 16)).astype(np.float32)
    images = []
    for package in (packages["sd1"], int8[0]):
        pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe("a red car at night", num_inference_steps=4, latents=latents, output_type="np").images)
    assert pipe.package.quantized_networks == ("unet",)
    diff = np.abs(images[0] - images[1])
    assert 0 < diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())


def test_refusals_name_the_problem(packages, int8, tmp_path):
    from diffrt.runtime.quantize import Calibration, quantize_package

    with pytest.raises(PackageError, match="already quantized"):
        quantize_package(int8[0], tmp_path / "again")
    with pytest.raises(ConfigError, match="accepted: a non-empty list of"):
        quantize_package(packages["sd1"], tmp_path / "bad", networks=["vae_encoder"])
    with pytest.raises(ConfigError, match="at least 2 prompts"):
        Calibration(prompts=("one",))
    with pytest.raises(PackageError, match="int8 calibration drives"):
        quantize_package(packages["depth"], tmp_path / "depth")
    assert not any(tmp_path.iterdir())


def test_loras_are_not_fused_into_int8_weights(int8, lora_files, tmp_path):
    from diffrt.export.lora_package import apply_loras
    from diffrt.runtime.lora import LoraSpec

    with pytest.raises(PackageError, match="apply the adapters to the float package, then quantize"):
        apply_loras(int8[0], tmp_path / "with-lora", [LoraSpec(lora_files["peft_unet"], 1.0)])
    assert not (tmp_path / "with-lora").exists()


def test_a_failed_quantization_leaves_nothing_behind(packages, tmp_path, monkeypatch):
    import diffrt.kernels.quantize as kernel
    from diffrt.runtime.quantize import Calibration, quantize_package

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(kernel, "quantize_graph", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_package(packages["sd1"], tmp_path / "out", calibration=Calibration(prompts=PROMPTS[:2], steps=1))
    assert list(tmp_path.iterdir()) == []


def test_an_inpainting_unet_is_calibrated_by_the_inpainting_pipeline(packages, tmp_path):
    from diffrt.runtime.quantize import Calibration, quantize_package

    record = quantize_package(packages["inpaint"], tmp_path / "inpaint", calibration=Calibration(PROMPTS[:2], steps=2))
    graph = _graph(tmp_path / "inpaint")
    assert graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value in (0, 9)
    assert record["networks"]["unet"]["quantized_nodes"] > 20


def test_export_quantize_int8_and_the_quantize_command(tiny_models, packages, tmp_path, monkeypatch):
    from diffrt.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\na bird\n")
    out = tmp_path / "exported"
    calibration = ["--calibration-prompts", str(prompts), "--calibration-steps", "2"]
    assert main(["export", str(tiny_models["sd1"]), str(out), "--no-check", "--quantize", "int8", *calibration]) == 0
    record = json.loads((out / "diffrt.json").read_text())["quantization"]
    assert record["calibration"]["prompts"] == ["a cat", "a dog", "a bird"]
    assert record["networks"]["unet"]["quantized_nodes"] > 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    # `diffrt quantize` writes a new package and will not overwrite one without --force.
    target = tmp_path / "quantized"
    cache = tmp_path / "graph-cache"
    monkeypatch.setenv("DIFFRT_CACHE", str(cache))
    quantize = ["quantize", str(packages["sd1"]), str(target), *calibration, "--keep-fp32", "*/conv_out/*"]
    assert main([*quantize, "--warm-cache"]) == 0
    # --warm-cache built this machine's optimized graphs of every network of the new package into the cache.
    assert len([entry for entry in (cache / "ort").iterdir() if entry.is_dir()]) >= 3
    kept = json.loads((target / "diffrt.json").read_text())["quantization"]["networks"]["unet"]["kept_fp32"]
    assert kept == ["/model/conv_out/Conv"]
    assert main(["quantize", str(packages["sd1"]), str(target), *calibration]) == 1


def test_the_output_folder_is_checked_before_anything_is_written(packages, tmp_path):
    from diffrt.runtime.quantize import check_out

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(b"not a package")
    with pytest.raises(PackageError, match="exists; pass --force"):
        check_out(packages["sd1"], photos, force=False)
    with pytest.raises(PackageError, match="not an engine package"):
        check_out(packages["sd1"], photos, force=True)
    with pytest.raises(PackageError, match="holds the package"):
        check_out(packages["sd1"], packages["sd1"].parent, force=True)
    link = tmp_path / "link"
    link.symlink_to(photos)
    with pytest.raises(PackageError, match="symbolic link"):
        check_out(packages["sd1"], link, force=True)
    check_out(packages["sd1"], packages["sd1"], force=False)  # in place: replaced once the new one is complete
    assert (photos / "cat.png").read_bytes() == b"not a package"


def test_deepcache_packages_need_a_calibration_call_per_branch(tiny_models, tmp_path):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source
    from diffrt.runtime.quantize import Calibration, quantize_package

    package = export_package(load_source(tiny_models["sd1"]), tmp_path / "dc", ExportOptions(deepcache=True)).path
    with pytest.raises(ConfigError, match=r"at least 3 calibration prompts \(--calibration-prompts\)"):
        quantize_package(package, tmp_path / "int8", calibration=Calibration(PROMPTS[:2], steps=3))
    record = quantize_package(package, tmp_path / "int8", calibration=Calibration(PROMPTS, steps=3))
    assert sorted(record["networks"]) == ["unet", "unet_shallow_0", "unet_shallow_1"]
    for name in ("unet_shallow_0", "unet_shallow_1"):
        assert record["networks"][name]["quantized_nodes"] > 0 and record["networks"][name]["max_rel_error"] < 0.25
    kept = record["networks"]["unet"]["kept_fp32"]  # this export names its nodes without the "/model" prefix
    assert "/conv_in/Conv" in kept and "/conv_out/Conv" in kept and sum("conv_shortcut" in k for k in kept) >= 1
    # The int8 package runs both paths: the cache on and off.
    from diffrt.runtime import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "int8", provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    for interval in (1, 2):
        image = pipe("a cat", num_inference_steps=4, generator=0, output_type="np", cache_interval=interval).images
        assert np.isfinite(image).all()


def test_export_quantize_fails_whole(tiny_models, tmp_path):
    from diffrt.cli import main

    out = tmp_path / "depth"
    # A depth UNet (5 channels) is exported, then refused by calibration: no float package is left posing as int8.
    assert main(["export", str(tiny_models["depth"]), str(out), "--no-check", "--quantize", "int8"]) == 1
    assert not out.exists()
    slots = ["export", str(tiny_models["sd1"]), str(tmp_path / "slots"), "--lora-slots", "4", "--quantize", "int8"]
    assert main(slots) == 1 and not (tmp_path / "slots").exists()
