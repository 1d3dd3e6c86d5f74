"""TensorRT plans without TensorRT: folders, cache keys, content hashes, shape contracts and profiles, which plan
fits, and `diffrt engines` where TensorRT (or the GPU) is missing."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from diffrt import cli
from diffrt.runtime import networks
from diffrt.runtime.engines import choice, cuda, trt_plans
from diffrt.runtime.engines import cli as engines_cli
from diffrt.runtime.engines.trt_plans import PlanMetadata
from diffrt.runtime.errors import BackendUnavailable, ConfigError, PackageError
from diffrt.runtime.networks import ShapeRange

TRT = "10.8.0.43"
CC = (9, 0)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """``import tensorrt`` fails here, whether or not it is installed; and the backend is imported afresh."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.delitem(sys.modules, "diffrt.runtime.engines.trt", raising=False)


@pytest.fixture
def engines_command():
    """``diffrt engines`` through the real `diffrt` main."""
    assert "engines" in cli.COMMANDS
    return lambda *args: cli.main(["engines", *map(str, args)])


@pytest.fixture
def sd1(packages, tmp_path):
    """A private copy of the tiny SD1 package, free to get plans and rewritten graphs."""
    trt_plans.clear_hash_memo()
    return Path(shutil.copytree(packages["sd1"], tmp_path / "sd1"))


def fake_package(root: Path, data: bytes = b"weights" * 100) -> Path:
    """A package folder with a unet graph (arbitrary bytes) and external data: enough for hashing."""
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    (root / "unet" / "model.onnx").write_bytes(b"graph")
    (root / "unet" / "model.onnx.data").write_bytes(data)
    (root / "unet" / "config.json").write_text("{}")
    return root


def metadata_for(package: Path, name: str = "unet", **changes) -> PlanMetadata:
    fields = {
        "network": name,
        "onnx_sha256": trt_plans.onnx_digest(package / name / "model.onnx"),
        "tensorrt": TRT,
        "compute_capability": CC,
        "profile": {"sample": ((1, 4, 8, 8), (2, 4, 16, 16), (8, 4, 32, 32))},
        "precision": "fp16",
        "refittable": False,
    }
    fields.update(changes)
    return PlanMetadata(**fields)


def store_plan(package: Path, name: str = "unet", plan: bytes = b"serialized engine", **changes) -> Path:
    meta = metadata_for(package, name, **changes)
    folder = trt_plans.plan_folder(package, meta.compute_capability, meta.tensorrt)
    return trt_plans.write_plan(folder, name, plan, meta)


# ----- folders and keys -------------------------------------------------------------------------------------------
def test_plan_folders_are_named_by_gpu_architecture_and_tensorrt_version(tmp_path):
    assert trt_plans.plan_folder(tmp_path, (9, 0), "10.8.0.43") == tmp_path / "engines" / "sm90-trt10.8.0"
    assert trt_plans.plan_folder(tmp_path, (8, 6), "10.3.0") == tmp_path / "engines" / "sm86-trt10.3.0"
    assert trt_plans.plan_files(tmp_path, "unet") == (tmp_path / "unet.plan", tmp_path / "unet.json")


BASE_KEY = {
    "onnx_sha256": "a" * 64,
    "trt_version": TRT,
    "compute_capability": CC,
    "profile": {"sample": ((1, 4, 8, 8), (2, 4, 16, 16), (8, 4, 32, 32)), "encoder_hidden_states": ((1, 77, 32),) * 3},
    "precision": "fp16",
    "refittable": False,
}


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"trt_version": "10.8.0.44"},
        {"compute_capability": (8, 9)},
        {"profile": {**BASE_KEY["profile"], "sample": ((1, 4, 8, 8), (2, 4, 16, 16), (8, 4, 64, 64))}},
        {"profile": {"sample": BASE_KEY["profile"]["sample"]}},
        {"precision": "fp32"},
        {"precision": "bf16"},
        {"refittable": True},
    ],
)
def test_the_cache_key_changes_with_each_thing_that_decides_the_plan(change):
    assert trt_plans.cache_key(**{**BASE_KEY, **change}) != trt_plans.cache_key(**BASE_KEY)


