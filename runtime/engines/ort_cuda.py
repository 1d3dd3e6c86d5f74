"""ONNX Runtime on the CUDA provider: whether it can run here, the fp16 form of a graph, and I/O binding.

- :func:`cuda_unavailable` says in a sentence why the CUDA provider cannot run (no CUDA build, no driver, no such
  GPU); :func:`preload_cuda_libraries` loads the CUDA and cuDNN libraries of the nvidia-* wheels once.
- :func:`fp16_graph`: an engine on the CUDA provider computes in fp16 by default (``SessionSettings.precision``):
  the graph, with its attention fused into ``MultiHeadAttention`` (flash attention on the GPU), is converted once
  by :mod:`diffrt.kernels.fp16` (:func:`convert_graph_to_fp16`) and kept in the graph cache (:mod:`.graph_cache`).
- :class:`DeviceRunner`: inputs and outputs stay float32 NumPy arrays; they are bound to device buffers allocated
  once per input shape, and with ``SessionSettings.cuda_graph`` each shape runs as a captured CUDA graph in a
  session of its own with that shape fixed.

:class:`~diffrt.runtime.engines.ort.OrtEngine` uses all three; this module never imports it (it imports this one).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime

from ..errors import BackendUnavailable, ConfigError
from ..schema import EXTERNAL_DATA_FILE
from . import graph_cache
from .base import MODEL_FILE, SessionSettings, TensorInfo, logger

CUDA = "CUDAExecutionProvider"


def cuda_unavailable(device_id: int = 0) -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run here (no CUDA build, no driver, no such GPU), or None."""
    offered = onnxruntime.get_available_providers()
    if CUDA not in offered:
        return (
            f"the installed onnxruntime {onnxruntime.__version__} is a build without {CUDA} (it offers "
            f"{', '.join(offered)}); install onnxruntime-gpu (pip install 'diffrt[gpu]') in place of onnxruntime"
        )
    from .cuda import device, driver_status

    usable, why = driver_status()
    if not usable:
        return why
    try:
        device(device_id)
    except Exception as error:  # an index past the last GPU: the driver's own message says so
        return f"CUDA device {device_id} is not usable: {error}"
    return None


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that the nvidia-* wheels install (onnxruntime >= 1.21), once; where they
    are not installed that way the system's (LD_LIBRARY_PATH) are used, as before."""
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # the session then reports precisely what it could not load
        logger.debug("onnxruntime.preload_dlls() failed: %s", error)


# ----- fp16 -------------------------------------------------------------------------------------------------------
def fp16_graph(model: Path, name: str, settings: SessionSettings) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """``model`` converted to fp16 (attention fused first), from the graph cache or made now (once per graph), and
    the temporary folder holding it where the cache could not (it must live as long as the session built from it).
    """
    try:
        from ...kernels import fp16
    except ImportError as error:
        if error.name != "onnx":
            raise
        raise BackendUnavailable(
            f"precision='fp16' for {name} converts the graph with the onnx package, which is not installed; "
            "pip install 'diffrt[gpu]' (it brings onnx), or give SessionSettings(precision='fp32')."
        ) from error
    fuse = settings.fuse_attention and graph_cache.attention_pass() is not None
    folder = graph_cache.converted_graph_folder(model, settings, str(fp16.PASS_VERSION), fuse)
    if folder is not None and graph_cache.usable_entry(folder, name):
        logger.debug("%s: fp16 graph from the cache %s", name, folder)
        return folder / MODEL_FILE, None
    staging = graph_cache.new_entry(folder, "converting without it") if folder is not None else None
    scratch = None
    if staging is None:  # a temporary folder, removed with the engine (the session holds the weights)
        scratch = tempfile.TemporaryDirectory(prefix=f"diffrt-{name}-fp16-")
        staging = Path(scratch.name)
    try:
        report = convert_graph_to_fp16(model, staging / MODEL_FILE, fuse)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: converted to fp16 for %s (%s)", name, CUDA, report)
    if scratch is not None:
        return staging / MODEL_FILE, scratch
    graph_cache.publish_entry(staging, folder, model)
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE, None
    # Publishing failed (and removed the staging folder): convert again into a temporary folder.
    scratch = tempfile.TemporaryDirectory(prefix=f"diffrt-{name}-fp16-")
    target = Path(scratch.name) / MODEL_FILE
    convert_graph_to_fp16(model, target, fuse)
    return target, scratch


