"""The export stage end to end: diffusers folders -> engine packages, graphs checked against diffusers' modules.

Each tiny fixture (sd1, sd2, inpaint, depth, ddpm) is exported once; every graph of every package is then run
with ONNX Runtime at two resolutions and two batch sizes and compared with the diffusers / transformers module
loaded from the same folder (the oracle, not diffrt's own torch modules).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from diffrt.cli import main
from diffrt.export.package import ExportOptions, export_package
from diffrt.export.source import load_source
from diffrt.runtime.errors import CheckpointError, ConfigError

KINDS = ("sd1", "sd2", "inpaint", "depth", "ddpm")
SD_GRAPHS = {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
GRAPHS = {
    "sd1": SD_GRAPHS,
    "sd2": SD_GRAPHS,
    "inpaint": SD_GRAPHS,
    "depth": SD_GRAPHS | {"depth_estimator"},
    "ddpm": {"unet"},
}
PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth": "StableDiffusionDepth2ImgPipeline",
    "ddpm": "DDPMPipeline",
}
# Two resolutions (pixels) and two batch sizes, all from one export. The tiny VAE halves the size once.
SIZES = [(32, 32), (48, 40)]
BATCHES = [1, 3]
RTOL = 1e-4


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def rel_err(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.detach().float().numpy()
    assert got.shape == want.shape
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("kind", KINDS)
def test_package_layout(packages, tiny_models, kind):
    package = packages[kind]
    index = json.loads((package / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[kind]
    for graph in GRAPHS[kind]:
        assert (package / graph / "model.onnx").is_file()
        assert (package / graph / "config.json").is_file()
        assert index[graph] == ["diffusers", "OnnxRuntimeModel"]
    present = {p.parent.name for p in package.glob("*/model.onnx")}
    assert present == GRAPHS[kind]
    scheduler = json.loads((package / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler == json.loads((tiny_models[kind] / "scheduler" / "scheduler_config.json").read_text())
    if "text_encoder" in GRAPHS[kind]:
        assert {p.name for p in (package / "tokenizer").iterdir()} == {
            p.name for p in (tiny_models[kind] / "tokenizer").iterdir()
        }
    if kind == "depth":
        assert (package / "depth_estimator" / "preprocessor_config.json").is_file()
    assert not list(package.parent.glob(f".{kind}.partial-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_provenance_records_hashes_ranges_and_checks(packages, tiny_models, kind):
    record = json.loads((packages[kind] / "diffrt.json").read_text())
    assert record["pipeline"] == PIPELINES[kind]
    hashes = record["source"]["sha256"]
    weights = [k for k in hashes if k.endswith(".safetensors")]
    assert len(weights) == len(GRAPHS[kind] - {"vae_encoder"})  # one weights file per source network
    for rel, digest in hashes.items():
        assert hashlib.sha256((tiny_models[kind] / rel).read_bytes()).hexdigest() == digest
    assert set(record["networks"]) == GRAPHS[kind]
    for entry in record["networks"].values():
        assert entry["check"]["max_rel_error"] <= RTOL
    assert record["shape_range"]["batch"] == [1, 1, 4]


def test_io_names_are_optimums(packages):
    sd = packages["sd1"]
    names = {}
    for graph in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        s = session(sd / graph / "model.onnx")
        names[graph] = ([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()], s.get_inputs())
    assert names["unet"][0] == ["sample", "timestep", "encoder_hidden_states"]
    assert names["unet"][1] == ["out_sample"]
    timestep = names["unet"][2][1]
    # One timestep per sample (Optimum's UNet takes a 1-D timestep too, and a length-1 one still broadcasts).
    assert timestep.type == "tensor(float)" and timestep.shape == ["batch"]
    assert names["vae_decoder"][:2] == (["latent_sample"], ["sample"])
    assert names["vae_encoder"][:2] == (["sample"], ["latent_parameters"])
    assert names["text_encoder"][0] == ["input_ids"]
    assert names["text_encoder"][1][:2] == ["last_hidden_state", "pooler_output"]
    assert names["text_encoder"][2][0].type == "tensor(int64)"
    sample = names["unet"][2][0]
    assert isinstance(sample.shape[0], str) and isinstance(sample.shape[2], str) and isinstance(sample.shape[3], str)


def _diffusers_unet(folder: Path):
    from diffusers import UNet2DConditionModel, UNet2DModel

    config = json.loads((folder / "unet" / "config.json").read_text())
    cls = UNet2DModel if config["_class_name"] == "UNet2DModel" else UNet2DConditionModel
    return cls.from_pretrained(folder / "unet").eval()


@pytest.mark.parametrize("kind", ["sd1", "sd2", "inpaint", "depth"])
def test_unet_graph_equals_diffusers(packages, tiny_models, kind):
    unet = _diffusers_unet(tiny_models[kind])
    s = session(packages[kind] / "unet" / "model.onnx")
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        for batch in BATCHES:
            sample = rng.standard_normal((batch, unet.config.in_channels, h // 2, w // 2)).astype(np.float32)
            hidden = rng.standard_normal((batch, 77, 32)).astype(np.float32)
            t = rng.uniform(0, 999, size=batch).astype(np.float32)  # each sample at its own timestep
            (got,) = s.run(None, {"sample": sample, "timestep": t, "encoder_hidden_states": hidden})
            with torch.no_grad():
                want = unet(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(hidden)).sample
            assert rel_err(got, want) <= RTOL, (h, w, batch)


def test_unconditional_unet_graph_equals_diffusers(packages, tiny_models):
    unet = _diffusers_unet(tiny_models["ddpm"])
    s = session(packages["ddpm"] / "unet" / "model.onnx")
    rng = np.random.default_rng(1)
    for h, w in [(16, 16), (24, 20)]:
        for batch in BATCHES:
            sample = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
            t = np.array(rng.integers(0, 1000), dtype=np.float32)
            (got,) = s.run(None, {"sample": sample, "timestep": t})
            with torch.no_grad():
                want = unet(torch.from_numpy(sample), torch.from_numpy(t)).sample
            assert rel_err(got, want) <= RTOL, (h, w, batch)


@pytest.mark.parametrize("kind", ["sd1", "depth"])
def test_vae_graphs_equal_diffusers(packages, tiny_models, kind):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models[kind] / "vae").eval()
    encoder = session(packages[kind] / "vae_encoder" / "model.onnx")
    decoder = session(packages[kind] / "vae_decoder" / "model.onnx")
    rng = np.random.default_rng(2)
    for h, w in SIZES:
        for batch in BATCHES:
            image = rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32)
            latents = rng.standard_normal((batch, 4, h // 2, w // 2)).astype(np.float32)
            (params,) = encoder.run(None, {"sample": image})
            (decoded,) = decoder.run(None, {"latent_sample": latents})
            with torch.no_grad():
                want_params = vae.encode(torch.from_numpy(image)).latent_dist.parameters
                want_decoded = vae.decode(torch.from_numpy(latents)).sample
            assert rel_err(params, want_params) <= RTOL, (h, w, batch)
            assert rel_err(decoded, want_decoded) <= RTOL, (h, w, batch)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_text_encoder_graph_equals_transformers(packages, tiny_models, kind):
    from transformers import CLIPTextModel, CLIPTokenizer

    model = CLIPTextModel.from_pretrained(tiny_models[kind] / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_models[kind] / "tokenizer")
    s = session(packages[kind] / "text_encoder" / "model.onnx")
    names = [o.name for o in s.get_outputs()]
    hidden = [f"hidden_states.{i}" for i in range(4)]  # 3 layers: the embeddings and each layer's output
    assert names == ["last_hidden_state", "pooler_output", "clip_skip.1", "clip_skip.2", *hidden]
    for prompts in (["a photograph of an astronaut riding a horse"], ["a cat", "", "two dogs on a red sofa"]):
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
        got = dict(zip(names, s.run(None, {"input_ids": ids.astype(np.int64)}), strict=True))
        with torch.no_grad():
            out = model(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
        assert rel_err(got["last_hidden_state"], out.last_hidden_state) <= RTOL
        assert rel_err(got["pooler_output"], out.pooler_output) <= RTOL
        for k in (1, 2):  # diffusers' clip_skip: hidden state k layers before the last, final-layer-normed
            with torch.no_grad():
                want = model.final_layer_norm(out.hidden_states[-(k + 1)])
            assert rel_err(got[f"clip_skip.{k}"], want) <= RTOL
        for i, want in enumerate(out.hidden_states):  # raw, as transformers returns them (SDXL reads these)
            assert rel_err(got[f"hidden_states.{i}"], want) <= RTOL


def test_depth_estimator_graph_equals_transformers(packages, tiny_models):
    from transformers import DPTForDepthEstimation

    model = DPTForDepthEstimation.from_pretrained(tiny_models["depth"] / "depth_estimator").eval()
    s = session(packages["depth"] / "depth_estimator" / "model.onnx")
    rng = np.random.default_rng(3)
    for batch in BATCHES:
        pixels = rng.uniform(-1, 1, (batch, 3, 32, 32)).astype(np.float32)
        (got,) = s.run(None, {"pixel_values": pixels})
        with torch.no_grad():
            want = model(pixel_values=torch.from_numpy(pixels)).predicted_depth
        assert rel_err(got, want) <= RTOL


def test_static_size_export_fixes_spatial_axes(tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    report = export_package(load_source(tiny_models["sd1"]), tmp_path / "static", ExportOptions(static=(40, 48)))
    s = session(report.path / "unet" / "model.onnx")
    shape = s.get_inputs()[0].shape
    assert shape[1:] == [4, 20, 24] and isinstance(shape[0], str)
    record = json.loads((report.path / "diffrt.json").read_text())
    assert record["shape_range"]["height"] == [40, 40, 40] and record["export"]["static"] == [40, 48]
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd1"] / "unet").eval()
    rng = np.random.default_rng(4)
    sample = rng.standard_normal((2, 4, 20, 24)).astype(np.float32)
    hidden = rng.standard_normal((2, 77, 32)).astype(np.float32)
    t = np.full((sample.shape[0],), 501.0, dtype=np.float32)
    (got,) = s.run(None, {"sample": sample, "timestep": t, "encoder_hidden_states": hidden})
    with torch.no_grad():
        want = unet(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(hidden)).sample
    assert rel_err(got, want) <= RTOL
    with pytest.raises(ConfigError, match="multiples of 4"):
        export_package(load_source(tiny_models["sd1"]), tmp_path / "bad", ExportOptions(static=(42, 48)))
    assert not (tmp_path / "bad").exists()


def test_external_data_written_past_the_threshold(packages, tiny_models, tmp_path):
    options = ExportOptions(external_data_threshold=0, check=False)
    report = export_package(load_source(tiny_models["ddpm"]), tmp_path / "ext", options)
    unet = report.path / "unet"
    assert sorted(p.name for p in unet.glob("model.onnx*")) == ["model.onnx", "model.onnx.data"]
    assert (unet / "model.onnx").stat().st_size < (unet / "model.onnx.data").stat().st_size
    assert (unet / "model.onnx.data").stat().st_mode == (unet / "model.onnx").stat().st_mode  # readable alike
    feeds = {
        "sample": np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32),
        "timestep": np.array(10.0, dtype=np.float32),
    }
    (a,) = session(unet / "model.onnx").run(None, feeds)
    (b,) = session(packages["ddpm"] / "unet" / "model.onnx").run(None, feeds)
    np.testing.assert_array_equal(a, b)
    assert json.loads((report.path / "diffrt.json").read_text())["networks"]["unet"]["external_data"] is True


def test_fp16_variant_exports_from_fp16_weights(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "sd1-fp16"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd1"])
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16", safe_serialization=True)
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    report = export_package(load_source(folder, variant="fp16"), tmp_path / "pkg", ExportOptions(check=False))
    unet = _diffusers_unet(tiny_models["sd1"])  # fp32 weights: the fp16 package differs by fp16 rounding only
    rng = np.random.default_rng(6)
    sample = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    hidden = rng.standard_normal((1, 77, 32)).astype(np.float32)
    t = np.full((1,), 300.0, dtype=np.float32)
    (got,) = session(report.path / "unet" / "model.onnx").run(
        None, {"sample": sample, "timestep": t, "encoder_hidden_states": hidden}
    )
    with torch.no_grad():
        want = unet(torch.from_numpy(sample), torch.from_numpy(t), torch.from_numpy(hidden)).sample
    assert 0 < rel_err(got, want) < 1e-2
    with pytest.raises(CheckpointError, match="fp16"):
        load_source(tiny_models["sd1"], variant="fp16").components["unet"].load_weights()


def test_cli_export_prints_progress_and_summary(tiny_models, tmp_path, capsys):
    assert main(["export", str(tiny_models["ddpm"]), str(tmp_path / "pkg"), "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    assert "unet" in err and "exporting" in err
    table = out.splitlines()
    assert table[0].split()[:2] == ["network", "size"]
    row = next(line for line in table if line.startswith("unet"))
    assert float(row.split()[3]) <= RTOL  # max rel err column
    assert "wrote" in table[-1] and "DDPMPipeline" in table[-1]
    record = json.loads((tmp_path / "pkg" / "diffrt.json").read_text())
    assert record["shape_range"]["batch"] == [1, 1, 2]
    # An existing package is never overwritten by accident.
    assert main(["export", str(tiny_models["ddpm"]), str(tmp_path / "pkg")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_failed_export_leaves_nothing_behind(tiny_models, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["sd1"], broken)
    config = json.loads((broken / "vae" / "config.json").read_text())
    config["latent_channels"] = 8  # the weights no longer fit: export fails after the text encoder and UNet
    (broken / "vae" / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out" / "pkg"
    assert main(["export", str(broken), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("diffrt export: vae: weights do not fit the config")
    assert list((tmp_path / "out").iterdir()) == []


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffrt", "export", *args], capture_output=True, text=True, timeout=300
    )


def test_hostile_files_fail_in_one_sentence_without_traceback(tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    absurd = tmp_path / "absurd.safetensors"
    absurd.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    for path, phrase in ((truncated, "truncated"), (absurd, "header")):
        result = _run_cli(str(path), str(tmp_path / "pkg"))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("diffrt export: ") and str(path) in last and phrase in last.lower()
        assert not (tmp_path / "pkg").exists()
        assert not list(tmp_path.glob(".pkg.partial-*"))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": _RunsCode(marker)}}, evil)
    assert not marker.exists()
    refused = _run_cli(str(evil), str(tmp_path / "a"))
    assert refused.returncode == 1 and "--allow-pickle" in refused.stderr and "Traceback" not in refused.stderr
    opted_in = _run_cli(str(evil), str(tmp_path / "b"), "--allow-pickle")
    assert opted_in.returncode == 1 and "Traceback" not in opted_in.stderr
    assert not marker.exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_default_model_builds_and_exports(tmp_path):
    from diffrt.export.tiny import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "tiny")
    again = build_tiny_sd(tmp_path / "tiny-again")
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (folder / rel).read_bytes() == (again / rel).read_bytes()  # deterministic from its seed
    report = export_package(load_source(folder), tmp_path / "pkg")
    assert {g.name for g in report.graphs} == SD_GRAPHS
    assert max(g.max_rel_error for g in report.graphs) <= RTOL
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)  # a folder diffusers itself loads


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_source(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="model_index.json"):
        load_source(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="accepted files end in"):
        load_source(tmp_path / "notes.txt")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(CheckpointError, match="diffrt exports StableDiffusionPipeline"):
        load_source(tmp_path)


def _package_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("kind", "layout"), [("sd1", "clip"), ("sd2", "open_clip"), ("inpaint", "clip")])
def test_single_file_exports_to_the_same_package(packages, tiny_models, tmp_path, kind, layout):
    """An LDM-layout file written from the folder's weights (diffusers' from_single_file reads it back to the same
    weights: tests/export/test_single_file.py) exports, with --config, to the folder's package byte for byte."""
    import ldm_layout

    path = ldm_layout.write_single_file(tiny_models[kind], tmp_path / f"{kind}.safetensors", layout)
    out = tmp_path / "pkg"
    assert main(["export", str(path), str(out), "--config", str(tiny_models[kind])]) == 0
    ours, theirs = _package_files(out), _package_files(packages[kind])
    record = json.loads(ours.pop("diffrt.json"))
    theirs.pop("diffrt.json")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == theirs[name], name
    assert record["source"]["kind"] == "single_file"
    assert record["source"]["sha256"][path.name] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_single_file_without_config_names_the_mismatch(tiny_models, tmp_path, capsys):
    import ldm_layout

    path = ldm_layout.write_single_file(tiny_models["sd1"], tmp_path / "tiny.safetensors", "clip")
    assert main(["export", str(path), str(tmp_path / "pkg")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "do not match" in err and "--config DIR" in err and str(path) in err
    assert not (tmp_path / "pkg").exists()


def test_sharded_and_pickled_folders(tiny_models, packages, tmp_path):
    """Sharded safetensors export like the single-file folder; .bin folders need the pickle opt-in."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd1"])
    sharded, pickled = tmp_path / "sharded", tmp_path / "pickled"
    pipe.save_pretrained(sharded, max_shard_size="200KB", safe_serialization=True)
    pipe.save_pretrained(pickled, safe_serialization=False)
    assert len(list((sharded / "unet").glob("*.safetensors"))) > 1
    report = export_package(load_source(sharded), tmp_path / "from-shards", ExportOptions(check=False))
    record = json.loads((report.path / "diffrt.json").read_text())
    assert "unet/diffusion_pytorch_model.safetensors.index.json" in record["source"]["sha256"]
    same = _package_files(report.path)
    reference = _package_files(packages["sd1"])
    for name in ("unet/model.onnx", "vae_decoder/model.onnx", "text_encoder/model.onnx"):
        assert same[name] == reference[name]
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        export_package(load_source(pickled), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    report = export_package(load_source(pickled, allow_pickle=True), tmp_path / "from-bin", ExportOptions(check=False))
    assert _package_files(report.path)["unet/model.onnx"] == reference["unet/model.onnx"]


def test_legacy_four_channel_inpainting_exports(tiny_models, packages, tmp_path):
    """A 4-channel UNet under StableDiffusionInpaintPipeline (diffusers blends latents with the mask for it)."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_models["sd1"], legacy)
    index = json.loads((legacy / "model_index.json").read_text())
    (legacy / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionInpaintPipeline"}))
    report = export_package(load_source(legacy), tmp_path / "pkg", ExportOptions(check=False))
    assert json.loads((report.path / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"
    assert session(report.path / "unet" / "model.onnx").get_inputs()[0].shape[1] == 4
    assert (report.path / "unet" / "model.onnx").read_bytes() == (packages["sd1"] / "unet" / "model.onnx").read_bytes()


def test_pickled_single_file_with_opt_in_exports_the_same_package(tiny_models, packages, tmp_path):
    import ldm_layout

    ckpt = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": ldm_layout.folder_to_ldm(tiny_models["sd1"], "clip"), "global_step": 1}, ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "refused"), "--config", str(tiny_models["sd1"])]) == 1
    out = tmp_path / "pkg"
    args = ["export", str(ckpt), str(out), "--config", str(tiny_models["sd1"]), "--allow-pickle", "--no-check"]
    assert main(args) == 0
    assert (out / "unet" / "model.onnx").read_bytes() == (packages["sd1"] / "unet" / "model.onnx").read_bytes()
    assert not (tmp_path / "refused").exists()


def test_hybrid_dpt_depth_estimator_exports(tmp_path):
    """The BiT-backbone DPT layout of Intel/dpt-hybrid-midas, the estimator of stable-diffusion-2-depth."""
    from transformers import DPTConfig, DPTForDepthEstimation

    from diffrt.export.components import build_depth_estimator
    from diffrt.export.onnx_export import export_graph
    from diffrt.export.source import Component

    torch.manual_seed(0)
    backbone = {
        "global_padding": "same",
        "layer_type": "bottleneck",
        "depths": [3, 4, 9],
        "out_features": ["stage1", "stage2", "stage3"],
        "embedding_dynamic_padding": True,
        "hidden_sizes": [96, 192, 384, 768],
        "num_groups": 2,
    }
    config = DPTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3),
        num_attention_heads=4,
        intermediate_size=37,
        is_hybrid=True,
        backbone_config=backbone,
        backbone_featmap_shape=[1, 384, 24, 24],
    )
    reference = DPTForDepthEstimation(config).eval()
    reference.save_pretrained(tmp_path / "dpt")
    saved = json.loads((tmp_path / "dpt" / "config.json").read_text())
    component = Component("depth_estimator", "DPTForDepthEstimation", saved, lambda: reference.state_dict())
    network, module = build_depth_estimator(component, {"size": {"height": 32, "width": 32}})
    graph = export_graph(module, network, tmp_path / "onnx", (2, 32, 32))
    pixels = np.random.default_rng(7).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    (got,) = session(graph.path).run(None, {"pixel_values": pixels})
    with torch.no_grad():
        want = reference(pixel_values=torch.from_numpy(pixels)).predicted_depth
    assert rel_err(got, want) <= RTOL
