"""The Engine protocol and its ONNX Runtime backend, on tiny graphs built here with onnx.helper."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from diffrt.runtime.engines import Engine, SessionSettings, TensorInfo, load_engine, ort_cuda, usable_cores
from diffrt.runtime.engines.ort import OrtEngine
from diffrt.runtime.errors import BackendUnavailable, ConfigError, PackageError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 5)).astype(np.float32)
B = RNG.standard_normal(5).astype(np.float32)


def save(model: onnx.ModelProto, folder, external: bool = False):
    """Write ``model`` as ``folder/model.onnx`` (weights in ``model.onnx.data`` when ``external``)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    if external:
        onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    else:
        onnx.save(model, path)
    return folder


def affine_model(elem=TensorProto.FLOAT, dtype=np.float32) -> onnx.ModelProto:
    """y = x @ W + b with a dynamic batch axis; ``elem``/``dtype`` set the graph's precision."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", elem, ["batch", 8])],
        [helper.make_tensor_value_info("y", elem, ["batch", 5])],
        [numpy_helper.from_array(W.astype(dtype), "W"), numpy_helper.from_array(B.astype(dtype), "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def embedding_model(elem) -> onnx.ModelProto:
    """Token ids (``elem``: int64 or int32) -> rows of a float table, and the ids back out doubled."""
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embeds"]), helper.make_node("Add", ["ids", "ids"], ["twice"])],
        "embedding",
        [helper.make_tensor_value_info("ids", elem, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["batch", "sequence", 4]),
            helper.make_tensor_value_info("twice", elem, ["batch", "sequence"]),
        ],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def two_input_model() -> onnx.ModelProto:
    """sum = a + b, product = a * b; a fixed trailing axis of 3."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("sum", "product")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def affine_dir(tmp_path_factory):
    return save(affine_model(), tmp_path_factory.mktemp("pkg") / "unet")


@pytest.fixture(scope="module")
def affine(affine_dir):
    # Built from the graph itself: a cache entry left by an earlier test of affine_dir would give a session whose
    # optimizations are off (already applied), and the settings tests read the session's options.
    return load_engine(affine_dir, provider="cpu", settings=SessionSettings(cache_dir=None))


def test_outputs_equal_numpy_and_engine_metadata(affine):
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    out = affine.run({"x": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], x @ W + B, rtol=1e-5, atol=1e-5)
    assert isinstance(affine, Engine)
    assert affine.name == "unet" and affine.provider == "CPUExecutionProvider"
    assert affine.inputs == {"x": TensorInfo("x", np.dtype(np.float32), ("batch", 8))}
    assert affine.outputs["y"].shape == ("batch", 5)
    assert repr(affine) == (
        "OrtEngine(name='unet', provider='CPUExecutionProvider', inputs=[x: float32[batch, 8]], "
        "outputs=[y: float32[batch, 5]])"
    )


def test_folder_path_and_file_path_both_load(affine_dir):
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    by_folder = load_engine(affine_dir, provider="cpu")
    by_file = load_engine(affine_dir / "model.onnx", provider="cpu", name="denoiser")
    assert by_file.name == "denoiser"
    np.testing.assert_array_equal(by_folder.run({"x": x})["y"], by_file.run({"x": x})["y"])


def test_external_data_beside_the_graph_loads(tmp_path):
    folder = save(affine_model(), tmp_path / "text_encoder", external=True)
    assert (folder / "model.onnx.data").is_file()
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(load_engine(folder, "cpu").run({"x": x})["y"], x @ W + B, rtol=1e-5, atol=1e-5)