def test_the_cache_key_ignores_how_the_same_profile_is_spelled():
    respelled = {name: [list(s) for s in shapes] for name, shapes in reversed(list(BASE_KEY["profile"].items()))}
    same = {**BASE_KEY, "profile": respelled, "compute_capability": list(CC)}
    assert trt_plans.cache_key(**same) == trt_plans.cache_key(**BASE_KEY)


# ----- content hashes ---------------------------------------------------------------------------------------------
def test_the_onnx_digest_covers_the_graph_and_its_external_data_only(tmp_path):
    package = fake_package(tmp_path / "pkg")
    model = package / "unet" / "model.onnx"
    first = trt_plans.onnx_digest(model)
    assert trt_plans.onnx_files(model) == [model, package / "unet" / "model.onnx.data"]
    (package / "unet" / "config.json").write_text('{"changed": true}')  # not part of the graph
    (package / "unet" / "weights.json").write_text("{}")
    assert trt_plans.onnx_digest(model) == first
    moved = Path(shutil.copytree(package, tmp_path / "elsewhere"))  # content, not location
    assert trt_plans.onnx_digest(moved / "unet" / "model.onnx") == first
    (package / "unet" / "model.onnx.data").write_bytes(b"other weights")
    assert trt_plans.onnx_digest(model) != first
    (package / "unet" / "model.onnx.data").unlink()
    assert trt_plans.onnx_digest(model) != first
    with pytest.raises(PackageError, match="does not exist"):
        trt_plans.onnx_digest(package / "vae_decoder" / "model.onnx")


def test_file_hashes_are_memoised_by_size_and_mtime_in_a_sidecar(tmp_path, monkeypatch):
    package = fake_package(tmp_path / "pkg")
    model = package / "unet" / "model.onnx"
    data = package / "unet" / "model.onnx.data"
    hashed = []
    real = trt_plans._sha256_file
    monkeypatch.setattr(trt_plans, "_sha256_file", lambda path: hashed.append(path.name) or real(path))
    trt_plans.clear_hash_memo()

    first = trt_plans.onnx_digest(model)
    assert sorted(hashed) == ["model.onnx", "model.onnx.data"]
    assert not (package / "engines").exists(), "no engines/ folder is made just to memoise hashes"
    hashed.clear()
    assert trt_plans.onnx_digest(model) == first and hashed == []  # the process remembers

    (package / "engines").mkdir()  # once plans exist, the memo is kept beside them
    trt_plans.clear_hash_memo()
    trt_plans.onnx_digest(model)
    memo = json.loads((package / "engines" / "hashes.json").read_text())["files"]
    assert set(memo) == {"unet/model.onnx", "unet/model.onnx.data"}
    hashed.clear()
    trt_plans.clear_hash_memo()  # a new process: the sidecar answers
    assert trt_plans.onnx_digest(model) == first and hashed == []

    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: hashed again, same content
    assert trt_plans.onnx_digest(model) == first and hashed == ["model.onnx.data"]
    hashed.clear()
    trt_plans.clear_hash_memo()
    with open(data, "ab") as f:  # grown, mtime set back: the size still gives it away
        f.write(b"!")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert trt_plans.onnx_digest(model) != first and hashed == ["model.onnx.data"]


def test_a_corrupt_hash_memo_is_ignored(tmp_path):
    package = fake_package(tmp_path / "pkg")
    (package / "engines").mkdir()
    (package / "engines" / "hashes.json").write_text("{not json")
    trt_plans.clear_hash_memo()
    digest = trt_plans.onnx_digest(package / "unet" / "model.onnx")
    assert json.loads((package / "engines" / "hashes.json").read_text())["files"]
    trt_plans.clear_hash_memo()
    assert trt_plans.onnx_digest(package / "unet" / "model.onnx") == digest