def convert_graph_to_fp16(model: Path, target: Path, fuse: bool) -> str:
    """Write ``model`` converted to fp16 (attention fused first when ``fuse``) to ``target``, its weights in
    ``model.onnx.data`` beside it; return a one-line account of what changed."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from ...kernels import fp16

    graph = onnx.load(str(model), load_external_data=False)
    fused = 0
    if fuse:  # on the structure only: the pass edits nodes and never reads weights
        graph, fused = graph_cache.attention_pass().fuse_attention(graph)
    load_external_data_for_model(graph, str(model.parent))
    converted, report = fp16.convert_to_fp16(graph)
    del graph
    onnx.save_model(
        converted,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
        size_threshold=1024,
    )
    return f"{fused} attention blocks fused; {report}"


# ----- I/O binding ------------------------------------------------------------------------------------------------
class BoundEngine(Protocol):
    """What :class:`DeviceRunner` uses of an :class:`~diffrt.runtime.engines.ort.OrtEngine`."""

    name: str
    settings: SessionSettings
    session: onnxruntime.InferenceSession
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    def _create_session(
        self, provider: str, dimensions: dict[str, int] | None = None, cuda_graph: bool = False
    ) -> onnxruntime.InferenceSession: ...


class DeviceRunner:
    """Runs a CUDA engine through I/O binding: for each input shape, device buffers for every input and output are
    allocated once and bound; a run copies the inputs into them, runs, and copies the requested outputs back.

    Outputs whose shape does not follow from the inputs' symbolic dimensions are allocated by ONNX Runtime per run.
    With ``cuda_graph`` each shape gets a session of its own, built with that shape fixed (so shape arithmetic is
    folded away and every node runs on the GPU) and CUDA graph capture on; its buffers never move, as replay needs.
    Runs are serialised by a lock: a binding is state, and the GPU runs one network at a time anyway.
    """

    def __init__(self, engine: BoundEngine, device: str = "cuda") -> None:
        self.engine = engine
        self.device = device  # ONNX Runtime's device name for the buffers ("cpu" lets tests run the logic anywhere)
        self._lock = threading.Lock()
        self._bindings: dict[tuple, _Binding] = {}
        self._plain = False  # set if binding failed: plain session.run from then on (not with cuda_graph)

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        if self._plain:
            return self.engine.session.run(names, feeds)
        signature = tuple((name, array.shape) for name, array in feeds.items())
        with self._lock:
            binding = self._bindings.get(signature)
            if binding is not None:
                return binding.run(feeds, names)
            try:
                binding = self._bind(feeds)
                results = binding.run(feeds, names)
            except ConfigError:
                raise
            except Exception as error:  # an onnxruntime build whose binding API misbehaves must still run
                if self.engine.settings.cuda_graph:
                    raise ConfigError(
                        f"cuda_graph=True for {self.engine.name}: ONNX Runtime could not capture a CUDA graph of it "
                        f"({error}); give cuda_graph=False."
                    ) from error
                logger.warning(
                    "%s: I/O binding failed (%s: %s); running without it", self.engine.name, type(error).__name__, error
                )
                self._plain = True
                return self.engine.session.run(names, feeds)
            self._bindings[signature] = binding
            return results

    def _bind(self, feeds: dict[str, np.ndarray]) -> _Binding:
        engine = self.engine
        dims: dict[str, int] = {}
        for name, info in engine.inputs.items():
            for dim, size in zip(info.shape, feeds[name].shape):
                if isinstance(dim, str):
                    dims.setdefault(dim, size)
        shapes = {
            name: None
            if any(not isinstance(d, int) and d not in dims for d in info.shape)
            else tuple(d if isinstance(d, int) else dims[d] for d in info.shape)
            for name, info in engine.outputs.items()
        }
        session = engine.session
        if engine.settings.cuda_graph:
            if any(shape is None for shape in shapes.values()):
                unknown = [name for name, shape in shapes.items() if shape is None]
                raise ConfigError(
                    f"cuda_graph=True for {engine.name}: the shapes of {', '.join(unknown)} do not follow from the "
                    "inputs' named dimensions, and a CUDA graph needs every buffer fixed; give cuda_graph=False."
                )
            session = engine._create_session(CUDA, dimensions=dims, cuda_graph=True)
            logger.info("%s: session with CUDA graph capture for %s", engine.name, dims)
        return _Binding(session, feeds, shapes, engine.outputs, self.device, engine.settings.device_id)


class _Binding:
    """Device buffers bound to one session for one set of input shapes."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        feeds: dict[str, np.ndarray],
        shapes: dict[str, tuple[int, ...] | None],
        outputs: dict[str, TensorInfo],
        device: str,
        device_id: int,
    ) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.inputs: dict[str, onnxruntime.OrtValue] = {}
        for name, array in feeds.items():
            value = onnxruntime.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, device, device_id)
            self.binding.bind_ortvalue_input(name, value)
            self.inputs[name] = value
        self.order = list(outputs)
        self.fixed: dict[str, onnxruntime.OrtValue] = {}
        for name, info in outputs.items():
            shape = shapes[name]
            if shape is None:
                self.binding.bind_output(name, device, device_id)
            else:
                value = onnxruntime.OrtValue.ortvalue_from_shape_and_type(shape, info.dtype, device, device_id)
                self.binding.bind_ortvalue_output(name, value)
                self.fixed[name] = value

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        for name, array in feeds.items():
            self.inputs[name].update_inplace(array)
        self.session.run_with_iobinding(self.binding)
        if len(self.fixed) == len(self.order):
            return [self.fixed[name].numpy() for name in names]
        values = dict(zip(self.order, self.binding.get_outputs()))
        return [values[name].numpy() for name in names]
