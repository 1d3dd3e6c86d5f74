"""The ONNX Runtime backend: :class:`OrtEngine` runs one ONNX graph in one ``onnxruntime.InferenceSession``.

The session is created once and shared: ``InferenceSession.run`` may be called from several threads at once, and
:meth:`OrtEngine.run` keeps no state between calls, so one engine serves concurrent requests without a lock.
ONNX Runtime's own fallback (which prints to stdout and, on a provider failure during ``run``, rebuilds the session
on the CPU under the feet of other threads) is turned off; a provider that does not start raises
:class:`~diffrt.runtime.errors.BackendUnavailable`, and ``provider="auto"`` (in :func:`~diffrt.runtime.engines.
load_engine`) then opens the graph again on the CPU.

On the CUDA provider an engine computes in fp16 by default (``SessionSettings.precision``): the graph, with its
attention fused into ``MultiHeadAttention`` (flash attention on the GPU), is converted once by
:mod:`diffrt.kernels.fp16` and kept in the graph cache. Inputs and outputs stay float32 NumPy arrays; they are bound
to device buffers allocated once per input shape (I/O binding), and with ``SessionSettings.cuda_graph`` each shape
runs as a captured CUDA graph in a session of its own with that shape fixed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ..errors import BackendUnavailable, ConfigError, PackageError
from . import (
    MODEL_FILE,
    SessionSettings,
    TensorInfo,
    logger,
    model_file,
    network_name,
    prepare_feeds,
    select_outputs,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
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
)
SPINNING_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
CACHE_DATA_FILE = "model.onnx.data"
CACHE_SOURCE_FILE = "source.json"  # which graph file an entry was made from
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


def cuda_unavailable(device_id: int = 0) -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run here (no CUDA build, no driver, no such GPU), or None."""
    if CUDA not in available_providers():
        return (
            f"the installed onnxruntime {onnxruntime.__version__} is a build without {CUDA} (it offers "
            f"{', '.join(available_providers())}); install onnxruntime-gpu (pip install 'diffrt[gpu]') in place of "
            "onnxruntime"
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
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that the nvidia-* wheels install (onnxruntime >= 1.21), once; where they
    are not installed that way the system's (LD_LIBRARY_PATH) are used, as before."""
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as error:  # the session then reports precisely what it could not load
        logger.debug("onnxruntime.preload_dlls() failed: %s", error)


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


def cached_graph_folder(model: Path, provider: str, settings: SessionSettings) -> Path | None:
    """Where the optimized form of ``model`` is cached for this provider, machine and onnxruntime; None when off.

    The key covers what the optimized graph depends on: the graph's files (path, size, modification time), the
    onnxruntime version, the optimization level and the CPU's instruction sets (level "all" picks kernels and
    layouts for them). Only the CPU provider's sessions are cached: GPU providers optimize for the device at hand
    (their fp16 graphs are cached by :func:`converted_graph_folder`).
    """
    if settings.cache_path is None or provider != CPU or settings.graph_optimization == "disable":
        return None
    parts = [onnxruntime.__version__, provider, settings.graph_optimization, _cpu_flags()]
    attention = _attention_pass() if settings.fuse_attention else None
    if attention is not None:  # the fused graph is another graph; unfused keys stay as they were
        parts.append(f"fuse_attention-{attention.PASS_VERSION}")
    return _keyed_folder(settings.cache_path / "ort", model, parts)


def converted_graph_folder(model: Path, settings: SessionSettings, fp16_version: str, fused: bool) -> Path | None:
    """Where ``model`` converted to fp16 (attention fused first when ``fused``) is cached; None when caching is off.

    The conversion does not depend on the GPU or the onnxruntime version, only on the graph and the passes."""
    if settings.cache_path is None:
        return None
    parts = ["fp16", f"fp16-{fp16_version}"]
    if fused:
        parts.append(f"fuse_attention-{_attention_pass().PASS_VERSION}")
    return _keyed_folder(settings.cache_path / "fp16", model, parts)


def _keyed_folder(root: Path, model: Path, parts: list[str]) -> Path:
    key = hashlib.sha256()
    for part in parts:
        key.update(part.encode() + b"\0")
    for file in sorted(model.parent.glob(model.name + "*")):
        stat = file.stat()
        key.update(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode() + b"\0")
    return root / f"{network_name(model)}-{key.hexdigest()[:20]}"


@functools.cache
def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def _attention_pass() -> ModuleType | None:
    """``diffrt.kernels.attention`` where it can run, else None: it needs the onnx package, which onnxruntime
    does not bring; its absence costs memory, not correctness, so it is a warning (once per process)."""
    try:
        from ...kernels import attention
    except ImportError as error:
        if error.name != "onnx":
            raise
        logger.warning(
            "SessionSettings.fuse_attention needs the onnx package (pip install onnx); graphs run on the CPU "
            "provider with attention unfused, which takes more memory at large image sizes"
        )
        return None
    return attention


def fused_graph(model: Path, name: str) -> bytes | None:
    """``model`` with its attention fused into MultiHeadAttention, serialized without its
    weights (they stay in the original external data file); None when there is nothing to fuse or no pass."""
    attention = _attention_pass()
    if attention is None:
        return None
    import onnx  # present: the pass imports it

    try:
        graph = onnx.load(str(model), load_external_data=False)
    except Exception as error:  # ONNX Runtime then reads the file itself and says what is wrong with it
        logger.debug("%s: not fusing attention, onnx could not read %s: %s", name, model, error)
        return None
    try:
        fused, count = attention.fuse_attention(graph)
    except Exception as error:  # a failing pass must not stop the graph from running; unfused is always correct
        logger.warning(
            "%s: attention fusion failed (%s: %s); running the graph unfused", name, type(error).__name__, error
        )
        return None
    if not count:
        return None
    logger.info("%s: %d attention blocks fused into MultiHeadAttention", name, count)
    return fused.SerializeToString()


def _start_cache_entry(folder: Path, options: onnxruntime.SessionOptions) -> Path | None:
    """Ask ONNX Runtime to write the optimized graph, with its weights prepacked, into a staging folder."""
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        logger.warning("graph cache %s is not writable (%s); continuing without it", folder.parent, error)
        return None
    options.optimized_model_filepath = str(staging / MODEL_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", CACHE_DATA_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return staging


def _finish_cache_entry(staging: Path, folder: Path, model: Path) -> None:
    """Publish the staging folder under its key (all or nothing; another process may have won the race), and drop
    entries made for earlier versions of the same graph file, so re-exports do not fill the cache."""
    source = str(model.resolve())
    try:
        if (staging / MODEL_FILE).is_file() and not folder.exists():
            (staging / CACHE_SOURCE_FILE).write_text(json.dumps({"model": source}) + "\n")
            staging.rename(folder)
            for entry in folder.parent.glob(folder.name.rsplit("-", 1)[0] + "-*"):
                if entry != folder and _cache_source(entry) == source:
                    shutil.rmtree(entry, ignore_errors=True)
            return
    except OSError as error:
        logger.warning("could not store the optimized graph in %s: %s", folder, error)
    shutil.rmtree(staging, ignore_errors=True)


def _cache_source(entry: Path) -> str | None:
    try:
        return json.loads((entry / CACHE_SOURCE_FILE).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


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
            why = cuda_unavailable(self.settings.device_id)
            if why:
                raise BackendUnavailable(f"provider={provider!r} for {self.name} cannot run here: {why}.")
            _preload_cuda_libraries()
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
        self._device = _DeviceRunner(self) if requested == CUDA else None

    def _graph_for(self, provider: str) -> str | bytes:
        """What the session is built from: the graph's path, its fused form as bytes (weights read from the
        package), or the path of its fp16 conversion in the cache."""
        if provider == CUDA and self.precision == "fp16":
            return str(self._fp16_graph())
        if provider in (CPU, CUDA) and self.settings.fuse_attention:
            fused = fused_graph(self.model_path, self.name)
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
        try:
            from ...kernels import fp16
        except ImportError as error:
            if error.name != "onnx":
                raise
            raise BackendUnavailable(
                f"precision='fp16' for {self.name} converts the graph with the onnx package, which is not installed; "
                "pip install 'diffrt[gpu]' (it brings onnx), or give SessionSettings(precision='fp32')."
            ) from error
        fuse = self.settings.fuse_attention and _attention_pass() is not None
        folder = converted_graph_folder(self.model_path, self.settings, str(fp16.PASS_VERSION), fuse)
        if folder is not None and (folder / MODEL_FILE).is_file():
            logger.debug("%s: fp16 graph from the cache %s", self.name, folder)
            return folder / MODEL_FILE
        staging = None
        if folder is not None:
            staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
            try:
                staging.mkdir(parents=True)
            except OSError as error:
                logger.warning("graph cache %s is not writable (%s); converting without it", folder.parent, error)
                staging = None
        if staging is None:  # a temporary folder, removed with the engine (the session holds the weights)
            self._scratch = tempfile.TemporaryDirectory(prefix=f"diffrt-{self.name}-fp16-")
            staging = Path(self._scratch.name)
        try:
            report = convert_graph_to_fp16(self.model_path, staging / MODEL_FILE, fuse)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("%s: converted to fp16 for %s (%s)", self.name, CUDA, report)
        if self._scratch is not None and staging == Path(self._scratch.name):
            return staging / MODEL_FILE
        _finish_cache_entry(staging, folder, self.model_path)
        if (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
        # Publishing failed (and removed the staging folder): convert again into a temporary folder.
        self._scratch = tempfile.TemporaryDirectory(prefix=f"diffrt-{self.name}-fp16-")
        target = Path(self._scratch.name) / MODEL_FILE
        convert_graph_to_fp16(self.model_path, target, fuse)
        return target

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
        self.cached_graph = cached_graph_folder(self.model_path, provider, self.settings)
        if self.cached_graph is not None and (self.cached_graph / MODEL_FILE).is_file():
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
            staging = _start_cache_entry(self.cached_graph, options)
        try:
            session = onnxruntime.InferenceSession(graph, sess_options=options, providers=providers, enable_fallback=0)
        except LOAD_ERRORS as error:
            raise PackageError(
                f"onnxruntime could not load {self.model_path} (network {self.name}) on {provider}: {error}"
            ) from error
        finally:
            if staging is not None:
                _finish_cache_entry(staging, self.cached_graph, self.model_path)
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
        prepared = prepare_feeds(self.name, self.inputs, feeds)
        if self._device is not None:
            results = self._device.run(prepared, names)
        else:
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


def convert_graph_to_fp16(model: Path, target: Path, fuse: bool) -> str:
    """Write ``model`` converted to fp16 (attention fused first when ``fuse``) to ``target``, its weights in
    ``model.onnx.data`` beside it; return a one-line account of what changed."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from ...kernels import fp16

    graph = onnx.load(str(model), load_external_data=False)
    fused = 0
    if fuse:  # on the structure only: the pass edits nodes and never reads weights
        graph, fused = _attention_pass().fuse_attention(graph)
    load_external_data_for_model(graph, str(model.parent))
    converted, report = fp16.convert_to_fp16(graph)
    del graph
    onnx.save_model(
        converted,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=CACHE_DATA_FILE,
        size_threshold=1024,
    )
    return f"{fused} attention blocks fused; {report}"


class _DeviceRunner:
    """Runs a CUDA engine through I/O binding: for each input shape, device buffers for every input and output are
    allocated once and bound; a run copies the inputs into them, runs, and copies the requested outputs back.

    Outputs whose shape does not follow from the inputs' symbolic dimensions are allocated by ONNX Runtime per run.
    With ``cuda_graph`` each shape gets a session of its own, built with that shape fixed (so shape arithmetic is
    folded away and every node runs on the GPU) and CUDA graph capture on; its buffers never move, as replay needs.
    Runs are serialised by a lock: a binding is state, and the GPU runs one network at a time anyway.
    """

    def __init__(self, engine: OrtEngine, device: str = "cuda") -> None:
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
