"""The TensorRT backend: build plans from a package's ONNX graphs, refit them, and run them as engines.

Every ``tensorrt`` call of diffrt is in this module, which imports ``tensorrt`` (10 or later) at its top: import it
through :func:`diffrt.runtime.engines.choice.trt_backend`, which reports a missing TensorRT as
BackendUnavailable. Where plans live, their keys and which one fits are :mod:`.trt_plans`' business (pure Python);
device memory, streams and CUDA graphs are :mod:`.cuda`'s (the driver API through ctypes).

- :func:`open_engine` loads the current plan of a package's network for this GPU and TensorRT as a
  :class:`TrtEngine`, or raises BackendUnavailable saying why there is none and what to run.
- :func:`build_plan` builds one network's plan with one optimization profile and stores it with its metadata.
- :func:`refit_plan` gives a refittable plan the weights of a rewritten ONNX graph (``diffrt lora apply``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorrt as trt

from ..errors import BackendUnavailable, ConfigError, DiffrtError, PackageError
from . import cuda, trt_plans
from .base import SessionSettings, TensorInfo, logger, prepare_feeds, select_outputs
from .trt_plans import PlanMetadata, Profile

TRT_VERSION: str = str(trt.__version__)
PROVIDER = "tensorrt"

if int(TRT_VERSION.split(".")[0]) < 10:
    raise BackendUnavailable(
        f"TensorRT {TRT_VERSION} is installed; diffrt needs TensorRT 10 or later (pip install 'tensorrt>=10')."
    )

__all__ = [
    "PROVIDER",
    "TRT_VERSION",
    "TrtEngine",
    "build_plan",
    "open_engine",
    "refit_plan",
    "require_device",
    "resolve_precision",
]


# ----- logging ----------------------------------------------------------------------------------------------------
class _Logger(trt.ILogger):
    """TensorRT's messages on the ``diffrt.engines`` logger; its errors are also kept for the exception raised."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: collections.deque[str] = collections.deque(maxlen=20)

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
        if level <= 1:
            self.errors.append(msg)
            logger.error("TensorRT: %s", msg)
        elif level == 2:
            logger.warning("TensorRT: %s", msg)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("TensorRT: %s", msg)

    @contextlib.contextmanager
    def collect(self) -> Iterator[list[str]]:
        """The errors TensorRT logs inside the block (from any thread: TensorRT does not say which)."""
        self.errors.clear()
        found: list[str] = []
        try:
            yield found
        finally:
            found.extend(self.errors)


LOGGER = _Logger()


def _why(errors: Sequence[str]) -> str:
    return "; ".join(errors[-3:]) if errors else "TensorRT logged no error; run with logging at DEBUG for its log"


# ----- devices ----------------------------------------------------------------------------------------------------
def require_device(index: int = 0) -> cuda.Device:
    """The CUDA device TensorRT will use; BackendUnavailable naming what is missing when there is none."""
    usable, reason = cuda.driver_status()
    if not usable:
        raise BackendUnavailable(f"TensorRT needs an NVIDIA GPU: {reason}.")
    device = cuda.device(index)
    device.activate()
    return device


def resolve_precision(requested: str, device: cuda.Device) -> str:
    """The precision a plan is built in on ``device`` (see :func:`trt_plans.resolve_precision`)."""
    builder = trt.Builder(LOGGER)
    fast_fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
    return trt_plans.resolve_precision(requested, device.compute_capability, fast_fp16=fast_fp16)


