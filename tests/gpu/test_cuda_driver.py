"""The CUDA driver API wrapper on a real GPU: devices, buffers, streams, graphs, errors; and TrtEngine's CUDA side
(buffers, shapes, graph capture and replay) with a stand-in for the tensorrt module whose "engine" is a device copy.

Skipped where there is no usable NVIDIA driver and GPU."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from diffrt.runtime.engines import SessionSettings, cuda, trt_plans
from diffrt.runtime.errors import BackendUnavailable, ConfigError

USABLE, REASON = cuda.driver_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not USABLE, reason=f"no usable CUDA driver/GPU: {REASON}")]

RNG = np.random.default_rng(0)


def random_array(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return RNG.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return RNG.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


# ----- devices ----------------------------------------------------------------------------------------------------
def test_device_query():
    assert "CUDA device" in REASON
    count = cuda.device_count()
    assert count >= 1
    device = cuda.device(0)
    assert device.index == 0 and device.name
    assert device.compute_capability >= (5, 0) and device.sm == "sm{}{}".format(*device.compute_capability)
    assert device.total_memory > 1 << 30
    assert cuda.device(0) is device
    assert device.name in str(device)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        cuda.device(count)


# ----- buffers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.uint8, np.bool_])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5, 7), (0,), (2, 0, 3), (257, 1031)])
def test_buffers_round_trip_arrays(dtype, shape):
    array = random_array(shape, dtype)
    with cuda.DeviceBuffer.from_array(array) as buffer:
        assert buffer.nbytes == array.nbytes
        back = buffer.copy_to(shape, dtype)
        assert back.dtype == np.dtype(dtype) and back.shape == shape
        np.testing.assert_array_equal(back, array)


def test_a_smaller_array_uses_the_start_of_a_buffer():
    with cuda.DeviceBuffer(4096) as buffer:
        small = np.arange(10, dtype=np.float32)
        buffer.copy_from(small)
        np.testing.assert_array_equal(buffer.copy_to((10,), np.float32), small)
        np.testing.assert_array_equal(buffer.copy_to((), np.float32), small[0])


def test_non_contiguous_arrays_are_copied_in_c_order():
    array = random_array((6, 8), np.float32).T
    with cuda.DeviceBuffer.from_array(array) as buffer:
        np.testing.assert_array_equal(buffer.copy_to(array.shape, np.float32), array)


def test_async_copies_on_a_stream():
    arrays = [random_array((64, 129), np.float32) for _ in range(4)]
    with cuda.Stream() as stream:
        buffers = [cuda.DeviceBuffer(a.nbytes) for a in arrays]
        for buffer, array in zip(buffers, arrays):
            buffer.copy_from(array, stream)
        views = [b.copy_to(a.shape, a.dtype, stream) for b, a in zip(buffers, arrays)]
        stream.synchronize()
        for view, array in zip(views, arrays):
            np.testing.assert_array_equal(view, array)
        # Two uploads through the same staging area before any synchronization: the second waits for the first.
        first, second = random_array((1 << 20,), np.float32), random_array((1 << 20,), np.float32)
        with cuda.DeviceBuffer(first.nbytes) as buffer, cuda.DeviceBuffer(first.nbytes) as copy:
            buffer.copy_from(first, stream)
            copy.copy_from_device(buffer, stream)
            buffer.copy_from(second, stream)
            got_first = copy.copy_to(first.shape, first.dtype, stream)
            stream.synchronize()
            np.testing.assert_array_equal(got_first, first)
            np.testing.assert_array_equal(buffer.copy_to(second.shape, second.dtype), second)
        for buffer in buffers:
            buffer.free()


def test_buffers_work_from_another_thread():
    array = random_array((1000,), np.int64)
    buffer = cuda.DeviceBuffer.from_array(array)
    results = {}

    def worker():
        with cuda.Stream() as stream:
            view = buffer.copy_to(array.shape, array.dtype, stream)
            stream.synchronize()
            results["array"] = view.copy()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    np.testing.assert_array_equal(results["array"], array)
    buffer.free()


# ----- graphs -----------------------------------------------------------------------------------------------------
def test_a_captured_graph_of_copies_replays_with_new_host_data():
    shape, dtype = (33, 65), np.float32
    nbytes = int(np.prod(shape)) * 4
    with cuda.Stream() as stream, cuda.DeviceBuffer(nbytes) as a, cuda.DeviceBuffer(nbytes) as b:

        def work():
            a.upload(stream)
            b.copy_from_device(a, stream)
            b.download(stream)

        a.host(shape, dtype)[...] = 0
        b.host(shape, dtype)[...] = -1
        graph = cuda.CudaGraph(stream, work)
        assert np.all(b.host(shape, dtype) == -1), "capturing records the copies without running them"
        for _ in range(3):
            data = random_array(shape, dtype)
            a.host(shape, dtype)[...] = data
            graph.launch()
            stream.synchronize()
            np.testing.assert_array_equal(b.host(shape, dtype), data)
        with cuda.Stream() as other:  # replayed on another stream
            data = random_array(shape, dtype)
            a.host(shape, dtype)[...] = data
            graph.launch(other)
            other.synchronize()
            np.testing.assert_array_equal(b.host(shape, dtype), data)
        graph.close()
        with pytest.raises(ConfigError, match="closed"):
            graph.launch()


def test_a_failed_capture_leaves_the_stream_usable():
    array = random_array((100,), np.float32)
    with cuda.Stream() as stream, cuda.DeviceBuffer(array.nbytes) as buffer:

        def broken():
            buffer.upload(stream)
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            cuda.CudaGraph(stream, broken)
        with pytest.raises(cuda.CudaError, match="cuStreamSynchronize"):  # not allowed while capturing
            cuda.CudaGraph(stream, stream.synchronize)
        with cuda.DeviceBuffer(array.nbytes, staging=False) as late:  # pinned memory cannot be allocated then
            with pytest.raises(cuda.CudaError, match="cuMemAllocHost_v2.*CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"):
                cuda.CudaGraph(stream, lambda: late.upload(stream))
            late.copy_from(array)
            np.testing.assert_array_equal(late.copy_to(array.shape, array.dtype), array)
        buffer.copy_from(array, stream)
        view = buffer.copy_to(array.shape, array.dtype, stream)
        stream.synchronize()
        np.testing.assert_array_equal(view, array)


# ----- errors -----------------------------------------------------------------------------------------------------
def test_bad_use_is_refused_clearly():
    buffer = cuda.DeviceBuffer(64)
    with pytest.raises(ConfigError, match="does not fit"):
        buffer.copy_from(np.zeros(17, np.float32))
    with pytest.raises(ConfigError, match="does not fit"):
        buffer.copy_to((3, 3), np.float64)
    with pytest.raises(ConfigError, match="does not fit"):
        buffer.copy_from_device(cuda.DeviceBuffer(128))
    buffer.free()
    assert buffer.freed
    with pytest.raises(ConfigError, match="was freed"):
        buffer.copy_from(np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match="was freed"):
        buffer.copy_to((4,), np.float32)
    with pytest.raises(ConfigError, match="was freed"):
        buffer.ptr  # noqa: B018
    buffer.free()  # twice is harmless
    with pytest.raises(ConfigError, match="byte count"):
        cuda.DeviceBuffer(-1)
    stream = cuda.Stream()
    stream.close()
    with pytest.raises(ConfigError, match="closed"):
        stream.synchronize()


def test_driver_errors_name_the_call_and_cudas_error():
    with pytest.raises(cuda.CudaError) as error:
        cuda.DeviceBuffer(1 << 50)  # a petabyte
    assert error.value.call == "cuMemAlloc_v2" and error.value.error == "CUDA_ERROR_OUT_OF_MEMORY"
    assert "cuMemAlloc_v2 failed while allocating" in str(error.value) and "out of memory" in str(error.value)


# ----- TrtEngine over a stand-in tensorrt -------------------------------------------------------------------------
def fake_tensorrt(calls: dict) -> types.ModuleType:
    """Just what TrtEngine uses at run time. The plan bytes are JSON: {"x": dtype}; the engine copies its input
    ``x`` to its output ``y`` with a device-to-device copy queued on the stream it is given (so it can be captured).
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0.fake"

    class ILogger:
        def __init__(self):
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class Context:
        def __init__(self, dtype):
            self.dtype = dtype
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shapes["x"]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            return address != 0

        def execute_async_v3(self, stream):
            calls["execute"] += 1
            nbytes = int(np.prod(self.shapes["x"])) * np.dtype(self.dtype).itemsize
            cuda._call(
                "cuMemcpyDtoDAsync_v2",
                cuda._dptr(self.addresses["y"]),
                cuda._dptr(self.addresses["x"]),
                nbytes,
                cuda._ptr(stream),
            )
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, dtype):
            self.dtype = dtype

        def get_tensor_name(self, i):
            return ("x", "y")[i]

        def get_tensor_dtype(self, name):
            return self.dtype

        def get_tensor_shape(self, name):
            return (-1, 4)

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "x" else TensorIOMode.OUTPUT

        def create_execution_context(self):
            return Context(self.dtype)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(json.loads(bytes(data))["x"])

    trt.ILogger = ILogger
    trt.TensorIOMode = TensorIOMode
    trt.Runtime = Runtime
    trt.nptype = np.dtype
    return trt


