"""TensorRT plans of the tiny SD1 package, built, run and refitted on a real GPU and compared with ONNX Runtime on
the CPU. Skipped where tensorrt is not installed or there is no usable GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tensorrt")

from diffrt import cli  # noqa: E402
from diffrt.runtime.engines import SessionSettings, choice, cuda, trt_plans  # noqa: E402
from diffrt.runtime.engines import cli as engines_cli  # noqa: E402
from diffrt.runtime.engines.ort import OrtEngine  # noqa: E402

USABLE, REASON = cuda.driver_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not USABLE, reason=f"no usable CUDA driver/GPU: {REASON}")]


@pytest.fixture
def engines_command(monkeypatch):
    if "engines" not in cli.COMMANDS:
        entry = ("build, inspect and refit TensorRT plans", engines_cli.add_arguments, engines_cli.run)
        monkeypatch.setitem(cli.COMMANDS, "engines", entry)
    return lambda *args: cli.main(["engines", *map(str, args)])


@pytest.fixture
def sd1(packages, tmp_path) -> Path:
    trt_plans.clear_hash_memo()
    return Path(shutil.copytree(packages["sd1"], tmp_path / "sd1"))


def sizes(package: Path) -> list[tuple[int, int, int]]:
    """(batch, height, width) points inside the package's range: its opt, its min and its max."""
    r = trt_plans.shape_range_for(package)
    return [
        (r.batch[1], r.height[1], r.width[1]),
        (r.batch[0], r.height[0], r.width[0]),
        (r.batch[2], r.height[2], r.width[2]),
    ]


def compare(package: Path, name: str, settings: SessionSettings, tolerance: float, seed: int = 0) -> None:
    backend = choice.trt_backend()
    engine = backend.open_engine(package / name / "model.onnx", name, settings)
    reference = OrtEngine(package / name, "cpu", SessionSettings(cache_dir=None))
    network = trt_plans.network_for(package, name)
    for batch, height, width in sizes(package):
        batch *= network.batch_multiplier
        feeds = network.sample_feeds(batch, height, width, seed=seed)
        got = engine.run(feeds)
        want = reference.run(feeds)
        assert list(got) == list(want)
        for output in want:
            assert got[output].dtype == np.float32 and got[output].shape == want[output].shape
            np.testing.assert_allclose(got[output], want[output], atol=tolerance, rtol=tolerance, err_msg=output)
    engine.close()


def test_fp32_plans_match_onnx_runtime(sd1, engines_command, capsys):
    assert engines_command("build", sd1, "--precision", "fp32") == 0
    for name in trt_plans.package_networks(sd1):
        compare(sd1, name, SessionSettings(precision="fp32"), 1e-3)
    capsys.readouterr()
    assert engines_command("build", sd1, "--precision", "fp32") == 0
    assert capsys.readouterr().out.count("current, kept") == len(trt_plans.package_networks(sd1))
    assert engines_command("status", sd1) == 0
    assert "unet: current" in capsys.readouterr().out


def test_fp16_unet_plan_is_close_to_onnx_runtime(sd1, engines_command):
    assert engines_command("build", sd1, "--networks", "unet", "--precision", "fp16") == 0
    compare(sd1, "unet", SessionSettings(precision="fp16"), 2e-2)
    compare(sd1, "unet", SessionSettings(), 2e-2)  # auto takes the plan that was built


def test_cuda_graph_replays_give_the_plain_results(sd1, engines_command):
    assert engines_command("build", sd1, "--networks", "unet", "--precision", "fp32") == 0
    backend = choice.trt_backend()
    model = sd1 / "unet" / "model.onnx"
    plain = backend.open_engine(model, "unet", SessionSettings())
    graphed = backend.open_engine(model, "unet", SessionSettings(cuda_graph=True))
    network = trt_plans.network_for(sd1, "unet")
    for seed in range(4):
        feeds = network.sample_feeds(2, *sizes(sd1)[0][1:], seed=seed)
        np.testing.assert_array_equal(graphed.run(feeds)["out_sample"], plain.run(feeds)["out_sample"])


def test_a_refittable_plan_takes_rewritten_weights(sd1, engines_command, capsys):
    assert engines_command("build", sd1, "--networks", "unet", "--precision", "fp32", "--refittable") == 0
    model = sd1 / "unet" / "model.onnx"
    graph = onnx.load(str(model))
    for weight in graph.graph.initializer:  # what `diffrt lora apply` does: same graph, other weights
        if len(weight.dims) >= 2:
            array = onnx.numpy_helper.to_array(weight) * np.float32(1.1)
            weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(graph, str(model))
    backend = choice.trt_backend()
    device = cuda.device(0)
    assert trt_plans.select_plan(model, backend.TRT_VERSION, device.compute_capability).state == "stale"
    assert engines_command("refit", sd1, "--networks", "unet") == 0
    assert "unet: refitted" in capsys.readouterr().out
    selection = trt_plans.select_plan(model, backend.TRT_VERSION, device.compute_capability)
    assert selection.ok and len(selection.metadata.refits) == 1
    compare(sd1, "unet", SessionSettings(), 1e-3, seed=1)


def test_plans_without_refit_are_not_refitted(sd1, engines_command, capsys):
    assert engines_command("build", sd1, "--networks", "unet", "--precision", "fp32") == 0
    model = sd1 / "unet" / "model.onnx"
    model.write_bytes(model.read_bytes())  # same bytes: still current
    assert engines_command("refit", sd1, "--networks", "unet") == 0
    graph = onnx.load(str(model))
    weight = next(w for w in graph.graph.initializer if len(w.dims) >= 2)
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * np.float32(2), weight.name))
    onnx.save(graph, str(model))
    capsys.readouterr()
    assert engines_command("refit", sd1, "--networks", "unet") == 1
    assert "built without --refittable" in capsys.readouterr().err