# ----- building ---------------------------------------------------------------------------------------------------
def build_plan(
    model_path: Path,
    name: str,
    profile: Profile,
    device: cuda.Device,
    precision: str,
    refittable: bool = False,
    workspace_bytes: int | None = None,
    shape_range: dict[str, list[int]] | None = None,
) -> PlanMetadata:
    """Build the plan of ``model_path`` for ``device`` with one optimization profile, and store it (with its
    metadata, and the folder's timing cache updated) under the package's plan folder. Returns its metadata.

    ``precision`` is resolved already (fp32, fp16 or bf16): fp16 / bf16 let TensorRT pick reduced-precision kernels
    where they are faster; inputs and outputs stay as the graph declares them.
    """
    package = trt_plans.package_root(model_path)
    if package is None:
        raise PackageError(f"{model_path} is not in an engine package; plans are built for packages' networks.")
    folder = trt_plans.plan_folder(package, device.compute_capability, TRT_VERSION)
    onnx_sha256 = trt_plans.onnx_digest(model_path)
    device.activate()
    start = time.perf_counter()
    builder = trt.Builder(LOGGER)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, LOGGER)
    if not parser.parse_from_file(str(model_path)):  # a path, so external data beside it is found
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PackageError(f"TensorRT's ONNX parser rejected {model_path}: {_why(errors)}.")

    graph_inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    unknown = sorted(set(profile) - set(graph_inputs))
    if unknown:
        raise PackageError(
            f"{model_path} has no input {', '.join(map(repr, unknown))}, which the {name} shape contract names; "
            f"its inputs are {', '.join(graph_inputs)}. Export the package again with `diffrt export`."
        )
    optimization_profile = builder.create_optimization_profile()
    for input_name, tensor in graph_inputs.items():
        if input_name in profile:
            low, opt, high = profile[input_name]
            optimization_profile.set_shape(input_name, low, opt, high)
        elif any(d < 0 for d in tuple(tensor.shape)):
            raise PackageError(
                f"{model_path} input {input_name!r} has dynamic shape {tuple(tensor.shape)} that the {name} shape "
                "contract does not describe; export the package again with `diffrt export`."
            )
    config = builder.create_builder_config()
    config.add_optimization_profile(optimization_profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:  # fp32 means fp32 accuracy: no TF32 matrix products either (TensorRT allows them by default)
        config.clear_flag(trt.BuilderFlag.TF32)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache_path = folder / trt_plans.TIMING_CACHE
    timing_cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if timing_cache is None or not config.set_timing_cache(timing_cache, False):
        logger.warning("%s: the timing cache %s does not fit this TensorRT/GPU; starting a new one", name, cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), False)

    logger.info("%s: building a %s TensorRT plan for %s (%s)", name, precision, device.name, device.sm)
    with LOGGER.collect() as errors:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DiffrtError(f"TensorRT could not build the {name} plan from {model_path}: {_why(errors)}.")
    metadata = PlanMetadata(
        network=name,
        onnx_sha256=onnx_sha256,
        tensorrt=TRT_VERSION,
        compute_capability=device.compute_capability,
        profile=profile,
        precision=precision,
        refittable=refittable,
        gpu=device.name,
        shape_range=shape_range,
        workspace_bytes=workspace_bytes,
        build_seconds=round(time.perf_counter() - start, 3),
        created=trt_plans.now(),
    )
    trt_plans.write_timing_cache(folder, memoryview(config.get_timing_cache().serialize()))
    trt_plans.write_plan(folder, name, memoryview(serialized), metadata)
    return trt_plans.read_metadata(trt_plans.plan_files(folder, name)[1])


# ----- refitting --------------------------------------------------------------------------------------------------
def refit_plan(plan_path: Path, onnx_path: Path, device: cuda.Device) -> PlanMetadata:
    """Give the refittable plan at ``plan_path`` the weights of ``onnx_path`` (same graph, new weights), store it
    and update its metadata's ONNX hash and key. The old plan stays in place if anything fails."""
    meta_path = plan_path.with_suffix(trt_plans.METADATA_SUFFIX)
    metadata = trt_plans.read_metadata(meta_path)
    package = trt_plans.package_root(onnx_path)
    if not metadata.refittable:
        raise ConfigError(
            f"{plan_path} was built without --refittable, so its weights cannot be replaced; rebuild it with "
            f"`diffrt engines build {package or 'PACKAGE'} --networks {metadata.network} --refittable`."
        )
    onnx_sha256 = trt_plans.onnx_digest(onnx_path)
    device.activate()
    runtime = trt.Runtime(LOGGER)
    with LOGGER.collect() as errors:
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PackageError(f"TensorRT could not load {plan_path}: {_why(errors)}; rebuild it.")
    refitter = trt.Refitter(engine, LOGGER)
    parser_refitter = trt.OnnxParserRefitter(refitter, LOGGER)
    rebuild = f"`diffrt engines build {package or 'PACKAGE'} --networks {metadata.network}`"
    if not parser_refitter.refit_from_file(str(onnx_path)):
        problems = [str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors)]
        raise DiffrtError(
            f"TensorRT could not refit {plan_path} from {onnx_path} (is it the same graph with new weights?): "
            f"{_why(problems)}. Rebuild it with {rebuild}."
        )
    with LOGGER.collect() as errors:
        refitted = refitter.refit_cuda_engine()
    if not refitted:
        missing = list(refitter.get_missing_weights())
        detail = f"weights still missing: {', '.join(missing[:5])}" if missing else _why(errors)
        raise DiffrtError(f"TensorRT could not refit {plan_path}: {detail}. Rebuild it with {rebuild}.")
    refits = (*metadata.refits, {"from_onnx_sha256": metadata.onnx_sha256, "at": trt_plans.now()})
    updated = replace(metadata, onnx_sha256=onnx_sha256, refits=refits, key="")
    trt_plans.write_plan(plan_path.parent, metadata.network, memoryview(engine.serialize()), updated)
    return trt_plans.read_metadata(meta_path)