@pytest.fixture
def fake_backend(monkeypatch):
    calls = {"execute": 0}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    import diffrt.runtime.engines as engines

    saved_module = sys.modules.pop("diffrt.runtime.engines.trt", None)
    saved_attribute = engines.__dict__.pop("trt", None)
    backend = importlib.import_module("diffrt.runtime.engines.trt")
    yield backend, calls
    sys.modules.pop("diffrt.runtime.engines.trt", None)
    engines.__dict__.pop("trt", None)
    if saved_module is not None:
        sys.modules["diffrt.runtime.engines.trt"] = saved_module
    if saved_attribute is not None:
        engines.trt = saved_attribute


def fake_plan(root: Path, dtype: str) -> Path:
    """A package whose unet "plan" is the stand-in's JSON, stored as `diffrt engines build` stores plans."""
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text("{}")
    model = root / "unet" / "model.onnx"
    model.write_bytes(b"graph")
    device = cuda.device(0)
    meta = trt_plans.PlanMetadata(
        network="unet",
        onnx_sha256=trt_plans.onnx_digest(model),
        tensorrt="10.0.0.fake",
        compute_capability=device.compute_capability,
        profile={"x": ((1, 4), (2, 4), (64, 4))},
        precision="fp16",
        refittable=False,
    )
    trt_plans.write_plan(
        trt_plans.plan_folder(root, device.compute_capability, "10.0.0"),
        "unet",
        json.dumps({"x": dtype}).encode(),
        meta,
    )
    return model


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_trt_engine_moves_data_through_device_buffers(fake_backend, tmp_path, cuda_graph):
    backend, calls = fake_backend
    model = fake_plan(tmp_path / "pkg", "float16")
    engine = backend.open_engine(model, "unet", SessionSettings(cuda_graph=cuda_graph))
    assert engine.provider == "tensorrt" and list(engine.inputs) == ["x"] and list(engine.outputs) == ["y"]
    assert engine.inputs["x"].dtype == np.float16 and engine.inputs["x"].shape == (None, 4)
    runs = []
    for batch in (2, 2, 2, 8, 8, 2, 2, 1):
        x = RNG.standard_normal((batch, 4)).astype(np.float32)
        y = engine.run({"x": x})["y"]
        assert y.dtype == np.float32 and y.shape == (batch, 4)
        np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
        runs.append(calls["execute"])
    if cuda_graph:
        # A shape after another: one plain run and one captured; the same shape again replays the graph.
        assert runs == [2, 2, 2, 4, 4, 6, 6, 8]
    else:
        assert runs == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ConfigError, match="outside what its TensorRT plan was built for"):
        engine.run({"x": np.zeros((65, 4), np.float32)})
    with pytest.raises(ConfigError, match="lack 'x'"):
        engine.run({})
    engine.close()


def test_open_engine_refuses_a_stale_plan(fake_backend, tmp_path):
    backend, _ = fake_backend
    model = fake_plan(tmp_path / "pkg", "float32")
    assert backend.open_engine(model, "unet", SessionSettings()).run({"x": np.ones((1, 4), np.float32)})["y"].sum() == 4
    with pytest.raises(BackendUnavailable, match="no usable TensorRT plan.*fp32"):
        backend.open_engine(model, "unet", SessionSettings(precision="fp32"))
    model.write_bytes(b"another graph")
    with pytest.raises(BackendUnavailable, match="changed since.*diffrt engines build"):
        backend.open_engine(model, "unet", SessionSettings())


def test_trt_engine_serves_several_threads(fake_backend, tmp_path):
    backend, _ = fake_backend
    engine = backend.open_engine(fake_plan(tmp_path / "pkg", "float32"), "unet", SessionSettings(cuda_graph=True))
    results: list[tuple[np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(25):
                x = rng.standard_normal((int(rng.integers(1, 17)), 4)).astype(np.float32)
                results.append((x, engine.run({"x": x})["y"]))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 100
    for x, y in results:  # every result still holds its own run's data: none is a view of a reused buffer
        np.testing.assert_array_equal(y, x)
    engine.close()
