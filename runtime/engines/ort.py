"""The ONNX Runtime backend: :class:`OrtEngine` runs one ONNX graph in one ``onnxruntime.InferenceSession``.

The session is created once and shared: ``InferenceSession.run`` may be called from several threads at once, and
:meth:`OrtEngine.run` keeps no state between calls, so one engine serves concurrent requests without a lock.
ONNX Runtime's own fallback (which prints to stdout and, on a provider failure during ``run``, rebuilds the session
on the CPU under the feet of other threads) is turned off; a provider that does not start raises
:class:`~diffrt.runtime.errors.BackendUnavailable`, and ``provider="auto"`` (in :func:`~diffrt.runtime.engines.
load_engine`) then opens the graph again on the CPU.

This module holds the engine, which provider a name means (:func:`resolve_provider`), what a session is set up
with (:func:`session_options`, the CPU arena the sessions of a process share) and how sessions are built. What a
session is built from is prepared elsewhere: the graph with its attention fused and the CPU provider's optimized
graph cache in :mod:`.graph_cache`; on the CUDA provider the fp16 graph and I/O binding in :mod:`.ort_cuda`.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ..errors import BackendUnavailable, ConfigError, PackageError
from . import graph_cache, ort_cuda
from .base import (
    MODEL_FILE,
    SessionSettings,
    TensorInfo,
    logger,
    model_file,
    network_name,
    prepare_feeds,
    select_outputs,
)
from .graph_cache import CPU
from .ort_cuda import CUDA

ALIASES = {"cpu": CPU, "cuda": CUDA}
# The onnxruntime build that ships a provider, named in the error when the installed build lacks it.
PROVIDER_PACKAGES = {
    CUDA: "onnxruntime-gpu (pip install 'diffrt[gpu]')",
    "TensorrtExecutionProvider": "onnxruntime-gpu (pip install 'diffrt[gpu]')",
    "DmlExecutionProvider": "onnxruntime-directml",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}
# ONNX element types NumPy can hold; bfloat16 and the float8 types have no NumPy dtype.
DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
OPTIMIZATION_LEVELS = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# What ONNX Runtime raises for a graph file it cannot read or build; anything else propagates unchanged.
LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.InvalidArgument,  # e.g. "No graph was found in the protobuf" for an empty or foreign file
)
SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
# Where ONNX Runtime looks for the external data (model.onnx.data) of a graph it is given as bytes.
EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def available_providers() -> list[str]:
    """The execution providers the installed onnxruntime offers, in its order of preference."""
    return list(onnxruntime.get_available_providers())


def _lacking(provider: str, ort_name: str, owner: str) -> BackendUnavailable:
    package = PROVIDER_PACKAGES.get(ort_name)
    hint = f"{package} provides it" if package else "install an onnxruntime build that provides it"
    return BackendUnavailable(
        f"provider={provider!r} for {owner} needs ONNX Runtime's {ort_name}, which the installed onnxruntime "
        f"{onnxruntime.__version__} does not offer (it offers {', '.join(available_providers())}); {hint}."
    )


def resolve_provider(provider: str, owner: str, extra: tuple[str, ...] = ()) -> str:
    """The ONNX Runtime provider name for ``provider`` ("cpu", "cuda" or a provider name the installed build offers).

    ``extra`` lists further values the caller accepts, for the error message.
    """
    offered = available_providers()
    ort_name = ALIASES.get(provider.lower(), provider)
    if ort_name in offered:
        return ort_name
    if ort_name in onnxruntime.get_all_providers():
        raise _lacking(provider, ort_name, owner)
    accepted = ", ".join(repr(value) for value in (*extra, *ALIASES, *offered))
    raise ConfigError(f"provider={provider!r} is not supported for {owner}; accepted values: {accepted}.")


def precision_for(setting: str, provider: str, owner: str) -> str:
    """The precision an engine on ``provider`` computes in for ``SessionSettings.precision`` = ``setting``."""
    if setting == "auto":
        return "fp16" if provider == CUDA else "fp32"
    if setting == "bf16":
        raise ConfigError(
            f"precision='bf16' for {owner} is for TensorRT; ONNX Runtime's {provider} takes 'auto', 'fp16' "
            "(CUDA only) or 'fp32'."
        )
    if setting == "fp16" and provider != CUDA:
        raise ConfigError(
            f"precision='fp16' for {owner} needs a GPU provider ('cuda' or 'tensorrt'); ONNX Runtime's {provider} "
            "computes in fp32: give 'auto' or 'fp32'."
        )
    return setting


@functools.cache
def _register_shared_arena() -> None:
    """One CPU arena for every session of this process that asks for it (``session.use_env_allocators``)."""
    arena, default = onnxruntime.OrtAllocatorType.ORT_ARENA_ALLOCATOR, onnxruntime.OrtMemType.DEFAULT
    memory = onnxruntime.OrtMemoryInfo("Cpu", arena, 0, default)
    onnxruntime.create_and_register_allocator(memory, onnxruntime.OrtArenaCfg(0, -1, -1, -1))


def session_options(settings: SessionSettings, provider: str = CPU) -> onnxruntime.SessionOptions:
    """``settings`` as ONNX Runtime session options (sequential execution)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_thread_count
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = OPTIMIZATION_LEVELS[settings.graph_optimization]
    options.log_severity_level = settings.log_level
    options.enable_cpu_mem_arena = settings.memory_arena
    options.enable_mem_pattern = settings.memory_pattern
    entries = dict.fromkeys(SPINNING_KEYS, "1" if settings.spinning else "0")
    if settings.shared_arena and settings.memory_arena and provider == CPU:
        _register_shared_arena()
        entries["session.use_env_allocators"] = "1"
    entries.update(settings.config_entries)  # merged first: ORT warns when a key is added twice
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return options