# ----- running ----------------------------------------------------------------------------------------------------
def open_engine(model_path: Path, name: str, settings: SessionSettings) -> TrtEngine:
    """The TensorRT engine of ``<package>/<name>/model.onnx`` on ``settings.device_id``.

    BackendUnavailable (with the reason and what to run) when there is no usable GPU, or no plan for this GPU and
    TensorRT that is current for the graph as it is now and, unless ``settings.precision`` is ``auto``, of that
    precision.
    """
    device = require_device(settings.device_id)
    selection = trt_plans.select_plan(
        model_path, TRT_VERSION, device.compute_capability, precision=settings.precision, name=name
    )
    if not selection.ok:
        raise BackendUnavailable(
            f"{name}: no usable TensorRT plan for {device.name} ({device.sm}) with TensorRT {TRT_VERSION}: "
            f"{selection.reason}; run `{selection.remedy}`."
        )
    assert selection.plan is not None and selection.metadata is not None
    return TrtEngine(selection.plan, selection.metadata, name, settings, device)


class _ShapeState:
    """What one set of input shapes needs: output shapes and, with CUDA graphs, the captured graph."""

    def __init__(self, outputs: dict[str, tuple[int, ...]]) -> None:
        self.outputs = outputs
        self.graph: cuda.CudaGraph | None = None
        self.graph_failed = False