def test_float16_graph_takes_float32_feeds_and_returns_float32(tmp_path):
    engine = load_engine(save(affine_model(TensorProto.FLOAT16, np.float16), tmp_path / "vae_decoder"), "cpu")
    assert engine.inputs["x"].dtype == np.float16
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    y = engine.run({"x": x})["y"]
    assert y.dtype == np.float32
    expected = (x.astype(np.float16) @ W.astype(np.float16) + B.astype(np.float16)).astype(np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("graph_ids, fed_ids", [(TensorProto.INT32, np.int64), (TensorProto.INT64, np.int32)])
def test_integer_feeds_are_cast_to_the_declared_width(tmp_path, graph_ids, fed_ids):
    engine = load_engine(save(embedding_model(graph_ids), tmp_path / "text_encoder"), "cpu")
    declared = np.int32 if graph_ids == TensorProto.INT32 else np.int64
    assert engine.inputs["ids"].dtype == declared
    ids = np.array([[1, 2, 9], [0, 3, 3]], dtype=fed_ids)
    out = engine.run({"ids": ids})
    np.testing.assert_array_equal(out["embeds"], np.arange(40, dtype=np.float32).reshape(10, 4)[ids])
    assert out["twice"].dtype == declared  # integer outputs keep the graph's dtype
    np.testing.assert_array_equal(out["twice"], 2 * ids)


def test_whole_number_floats_feed_an_integer_input_and_fractions_are_refused(tmp_path):
    engine = load_engine(save(embedding_model(TensorProto.INT64), tmp_path / "text_encoder"), "cpu")
    np.testing.assert_array_equal(engine.run({"ids": np.array([[4.0, 7.0]])})["twice"], [[8, 14]])
    with pytest.raises(ConfigError, match=r"text_encoder input 'ids' is int64 .* not whole numbers"):
        engine.run({"ids": np.array([[4.5, 7.0]])})


def test_missing_and_unknown_feeds_name_the_engine_and_its_inputs(tmp_path):
    engine = load_engine(save(two_input_model(), tmp_path / "unet"), "cpu")
    a = np.ones((1, 3), np.float32)
    with pytest.raises(ConfigError, match=r"feeds of unet lack 'b'; unet takes a: float32\[batch, 3\], b: float32"):
        engine.run({"a": a})
    with pytest.raises(ConfigError, match=r"name unknown inputs 'c'; unet takes a: .*, b: "):
        engine.run({"a": a, "b": a, "c": a})


def test_a_wrong_rank_or_fixed_dimension_names_the_declared_shape(affine):
    with pytest.raises(ConfigError, match=r"unet input 'x' has shape \(2, 7\); the graph takes x: float32\[batch, 8\]"):
        affine.run({"x": np.ones((2, 7), np.float32)})
    with pytest.raises(ConfigError, match=r"has shape \(8,\)"):
        affine.run({"x": np.ones(8, np.float32)})


def test_output_names_select_outputs_and_unknown_ones_are_refused(tmp_path):
    engine = load_engine(save(two_input_model(), tmp_path / "unet"), "cpu")
    a, b = np.full((2, 3), 2.0, np.float32), np.full((2, 3), 5.0, np.float32)
    assert list(engine.run({"a": a, "b": b}, output_names=["product"])) == ["product"]
    assert list(engine.run({"a": a, "b": b}, output_names="sum")) == ["sum"]
    np.testing.assert_array_equal(engine.run({"a": a, "b": b}, ["product", "sum"])["product"], a * b)
    with pytest.raises(
        ConfigError, match=r"output_names=\['latents'\] is not accepted for unet; it gives sum, product"
    ):
        engine.run({"a": a, "b": b}, output_names=["latents"])


def test_unknown_provider_lists_the_accepted_values(affine_dir):
    with pytest.raises(ConfigError, match=r"provider='gpu' is not supported for unet; accepted values: 'auto', "):
        load_engine(affine_dir, provider="gpu")
    with pytest.raises(ConfigError) as error:
        load_engine(affine_dir, provider="gpu")
    for value in ("'cpu'", "'cuda'", "'CPUExecutionProvider'"):
        assert value in str(error.value)


def test_tensorrt_without_its_library_is_unavailable_with_what_to_install(affine_dir):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    for name in ("tensorrt", "trt", "TensorRT"):
        with pytest.raises(BackendUnavailable, match=r"provider='tensorrt' for unet needs TensorRT 10's Python"):
            load_engine(affine_dir, provider=name)
    with pytest.raises(ConfigError, match=r"pip install 'diffrt\[trt\]'` \(tensorrt>=10\)"):  # a BackendUnavailable
        load_engine(affine_dir, provider="tensorrt")


def test_cuda_without_the_cuda_provider_points_to_onnxruntime_gpu(affine_dir, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(
        BackendUnavailable, match=r"provider='cuda' for unet needs ONNX Runtime's CUDAExecutionProvider.*"
    ):
        load_engine(affine_dir, provider="cuda")
    with pytest.raises(BackendUnavailable, match=r"onnxruntime-gpu \(pip install 'diffrt\[gpu\]'\) provides it"):
        load_engine(affine_dir, provider="CUDAExecutionProvider")


def test_cuda_offered_without_a_gpu_names_the_missing_driver(affine_dir, monkeypatch):
    # onnxruntime-gpu installed on a machine without an NVIDIA driver: the provider is offered, the GPU is not there.
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(BackendUnavailable, match=r"provider='cuda' for unet cannot run here: .*(driver|device)"):
        load_engine(affine_dir, provider="cuda")


def test_a_provider_that_is_offered_but_does_not_start(affine_dir, monkeypatch, caplog):
    # CUDA advertised by the Python API and a GPU reported, but the build has no CUDA: the session starts on the CPU.
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort_cuda, "cuda_unavailable", lambda device_id=0: None)
    fp32 = SessionSettings(precision="fp32")  # the fp16 conversion is the GPU tests' subject
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        with pytest.raises(
            BackendUnavailable,
            match=r"provider='cuda' for unet: onnxruntime offers CUDAExecutionProvider but could not start",
        ):
            load_engine(affine_dir, provider="cuda", settings=fp32)
    with caplog.at_level(logging.INFO, logger="diffrt.engines"), pytest.warns(UserWarning):
        engine = load_engine(affine_dir, provider="auto", settings=fp32)
    assert engine.provider == "CPUExecutionProvider" and engine.precision == "fp32"
    (record,) = [r for r in caplog.records if "provider 'auto' chose" in r.message]
    assert "chose ONNX Runtime CPUExecutionProvider" in record.message
    assert "ONNX Runtime CUDA: provider='cuda' for unet: onnxruntime offers CUDAExecutionProvider" in record.message


def test_auto_picks_cpu_here_and_logs_why_the_gpu_backends_were_skipped(affine_dir, caplog):
    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    with caplog.at_level(logging.INFO, logger="diffrt.engines"):
        engine = load_engine(affine_dir)
    assert engine.provider == "CPUExecutionProvider"
    (record,) = [r for r in caplog.records if r.name == "diffrt.engines"]
    assert record.levelname == "INFO"
    assert "unet: provider 'auto' chose ONNX Runtime CPUExecutionProvider" in record.message
    assert "TensorRT: provider='tensorrt' for unet needs" in record.message
    assert "ONNX Runtime CUDA: provider='cuda' for unet needs ONNX Runtime's CUDAExecutionProvider" in record.message
    assert "onnxruntime-gpu" in record.message


def test_precision_and_cuda_graph_are_refused_where_the_cpu_cannot_honour_them(affine_dir):
    assert load_engine(affine_dir, "cpu").precision == "fp32"  # "auto" is fp32 on the CPU
    assert load_engine(affine_dir, "cpu", SessionSettings(precision="fp32")).precision == "fp32"
    with pytest.raises(ConfigError, match=r"precision='fp16' for unet needs a GPU provider \('cuda' or 'tensorrt'\)"):
        load_engine(affine_dir, "cpu", SessionSettings(precision="fp16"))
    with pytest.raises(ConfigError, match=r"precision='bf16' for unet is for TensorRT"):
        load_engine(affine_dir, "cpu", SessionSettings(precision="bf16"))
    with pytest.raises(ConfigError, match=r"cuda_graph=True for unet needs a GPU provider"):
        load_engine(affine_dir, "cpu", SessionSettings(cuda_graph=True))
    with pytest.raises(ConfigError, match=r"precision='half' is not supported for SessionSettings; accepted values"):
        SessionSettings(precision="half")
    with pytest.raises(ConfigError, match=r"cuda_graph=1 is not accepted; give True or False"):
        SessionSettings(cuda_graph=1)


def test_default_settings_reach_the_session(affine):
    options = affine.session.get_session_options()
    assert options.intra_op_num_threads == usable_cores()
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.log_severity_level == 3
    assert options.enable_cpu_mem_arena and options.enable_mem_pattern
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_explicit_settings_reach_the_session(affine_dir):
    settings = SessionSettings(
        intra_op_threads=3,
        inter_op_threads=2,
        spinning=True,
        graph_optimization="basic",
        log_level=2,
        memory_arena=False,
        memory_pattern=False,
        config_entries={"session.disable_prepacking": "1", "session.inter_op.allow_spinning": "0"},
    )
    options = load_engine(affine_dir, "cpu", settings).session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.log_severity_level == 2
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"  # config_entries win
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert hash(settings) == hash(SessionSettings(**{**settings.__dict__}))  # a mapping is stored as pairs


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("intra_op_threads", 0, "intra_op_threads=0 is not accepted"),
        ("inter_op_threads", None, "inter_op_threads=None is not accepted"),
        ("graph_optimization", "max", "accepted values: 'disable', 'basic', 'extended', 'all'"),
        ("log_level", 7, "log_level=7 is not supported"),
        ("device_id", -1, "device_id=-1 is not accepted"),
    ],
)
def test_invalid_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SessionSettings(**{field: value})