class OrtEngine:
    """One ONNX graph in one ONNX Runtime session; implements :class:`~diffrt.runtime.engines.Engine`.

    ``provider`` is "cpu", "cuda" or a provider name the installed onnxruntime offers (use
    :func:`~diffrt.runtime.engines.load_engine` for "auto"). Nodes the provider cannot run fall back to the CPU
    provider, as ONNX Runtime partitions graphs. A provider that cannot run here (no CUDA build, no GPU, libraries
    that do not load) raises BackendUnavailable. ``session`` is the ``onnxruntime.InferenceSession``, public for
    advanced use (profiling); ``precision`` is what it computes in ("fp32" or "fp16").
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        provider: str = CPU,
        settings: SessionSettings | None = None,
        name: str | None = None,
    ) -> None:
        self.model_path: Path = model_file(model_path)
        self.name: str = name or network_name(self.model_path)
        self.settings: SessionSettings = settings or SessionSettings()
        requested = self.requested_provider = resolve_provider(provider, owner=self.name)
        self.precision: str = precision_for(self.settings.precision, requested, self.name)
        if requested == CUDA:
            why = ort_cuda.cuda_unavailable(self.settings.device_id)
            if why:
                raise BackendUnavailable(f"provider={provider!r} for {self.name} cannot run here: {why}.")
            ort_cuda.preload_cuda_libraries()
        elif self.settings.cuda_graph:
            raise ConfigError(f"cuda_graph=True for {self.name} needs a GPU provider; {requested} has no CUDA graphs.")
        self._scratch: tempfile.TemporaryDirectory | None = None  # an uncached fp16 graph lives here
        self._graph_file = self._graph_for(requested)
        self.session = self._create_session(requested)
        self.provider: str = self.session.get_providers()[0]
        if self.provider != requested:
            raise BackendUnavailable(
                f"provider={provider!r} for {self.name}: onnxruntime offers {requested} but could not start it "
                f"(its log says why: usually CUDA 13 or cuDNN 9 libraries it cannot find, which "
                "pip install 'onnxruntime-gpu[cuda,cudnn]' provides) and would run on "
                f"{self.provider}; use provider='cpu', or 'auto' to fall back to it."
            )
        self.inputs: dict[str, TensorInfo] = {arg.name: self._tensor_info(arg) for arg in self.session.get_inputs()}
        self.outputs: dict[str, TensorInfo] = {arg.name: self._tensor_info(arg) for arg in self.session.get_outputs()}
        self.overridable: dict[str, TensorInfo] = {
            arg.name: self._tensor_info(arg) for arg in self.session.get_overridable_initializers()
        }
        """Initializers a run may replace by feeding them (the LoRA slots of a ``--lora-slots`` package)."""
        self._device = ort_cuda.DeviceRunner(self) if requested == CUDA else None

    def _graph_for(self, provider: str) -> str | bytes:
        """What the session is built from: the graph's path, its fused form as bytes (weights read from the
        package), or the path of its fp16 conversion in the cache."""
        if provider == CUDA and self.precision == "fp16":
            return str(self._fp16_graph())
        if provider in (CPU, CUDA) and self.settings.fuse_attention:
            fused = graph_cache.fused_graph(self.model_path, self.name)
            if fused is not None:
                # The fused graph (node edits only, ~1 MB for SD1.5) goes to ONNX Runtime as bytes, told to read the
                # weights from the original graph's folder. Written to a file it would need its data beside it:
                # ONNX Runtime refuses external data paths that leave the graph's folder (absolute or ../), and
                # copying 3.4 GB, or writing into a package that may be read-only, is worse. On the CPU the cache
                # keeps ONNX Runtime's optimized form of the fused graph, so this runs once per graph and machine.
                return fused
        # A path: ONNX Runtime then finds external data (model.onnx.data) beside the graph.
        return str(self.model_path)

    def _fp16_graph(self) -> Path:
        """The graph converted to fp16 (attention fused first), from the cache or made now (once per graph)."""
        graph, scratch = ort_cuda.fp16_graph(self.model_path, self.name, self.settings)
        if scratch is not None:
            self._scratch = scratch
        return graph

    def cuda_provider_options(self, **extra: str) -> dict[str, str]:
        options = {"device_id": str(self.settings.device_id)}
        options.update(extra)
        return options

    def _create_session(
        self, provider: str, dimensions: dict[str, int] | None = None, cuda_graph: bool = False
    ) -> onnxruntime.InferenceSession:
        providers: list = [CPU]
        if provider == CUDA:
            extra = {"enable_cuda_graph": "1"} if cuda_graph else {}
            providers = [(CUDA, self.cuda_provider_options(**extra)), CPU]
        elif provider != CPU:
            providers = [provider, CPU]
        graph = self._graph_file
        self.cached_graph = graph_cache.cached_graph_folder(self.model_path, provider, self.settings)
        if self.cached_graph is not None and graph_cache.usable_entry(self.cached_graph, self.name):
            session = self._open_cached(providers)
            if session is not None:
                return session
        options = session_options(self.settings, provider)
        for dim, size in (dimensions or {}).items():
            options.add_free_dimension_override_by_name(dim, size)
        if isinstance(graph, bytes) and EXTERNAL_DATA_FOLDER_KEY not in dict(self.settings.config_entries):
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER_KEY, str(self.model_path.parent.resolve()))
        staging = None
        if self.cached_graph is not None:
            staging = graph_cache.start_entry(self.cached_graph, options)
        try:
            session = onnxruntime.InferenceSession(graph, sess_options=options, providers=providers, enable_fallback=0)
        except LOAD_ERRORS as error:
            raise PackageError(
                f"onnxruntime could not load {self.model_path} (network {self.name}) on {provider}: "
                f"{str(error).strip()}; the file is damaged or not an ONNX graph: re-export the package with "
                "`diffrt export`."
            ) from error
        finally:
            if staging is not None:
                graph_cache.publish_entry(staging, self.cached_graph, self.model_path)
        return session

    def _open_cached(self, providers: list) -> onnxruntime.InferenceSession | None:
        """The session from the cached optimized graph (optimizations already applied); None if it is unusable."""
        options = session_options(self.settings, self.requested_provider)
        options.graph_optimization_level = OPTIMIZATION_LEVELS["disable"]
        try:
            session = onnxruntime.InferenceSession(
                str(self.cached_graph / MODEL_FILE), sess_options=options, providers=providers, enable_fallback=0
            )
        except LOAD_ERRORS as error:
            logger.warning("%s: dropping the unusable cached graph %s (%s)", self.name, self.cached_graph, error)
            shutil.rmtree(self.cached_graph, ignore_errors=True)
            return None
        logger.debug("%s: optimized graph from the cache %s", self.name, self.cached_graph)
        return session

    def _tensor_info(self, arg: onnxruntime.NodeArg) -> TensorInfo:
        dtype = DTYPES.get(arg.type)
        if dtype is None:
            raise PackageError(
                f"{self.model_path}: {arg.name!r} is a {arg.type}, which NumPy cannot hold; diffrt accepts graphs "
                f"whose inputs and outputs are {', '.join(DTYPES)}."
            )
        return TensorInfo(arg.name, np.dtype(dtype), tuple(arg.shape))

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on ``feeds``; return ``output_names`` (default: all outputs), floating ones as float32.

        Each feed is cast to the dtype the graph declares (float32 arrays feed a float16 graph, int64 token ids
        an int32 one); a float feed of an integer input must hold whole numbers.
        """
        names = select_outputs(self.name, self.outputs, output_names)
        overrides = {name: value for name, value in feeds.items() if name in self.overridable}
        if overrides:  # LoRA factors: optional inputs, checked like the rest
            feeds = {name: value for name, value in feeds.items() if name not in overrides}
        prepared = prepare_feeds(self.name, self.inputs, feeds)
        if overrides:
            prepared.update(prepare_feeds(self.name, {n: self.overridable[n] for n in overrides}, overrides))
        if self._device is not None and not overrides:
            results = self._device.run(prepared, names)
        else:
            # LoRA factors change per adapter set: a plain run copies them (device-resident sets are not built yet).
            results = self.session.run(names, prepared)
        # Pipelines do their NumPy work in float32 whatever precision the graph computes in.
        return {
            name: result.astype(np.float32) if result.dtype.kind == "f" and result.dtype != np.float32 else result
            for name, result in zip(names, results)
        }

    def __repr__(self) -> str:
        inputs = ", ".join(str(info) for info in self.inputs.values())
        outputs = ", ".join(str(info) for info in self.outputs.values())
        return f"OrtEngine(name={self.name!r}, provider={self.provider!r}, inputs=[{inputs}], outputs=[{outputs}])"