class TrtEngine:
    """One TensorRT plan ready to run; implements :class:`~diffrt.runtime.engines.Engine`.

    One execution context and one stream: runs are serialized by a lock (an execution context runs one inference
    at a time). Device buffers are kept per input and output and grown when a larger shape comes; host copies go
    through their pinned staging areas. With ``settings.cuda_graph`` the first run of an input shape is followed by
    a capture of the execution as a CUDA graph, which the following runs of the same shape replay (a pipeline call
    runs its UNet at one shape throughout); another shape drops the graph and captures its own.
    """

    def __init__(
        self, plan_path: Path, metadata: PlanMetadata, name: str, settings: SessionSettings, device: cuda.Device
    ) -> None:
        self.name = name
        self.provider = PROVIDER
        self.plan_path = Path(plan_path)
        self.metadata = metadata
        self.settings = settings
        self.device = device
        self.profile: Profile = metadata.profile
        self._lock = threading.Lock()
        device.activate()
        self._runtime = trt.Runtime(LOGGER)
        with LOGGER.collect() as errors:
            self._engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self._engine is None:
            raise PackageError(
                f"TensorRT could not load {self.plan_path} ({_why(errors)}); rebuild it with "
                f"`diffrt engines build PACKAGE --networks {name} --force`."
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DiffrtError(f"TensorRT could not create an execution context for {name} (out of GPU memory?).")
        self._stream = cuda.Stream(device)
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor)))
            except TypeError:
                raise PackageError(
                    f"{self.plan_path}: tensor {tensor!r} is a {self._engine.get_tensor_dtype(tensor)}, which NumPy "
                    "cannot hold; diffrt runs plans whose inputs and outputs are NumPy types."
                ) from None
            dims = tuple(None if d < 0 else int(d) for d in self._engine.get_tensor_shape(tensor))
            info = TensorInfo(tensor, dtype, dims)
            if self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                self.inputs[tensor] = info
            else:
                self.outputs[tensor] = info
        self._buffers: dict[str, cuda.DeviceBuffer] = {}
        self._states: dict[tuple, _ShapeState] = {}
        self._current: tuple | None = None

    # -- feeds
    def _prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = prepare_feeds(self.name, self.inputs, feeds, what="plan")
        trt_plans.check_shapes(self.profile, {n: a.shape for n, a in prepared.items()}, self.name)
        return prepared

    # -- shapes and buffers
    def _buffer(self, name: str, nbytes: int) -> None:
        """Make ``name``'s buffer hold ``nbytes``; a new buffer gets a new address, which captured graphs baked
        in, so they are dropped."""
        buffer = self._buffers.get(name)
        if buffer is not None and buffer.nbytes >= nbytes:
            return
        if buffer is not None:
            buffer.free()
        # At least one byte: TensorRT refuses a null address, even for an empty tensor.
        self._buffers[name] = buffer = cuda.DeviceBuffer(max(nbytes, 1), self.device)
        if not self._context.set_tensor_address(name, buffer.ptr):
            raise DiffrtError(f"TensorRT refused the device buffer of {self.name} tensor {name!r}.")
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        for state in self._states.values():
            if state.graph is not None:
                state.graph.close()
                state.graph = None

    def _select(self, shapes: dict[str, tuple[int, ...]]) -> _ShapeState:
        key = tuple(shapes[n] for n in self.inputs)
        state = self._states.get(key)
        if key != self._current or state is None:
            # A captured graph is only valid while the context keeps the shapes it was captured with (TensorRT
            # may replay copies of shape data it holds in the context), so switching shapes drops it.
            self._drop_graphs()
            for name, shape in shapes.items():
                if not self._context.set_input_shape(name, shape):
                    raise ConfigError(f"TensorRT refused shape {shape} for {self.name} input {name!r}.")
            if state is None:
                outputs = {name: tuple(int(d) for d in self._context.get_tensor_shape(name)) for name in self.outputs}
                unresolved = [name for name, shape in outputs.items() if any(d < 0 for d in shape)]
                if unresolved:
                    raise DiffrtError(
                        f"TensorRT could not infer the shape of {self.name} output(s) {', '.join(unresolved)} from "
                        f"the input shapes {shapes}."
                    )
                state = self._states[key] = _ShapeState(outputs)
            self._current = key
        for name, shape in shapes.items():
            self._buffer(name, _nbytes(shape, self.inputs[name].dtype))
        for name, shape in state.outputs.items():
            self._buffer(name, _nbytes(shape, self.outputs[name].dtype))
        return state

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            raise DiffrtError(f"TensorRT could not run {self.name}: {_why(list(LOGGER.errors))}.")

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the plan on ``feeds``; return ``output_names`` (default: all outputs), floating ones as float32.

        Feeds are cast to the dtypes the plan declares (a float feed of an integer input must hold whole numbers)
        and must lie inside the plan's optimization profile.
        """
        names = select_outputs(self.name, self.outputs, output_names)
        prepared = self._prepare(feeds)
        shapes = {name: tuple(array.shape) for name, array in prepared.items()}
        with self._lock:
            self.device.activate()
            state = self._select(shapes)
            stream = self._stream
            for name, array in prepared.items():
                self._buffers[name].copy_from(array, stream)
            if state.graph is not None:
                state.graph.launch(stream)
            else:
                self._execute()
                if self.settings.cuda_graph and not state.graph_failed:
                    self._capture(state)
            views = {
                name: self._buffers[name].copy_to(state.outputs[name], self.outputs[name].dtype, stream)
                for name in names
            }
            stream.synchronize()
            # Pipelines do their NumPy work in float32 whatever precision the plan computes in.
            return {
                name: view.astype(np.float32) if view.dtype.kind == "f" else view.copy() for name, view in views.items()
            }

    def _capture(self, state: _ShapeState) -> None:
        """Record this shape's execution as a CUDA graph (after one plain run, which lets TensorRT finish its
        per-shape setup). A failure is a warning: the shape then runs without a graph."""
        try:
            state.graph = cuda.CudaGraph(self._stream, self._execute)
        except DiffrtError as error:
            state.graph_failed = True
            logger.warning("%s: running without a CUDA graph for this shape: %s", self.name, error)

    def close(self) -> None:
        """Release the GPU memory, stream, graphs and TensorRT objects; the engine cannot run afterwards."""
        with self._lock:
            for state in self._states.values():
                if state.graph is not None:
                    state.graph.close()
            self._states.clear()
            for buffer in self._buffers.values():
                buffer.free()
            self._buffers.clear()
            self._stream.close()
            self._context = None
            self._engine = None

    def __repr__(self) -> str:
        inputs = ", ".join(str(info) for info in self.inputs.values())
        outputs = ", ".join(str(info) for info in self.outputs.values())
        return (
            f"TrtEngine(name={self.name!r}, plan={str(self.plan_path)!r}, precision={self.metadata.precision!r}, "
            f"inputs=[{inputs}], outputs=[{outputs}])"
        )


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