def test_missing_model_raises_package_error_naming_the_path(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(PackageError, match=str(tmp_path / "unet" / "model.onnx")):
        load_engine(tmp_path / "unet")
    with pytest.raises(PackageError, match=str(tmp_path / "vae.onnx")):
        OrtEngine(tmp_path / "vae.onnx")


def test_unreadable_graph_or_missing_external_data_raise_package_error(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(PackageError, match=r"could not load .*model.onnx \(network unet\) on CPUExecutionProvider"):
        load_engine(tmp_path / "unet", "cpu")
    folder = save(affine_model(), tmp_path / "vae_encoder", external=True)
    (folder / "model.onnx.data").unlink()
    with pytest.raises(PackageError, match="model.onnx.data"):
        load_engine(folder, "cpu")


def test_concurrent_runs_on_one_engine_equal_sequential_runs(tmp_path):
    weights = RNG.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    engine = load_engine(save(model, tmp_path / "unet"), "cpu")
    feeds = [[RNG.standard_normal((64, 256)).astype(np.float32) for _ in range(20)] for _ in range(2)]
    expected = [[engine.run({"x": x})["y"] for x in thread_feeds] for thread_feeds in feeds]
    got: list[list] = [[], []]
    start = threading.Barrier(2)

    def work(index: int) -> None:
        start.wait()
        got[index] = [engine.run({"x": x})["y"] for x in feeds[index]]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for thread_expected, thread_got in zip(expected, got, strict=True):
        assert len(thread_got) == 20
        for a, b in zip(thread_expected, thread_got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_importing_engines_does_not_import_torch(affine_dir):
    code = f"""
        import json, sys
        import numpy as np
        import diffrt.runtime.engines
        before = sorted(m for m in ("torch", "onnxruntime") if m in sys.modules)
        engine = diffrt.runtime.engines.load_engine({str(affine_dir)!r}, "cpu")
        y = engine.run({{"x": np.ones((1, 8), np.float32)}})["y"]
        print(json.dumps({{"before": before, "torch": "torch" in sys.modules, "shape": list(y.shape)}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"before": [], "torch": False, "shape": [1, 5]}


def test_a_scalar_input_reaches_the_graph_as_a_scalar(tmp_path):
    """A 0-d feed must stay 0-d: Optimum's UNet broadcasts a scalar timestep, and a (1,) one breaks at batch 2."""
    x = helper.make_tensor_value_info("t", TensorProto.FLOAT, [])
    graph = helper.make_graph(
        [helper.make_node("Shape", ["t"], ["rank_shape"]), helper.make_node("Identity", ["t"], ["same"])],
        "scalar",
        [x],
        [
            helper.make_tensor_value_info("rank_shape", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("same", TensorProto.FLOAT, []),
        ],
    )
    engine = load_engine(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s"))
    out = engine.run({"t": np.array(981.0, dtype=np.float64)})
    assert out["rank_shape"].shape == (0,) and out["same"].shape == () and out["same"] == np.float32(981.0)


# ----- the optimized-graph cache -----------------------------------------------------------------------------------
def test_a_second_engine_of_the_same_graph_starts_from_the_cached_optimized_graph(affine_dir, tmp_path):
    settings = SessionSettings(cache_dir=tmp_path / "cache")
    first = load_engine(affine_dir, provider="cpu", settings=settings)
    entry = first.cached_graph
    assert (entry / "model.onnx").is_file() and (entry / "source.json").is_file()
    stamp = (entry / "model.onnx").stat().st_mtime_ns
    second = load_engine(affine_dir, provider="cpu", settings=settings)
    assert second.cached_graph == entry and (entry / "model.onnx").stat().st_mtime_ns == stamp  # read, not rewritten
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_array_equal(first.run({"x": x})["y"], second.run({"x": x})["y"])


def test_a_changed_graph_gets_a_new_entry_and_the_old_one_goes(tmp_path):
    folder = save(affine_model(), tmp_path / "net")
    settings = SessionSettings(cache_dir=tmp_path / "cache")
    old = load_engine(folder, provider="cpu", settings=settings).cached_graph
    times = os.stat(folder / "model.onnx")
    save(scaled_affine_model(2.0), folder)  # other weights, same size, times kept (cp -p, rsync -t, tar)
    os.utime(folder / "model.onnx", ns=(times.st_atime_ns, times.st_mtime_ns))
    assert os.stat(folder / "model.onnx").st_size == times.st_size
    engine = load_engine(folder, provider="cpu", settings=settings)
    new = engine.cached_graph
    assert new != old and new.is_dir() and not old.exists()
    x = np.ones((1, 8), np.float32)
    assert np.allclose(engine.run({"x": x})["y"], x @ (2 * W) + 2 * B, atol=1e-5)


def scaled_affine_model(factor: float) -> onnx.ModelProto:
    model = affine_model()
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    return model


def test_the_same_graph_saved_again_keeps_its_entry(tmp_path):
    folder = save(affine_model(), tmp_path / "net")
    settings = SessionSettings(cache_dir=tmp_path / "cache")
    first = load_engine(folder, provider="cpu", settings=settings).cached_graph
    save(affine_model(), folder)  # same content, a new modification time: the optimized graph still fits
    os.utime(folder / "model.onnx", ns=(1, 1))
    assert load_engine(folder, provider="cpu", settings=settings).cached_graph == first


def test_flipped_bytes_inside_a_cache_entry_are_found_and_the_entry_rebuilt(affine_dir, tmp_path, caplog):
    settings = SessionSettings(cache_dir=tmp_path / "cache")
    entry = load_engine(affine_dir, provider="cpu", settings=settings).cached_graph
    cached = entry / "model.onnx"
    data = bytearray(cached.read_bytes())
    at = bytes(data).index(W.tobytes()[:16])  # inside the stored weight W
    data[at + 2] ^= 0x40
    cached.write_bytes(bytes(data))  # same size
    with caplog.at_level(logging.WARNING, logger="diffrt.engines"):
        engine = load_engine(affine_dir, provider="cpu", settings=settings)
    assert "unusable cached graph" in caplog.text
    x = np.ones((1, 8), np.float32)
    assert np.allclose(engine.run({"x": x})["y"], x @ W + B, atol=1e-5)
    assert cached.read_bytes() != bytes(data)  # rebuilt


def test_an_unusable_cache_entry_is_dropped_and_rebuilt(affine_dir, tmp_path, caplog):
    settings = SessionSettings(cache_dir=tmp_path / "cache")
    entry = load_engine(affine_dir, provider="cpu", settings=settings).cached_graph
    (entry / "model.onnx").write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING, logger="diffrt.engines"):
        engine = load_engine(affine_dir, provider="cpu", settings=settings)
    assert "unusable cached graph" in caplog.text
    assert engine.run({"x": np.ones((1, 8), np.float32)})["y"].shape == (1, 5)
    assert (entry / "model.onnx").read_bytes() != b"not a graph"  # rebuilt


def test_no_cache_when_off_and_a_warning_when_unwritable(affine_dir, tmp_path, caplog):
    off = load_engine(affine_dir, provider="cpu", settings=SessionSettings(cache_dir=None))
    assert off.cached_graph is None
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="diffrt.engines"):
        engine = load_engine(affine_dir, provider="cpu", settings=SessionSettings(cache_dir=blocker))
    assert "not writable" in caplog.text and engine.run({"x": np.ones((2, 8), np.float32)})["y"].shape == (2, 5)


def test_cpu_sessions_share_one_arena_unless_told_not_to(affine_dir):
    shared = load_engine(affine_dir, provider="cpu", settings=SessionSettings(cache_dir=None))
    own = load_engine(affine_dir, provider="cpu", settings=SessionSettings(cache_dir=None, shared_arena=False))
    assert shared.session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(RuntimeError, match="use_env_allocators"):  # never set: each session keeps its own arena
        own.session.get_session_options().get_session_config_entry("session.use_env_allocators")
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(shared.run({"x": x})["y"], own.run({"x": x})["y"])


# ----- the GPU path's logic, run on the CPU ---------------------------------------------------------------------
def test_device_binding_logic_gives_the_plain_results_and_one_binding_per_shape(packages):
    # The CUDA engine's I/O binding (buffers per input shape, per-sample timesteps, outputs sized from the inputs' named
    # dimensions) with CPU buffers: the same code the GPU runs, short of the device.
    engine = load_engine(packages["sd1"] / "unet", "cpu")
    runner = ort_cuda.DeviceRunner(engine, device="cpu")
    rng = np.random.default_rng(0)
    width = engine.inputs["encoder_hidden_states"].shape[-1]

    def feeds(batch, size):
        return {
            "sample": rng.standard_normal((batch, 4, size, size)).astype(np.float32),
            "timestep": rng.integers(0, 1000, size=batch).astype(np.float32),
            "encoder_hidden_states": rng.standard_normal((batch, 77, width)).astype(np.float32),
        }

    for batch, size in ((2, 16), (2, 16), (1, 8), (2, 16)):
        f = feeds(batch, size)
        (bound,) = runner.run(f, ["out_sample"])
        np.testing.assert_allclose(bound, engine.session.run(["out_sample"], f)[0], rtol=1e-6, atol=1e-6)
        assert bound.shape == (batch, 4, size, size)
    assert len(runner._bindings) == 2 and not runner._plain
    binding = next(iter(runner._bindings.values()))
    assert set(binding.fixed) == {"out_sample"}  # its shape follows from the inputs': preallocated once


def test_device_binding_lets_the_runtime_size_outputs_it_cannot_infer(packages):
    # The VAE decoder's output is in pixels ("height"), which no input names: ONNX Runtime allocates it per run.
    engine = load_engine(packages["sd1"] / "vae_decoder", "cpu")
    runner = ort_cuda.DeviceRunner(engine, device="cpu")
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    (image,) = runner.run({"latent_sample": latents}, ["sample"])
    np.testing.assert_allclose(image, engine.session.run(["sample"], {"latent_sample": latents})[0], atol=1e-6)
    assert next(iter(runner._bindings.values())).fixed == {}


def test_fp16_conversion_of_a_package_graph_writes_a_loadable_fused_half_graph(packages, tmp_path):
    source = packages["sd1"] / "unet" / "model.onnx"
    target = tmp_path / "model.onnx"
    report = ort_cuda.convert_graph_to_fp16(source, target, fuse=True)
    fused = sum(node.op_type == "Softmax" for node in onnx.load(str(source), load_external_data=False).graph.node)
    assert report.startswith(f"{fused} attention blocks fused;") and fused > 0
    converted = onnx.load(str(target))
    assert (tmp_path / "model.onnx.data").is_file()
    ops = {node.op_type for node in converted.graph.node}
    assert "MultiHeadAttention" in ops
    halves = [t for t in converted.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert len(halves) > len(converted.graph.initializer) // 2
    assert [i.type.tensor_type.elem_type for i in converted.graph.input] == [TensorProto.FLOAT] * 3  # I/O float32
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    reference = load_engine(packages["sd1"] / "unet", "cpu", SessionSettings(fuse_attention=False))
    rng = np.random.default_rng(2)
    width = reference.inputs["encoder_hidden_states"].shape[-1]
    feeds = {
        "sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
        "timestep": np.full((2,), 981.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, width)).astype(np.float32),
    }
    half = session.run(["out_sample"], feeds)[0]
    full = reference.run(feeds)["out_sample"]
    assert np.abs(half - full).max() <= 1e-2 * np.abs(full).max()


def fp16_engine_stub(packages, cache_dir):
    """What OrtEngine._fp16_graph reads of an engine, for a CUDA engine's graph preparation run on the CPU."""
    import types

    model = packages["sd1"] / "vae_decoder" / "model.onnx"
    return types.SimpleNamespace(
        model_path=model, name="vae_decoder", settings=SessionSettings(cache_dir=cache_dir), _scratch=None
    )


def test_the_fp16_graph_is_converted_once_into_the_cache(packages, tmp_path):
    stub = fp16_engine_stub(packages, tmp_path / "cache")
    first = OrtEngine._fp16_graph(stub)
    assert first.parent.parent == tmp_path / "cache" / "fp16" and (first.parent / "model.onnx.data").is_file()
    stamp = first.stat().st_mtime_ns
    again = OrtEngine._fp16_graph(fp16_engine_stub(packages, tmp_path / "cache"))
    assert again == first and again.stat().st_mtime_ns == stamp  # found, not converted again
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_the_fp16_graph_goes_to_a_temporary_folder_without_a_usable_cache(packages, tmp_path, caplog):
    off = fp16_engine_stub(packages, None)
    uncached = OrtEngine._fp16_graph(off)
    assert uncached.is_file() and uncached.parent == Path(off._scratch.name)
    off._scratch.cleanup()  # what dropping the engine does
    assert not uncached.exists()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache should be")
    stub = fp16_engine_stub(packages, blocked)
    with caplog.at_level(logging.WARNING, logger="diffrt.engines"):
        graph = OrtEngine._fp16_graph(stub)
    assert graph.is_file() and graph.parent == Path(stub._scratch.name)
    assert "is not writable" in caplog.text


@pytest.mark.parametrize(
    "content,message",
    [(b"", "is empty (0 bytes)"), (b"garbage\x00\x01\x02", "damaged or not an ONNX graph"), (b"\n\x00", "re-export")],
)
def test_an_unreadable_graph_file_is_one_sentence_naming_it(tmp_path, content, message):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(content)
    with pytest.raises(PackageError) as error:
        load_engine(folder, provider="cpu", settings=SessionSettings(cache_dir=tmp_path / "cache"))
    assert message in str(error.value) and str(folder / "model.onnx") in str(error.value)