# ----- shape contracts and profiles -------------------------------------------------------------------------------
def graph_io(model: Path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


@pytest.mark.parametrize("kind", ["sd1", "sd2", "inpaint", "depth", "ddpm"])
def test_network_for_gives_each_packaged_graph_its_contract(packages, kind):
    package = packages[kind]
    names = trt_plans.package_networks(package)
    assert "unet" in names
    for name in names:
        network = trt_plans.network_for(package, name)
        assert network.name == name
        inputs, outputs = graph_io(package / name / "model.onnx")
        assert network.input_names == inputs and network.output_names == outputs


def test_network_for_reads_the_configs_export_wrote(packages):
    package = packages["sd1"]
    read = lambda part: json.loads((package / part / "config.json").read_text())
    scale = networks.vae_scale_factor(read("vae_decoder"))
    assert trt_plans.network_for(package, "unet") == networks.unet_network(read("unet"), scale)
    assert trt_plans.network_for(package, "vae_decoder") == networks.vae_decoder_network(read("vae_decoder"), scale)
    assert trt_plans.network_for(package, "text_encoder") == networks.text_encoder_network(read("text_encoder"))
    depth = trt_plans.network_for(packages["depth"], "depth_estimator")
    preprocessor = json.loads((packages["depth"] / "depth_estimator" / "preprocessor_config.json").read_text())
    assert depth.fixed_dims == {
        "depth_height": preprocessor["size"]["height"],
        "depth_width": preprocessor["size"]["width"],
    }
    assert trt_plans.network_for(packages["ddpm"], "unet").batch_multiplier == 1  # unconditional: no guidance
    with pytest.raises(PackageError, match="has no vae_decoder/model.onnx"):
        trt_plans.network_for(packages["ddpm"], "vae_decoder")
    with pytest.raises(ConfigError, match="accepted"):
        trt_plans.network_for(package, "controlnet")


def test_profiles_double_the_unet_batch_for_guidance_and_work_in_latents(packages):
    package = packages["sd1"]
    shape_range = trt_plans.shape_range_for(package)
    provenance = json.loads((package / "diffrt.json").read_text())["shape_range"]
    assert shape_range == ShapeRange.from_json(provenance)
    scale = trt_plans.network_for(package, "vae_decoder").scale_factor
    (b_min, b_opt, b_max), (h_min, h_opt, h_max), (w_min, w_opt, w_max) = (
        shape_range.batch,
        shape_range.height,
        shape_range.width,
    )
    unet = trt_plans.build_profile(trt_plans.network_for(package, "unet"), shape_range)
    low, opt, high = unet["sample"]
    assert opt == (2 * b_opt, 4, h_opt // scale, w_opt // scale)  # guided: cond + uncond per image
    assert high == (2 * b_max, 4, h_max // scale, w_max // scale)
    assert low == (b_min, 4, h_min // scale, w_min // scale)  # unguided runs fit too
    assert unet["encoder_hidden_states"][2] == (2 * b_max, 77, 32)
    assert unet["timestep"] == ((b_min,), (2 * b_opt,), (2 * b_max,))  # one per sample
    decoder = trt_plans.build_profile(trt_plans.network_for(package, "vae_decoder"), shape_range)
    assert decoder["latent_sample"] == (
        (b_min, 4, h_min // scale, w_min // scale),
        (b_opt, 4, h_opt // scale, w_opt // scale),
        (b_max, 4, h_max // scale, w_max // scale),
    )
    encoder = trt_plans.build_profile(trt_plans.network_for(package, "vae_encoder"), shape_range)
    assert encoder["sample"][2] == (b_max, 3, h_max, w_max)  # pixels in
    text = trt_plans.build_profile(trt_plans.network_for(package, "text_encoder"), shape_range)
    assert text["input_ids"] == ((b_min, 77), (b_opt, 77), (b_max, 77))


@pytest.mark.parametrize("kind", ["sdxl", "sdxl_inpaint", "sdxl_refiner"])
def test_network_for_gives_each_sdxl_graph_its_contract(sdxl_packages, kind):
    package = sdxl_packages[kind]
    names = trt_plans.package_networks(package)
    assert "text_encoder_2" in names and ("text_encoder" in names) == (kind != "sdxl_refiner")
    for name in names:
        network = trt_plans.network_for(package, name)
        inputs, outputs = graph_io(package / name / "model.onnx")
        assert network.input_names == inputs and network.output_names == outputs


def test_sdxl_unet_profile_sizes_text_embeds_from_text_encoder_2(sdxl_packages):
    for kind, time_ids in (("sdxl", 6), ("sdxl_refiner", 5)):
        package = sdxl_packages[kind]
        projection = json.loads((package / "text_encoder_2" / "config.json").read_text())["projection_dim"]
        shape_range = trt_plans.shape_range_for(package)
        unet = trt_plans.build_profile(trt_plans.network_for(package, "unet"), shape_range)
        b_max = 2 * shape_range.batch[2]
        assert unet["text_embeds"][2] == (b_max, projection)
        assert unet["time_ids"][2] == (b_max, time_ids)
        text_2 = trt_plans.network_for(package, "text_encoder_2")
        assert text_2.outputs[1].name == "text_embeds"


def test_shape_range_overrides_and_fixed_size_packages(packages, tmp_path):
    package = packages["sd1"]
    custom = trt_plans.shape_range_for(package, batch=(1, 2, 3), height=(32, 64, 128))
    assert custom.batch == (1, 2, 3) and custom.height == (32, 64, 128)
    assert custom.width == trt_plans.shape_range_for(package).width
    unet = trt_plans.build_profile(trt_plans.network_for(package, "unet"), custom)
    assert unet["sample"][1][0] == 4 and unet["sample"][2][2] == 64
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        trt_plans.shape_range_for(package, height=(64, 32, 128))
    static = tmp_path / "static"
    static.mkdir()
    (static / "diffrt.json").write_text(
        json.dumps({"shape_range": ShapeRange.around(64, 64, static=True).to_json(), "export": {"static": [64, 64]}})
    )
    assert trt_plans.shape_range_for(static).height == (64, 64, 64)
    with pytest.raises(ConfigError, match="fixed size of 64x64"):
        trt_plans.shape_range_for(static, height=(32, 64, 128))
    with pytest.raises(ConfigError, match="fixed size of 64x64"):
        trt_plans.shape_range_for(static, height=(32, 32, 32), width=(32, 32, 32))
    assert trt_plans.shape_range_for(tmp_path) == ShapeRange()  # exported elsewhere: diffrt's default range


def test_precision_resolution():
    assert trt_plans.resolve_precision("auto", (8, 6)) == "fp16"
    assert trt_plans.resolve_precision("auto", (8, 6), fast_fp16=False) == "fp32"
    assert trt_plans.resolve_precision("bf16", (9, 0)) == "bf16"
    assert trt_plans.resolve_precision("fp32", (7, 5)) == "fp32"
    with pytest.raises(ConfigError, match="compute capability 8.0"):
        trt_plans.resolve_precision("bf16", (7, 5))
    with pytest.raises(ConfigError, match="accepted"):
        trt_plans.resolve_precision("int8", (9, 0))


def test_shapes_outside_the_profile_are_refused_naming_the_range():
    profile = {"sample": ((1, 4, 8, 8), (2, 4, 16, 16), (8, 4, 32, 32))}
    trt_plans.check_shapes(profile, {"sample": (1, 4, 8, 8), "timestep": ()}, "unet")
    trt_plans.check_shapes(profile, {"sample": (8, 4, 32, 32)}, "unet")
    with pytest.raises(ConfigError) as error:
        trt_plans.check_shapes(profile, {"sample": (2, 4, 64, 64)}, "unet")
    message = str(error.value)
    assert "'sample'" in message and "(2, 4, 64, 64)" in message
    assert "(1, 4, 8, 8)" in message and "(8, 4, 32, 32)" in message and "diffrt engines build" in message
    with pytest.raises(ConfigError, match="outside"):
        trt_plans.check_shapes(profile, {"sample": (16, 4, 8, 8)}, "unet")
    with pytest.raises(ConfigError, match="outside"):
        trt_plans.check_shapes(profile, {"sample": (2, 4, 16)}, "unet")


# ----- storing and choosing plans ---------------------------------------------------------------------------------
def test_metadata_round_trips_and_its_key_is_the_cache_key(tmp_path):
    package = fake_package(tmp_path / "pkg")
    plan = store_plan(package, refittable=True)
    meta = trt_plans.read_metadata(plan.with_suffix(".json"))
    assert meta == metadata_for(package, refittable=True, plan_bytes=len(b"serialized engine"))
    assert meta.key == trt_plans.cache_key(meta.onnx_sha256, TRT, CC, meta.profile, meta.precision, refittable=True)
    assert plan.read_bytes() == b"serialized engine"
    assert sorted(p.name for p in plan.parent.iterdir()) == ["unet.json", "unet.plan"]  # no temporary files


def test_a_failed_write_leaves_no_plan_that_could_load_with_the_wrong_metadata(tmp_path, monkeypatch):
    package = fake_package(tmp_path / "pkg")
    model = package / "unet" / "model.onnx"
    store_plan(package, plan=b"old plan")
    assert trt_plans.select_plan(model, TRT, CC).ok
    real_replace = os.replace

    def failing_replace(source, target):
        if str(target).endswith(".plan"):
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store_plan(package, plan=b"new plan, different size", precision="fp32")
    folder = trt_plans.plan_folder(package, CC, TRT)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staged temporary file left behind
    selection = trt_plans.select_plan(model, TRT, CC)
    assert not selection.ok and selection.plan is None


def test_select_plan_says_why_no_plan_fits(sd1):
    model = sd1 / "unet" / "model.onnx"
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "missing" and "engines/sm90-trt10.8.0" in selection.reason
    assert selection.remedy == f"diffrt engines build {sd1}"

    store_plan(sd1, compute_capability=(8, 6))
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "missing" and "sm86-trt10.8.0 only" in selection.reason

    store_plan(sd1, name="vae_decoder")
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "missing" and "no unet.plan" in selection.reason

    plan = store_plan(sd1)
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.ok and selection.plan == plan and selection.metadata.precision == "fp16"
    assert trt_plans.select_plan(sd1 / "unet", TRT, CC).ok, "a network folder names its graph too"

    assert trt_plans.select_plan(model, TRT, CC, precision="fp16").ok
    selection = trt_plans.select_plan(model, TRT, CC, precision="fp32")
    assert selection.state == "incompatible" and "--precision fp32" in selection.remedy

    selection = trt_plans.select_plan(model, "10.8.0.44", CC)  # same folder, another TensorRT build
    assert selection.state == "incompatible" and "10.8.0.43" in selection.reason and "10.8.0.44" in selection.reason


def test_a_plan_of_a_changed_graph_is_stale_and_never_selected(sd1):
    model = sd1 / "unet" / "model.onnx"
    store_plan(sd1)
    store_plan(sd1, name="text_encoder", refittable=True)
    assert trt_plans.select_plan(model, TRT, CC).ok
    graph = onnx.load(str(model))  # new weights, same graph: what `diffrt lora apply` does
    weight = next(i for i in graph.graph.initializer if len(i.dims) >= 2)
    array = onnx.numpy_helper.to_array(weight) * np.float32(1.5)
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(graph, str(model))
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "stale" and selection.plan is None
    assert "unet/model.onnx changed" in selection.reason
    assert selection.remedy == f"diffrt engines build {sd1}"

    text = sd1 / "text_encoder" / "model.onnx"
    assert trt_plans.select_plan(text, TRT, CC).ok
    text.write_bytes(text.read_bytes() + b"\0")
    selection = trt_plans.select_plan(text, TRT, CC)
    assert selection.state == "stale" and selection.remedy == f"diffrt engines refit {sd1}"


def test_edited_or_truncated_plans_are_broken(sd1):
    model = sd1 / "unet" / "model.onnx"
    plan = store_plan(sd1)
    meta_path = plan.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**data, "precision": "fp32"}))  # the key no longer matches its fields
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "broken" and "edited" in selection.reason and "--force" in selection.remedy
    meta_path.write_text("{")
    assert trt_plans.select_plan(model, TRT, CC).state == "broken"
    store_plan(sd1)
    plan.write_bytes(b"short")
    selection = trt_plans.select_plan(model, TRT, CC)
    assert selection.state == "broken" and "bytes" in selection.reason


def test_inspect_plans_checks_every_folder_against_the_graphs_as_they_are(sd1):
    store_plan(sd1)
    store_plan(sd1, compute_capability=(8, 6), tensorrt="10.3.0")
    store_plan(sd1, name="vae_decoder")
    (sd1 / "vae_decoder" / "model.onnx").write_bytes(b"re-exported")
    found = {(p.folder, p.network): p for p in trt_plans.inspect_plans(sd1)}
    assert found[("sm90-trt10.8.0", "unet")].state == "current"
    assert found[("sm86-trt10.3.0", "unet")].state == "current"
    assert found[("sm90-trt10.8.0", "vae_decoder")].state == "stale"


def test_package_root_and_networks(packages, tmp_path):
    package = packages["sd1"]
    assert trt_plans.package_root(package / "unet" / "model.onnx") == package
    assert trt_plans.package_root(package / "unet") == package
    assert trt_plans.package_root(tmp_path / "model.onnx") is None
    assert trt_plans.package_networks(package) == ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    selection = trt_plans.select_plan(tmp_path / "loose" / "model.onnx", TRT, CC)
    assert selection.state == "missing" and "not in an engine package" in selection.reason


# ----- without TensorRT, without a GPU ----------------------------------------------------------------------------
def test_the_backend_import_reports_a_missing_tensorrt(no_tensorrt):
    with pytest.raises(BackendUnavailable) as error:
        choice.trt_backend()
    assert "TensorRT is not installed" in str(error.value) and "diffrt[trt]" in str(error.value)


def test_cuda_without_a_driver_degrades_to_a_reason():
    usable, reason = cuda.driver_status()
    if usable:
        pytest.skip(f"this machine has a usable NVIDIA driver ({reason}); tests/gpu covers it")
    assert reason and ("libcuda" in reason or "no CUDA device" in reason or "driver" in reason)
    with pytest.raises(BackendUnavailable, match="libcuda|CUDA device|driver"):
        cuda.device(0)
    with pytest.raises(BackendUnavailable):
        cuda.DeviceBuffer(16)
    with pytest.raises(BackendUnavailable):
        cuda.Stream()


def test_engines_status_without_tensorrt_says_what_is_missing(sd1, no_tensorrt, engines_command, capsys):
    store_plan(sd1)
    assert engines_command("status", sd1) == 0
    out = capsys.readouterr().out
    assert "TensorRT is not installed" in out and "diffrt[trt]" in out
    assert "unet: current" in out and "sm90-trt10.8.0" in out
    assert engines_command("status", sd1, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tensorrt"] is None and any("TensorRT is not installed" in p for p in report["problems"])
    assert [(p["network"], p["state"], p["precision"]) for p in report["plans"]] == [("unet", "current", "fp16")]
    if not cuda.driver_status()[0]:
        assert report["gpu"] is None and any("GPU" in p for p in report["problems"])


def test_engines_build_without_tensorrt_fails_and_writes_nothing(sd1, no_tensorrt, engines_command, capsys):
    before = sorted(p.relative_to(sd1) for p in sd1.rglob("*"))
    assert engines_command("build", sd1, "--networks", "unet", "--precision", "fp16") == 1
    err = capsys.readouterr().err
    assert err.startswith("diffrt engines: TensorRT is not installed") and "diffrt[trt]" in err
    assert sorted(p.relative_to(sd1) for p in sd1.rglob("*")) == before
    assert engines_command("refit", sd1) == 1
    assert "TensorRT is not installed" in capsys.readouterr().err


def test_engines_build_refuses_bad_arguments_before_touching_tensorrt(sd1, engines_command, capsys):
    assert engines_command("build", sd1, "--networks", "unet,controlnet") == 1
    assert "no controlnet" in capsys.readouterr().err
    assert engines_command("build", sd1 / "missing") == 1
    assert "does not exist" in capsys.readouterr().err
    assert engines_command("build", sd1, "--height", "64,32,128") == 1
    assert "min <= opt <= max" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        engines_command("build", sd1, "--batch", "1,2")
    assert not (sd1 / "engines").exists()


def test_range_and_network_arguments():
    assert engines_cli.parse_range("1,2,4") == (1, 2, 4)
    assert engines_cli.parse_range("512") == (512, 512, 512)
    for bad in ("1,2", "a,b,c", "0,1,2", ""):
        with pytest.raises(Exception, match="not a range"):
            engines_cli.parse_range(bad)
    assert engines_cli.parse_networks("unet, text_encoder,") == ["unet", "text_encoder"]
