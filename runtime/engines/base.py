"""What every engine backend shares: the :class:`Engine` protocol, :class:`TensorInfo`, :class:`SessionSettings`,
the feed and output checks each backend's ``run`` makes, and where a network's graph file is.

Imports no backend library (onnxruntime, tensorrt, CUDA): the backends import this module, never the reverse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, PackageError, check_choice
from ..schema import MODEL_FILE

logger = logging.getLogger("diffrt.engines")

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

__all__ = [
    "Engine",
    "GRAPH_OPTIMIZATIONS",
    "MODEL_FILE",
    "PRECISIONS",
    "SessionSettings",
    "TensorInfo",
    "logger",
    "model_file",
    "network_name",
    "prepare_feeds",
    "select_outputs",
    "usable_cores",
]


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as the graph declares it.

    ``shape`` holds ints for fixed dimensions and symbolic names (or ``None`` when unnamed) for dynamic ones.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


@runtime_checkable
class Engine(Protocol):
    """One network ready to run: NumPy feeds in, NumPy outputs out (floating outputs as float32)."""

    name: str
    provider: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network on ``feeds`` (input name -> array) and return the requested outputs by name."""
        ...


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionSettings:
    """How a session is set up, with defaults for a server that also does NumPy work between runs.

    - ``intra_op_threads``: threads one operator may use; ``None`` means the cores this process may run on. An
      explicit count also keeps ONNX Runtime from pinning its threads to cores, which hurts several workers per host.
    - ``inter_op_threads``: threads running independent operators at once; 1, since execution is sequential.
    - ``spinning``: whether idle intra/inter-op threads busy-wait for work. ONNX Runtime's default is to spin, which
      takes cores away from the NumPy scheduler and other requests between runs, so it is off here.
    - ``graph_optimization``: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"`` (ONNX Runtime's default).
    - ``log_level``: ONNX Runtime's log severity, 0 (verbose) to 4 (fatal); 3 shows errors only.
    - ``memory_arena``: keep freed CPU memory in ONNX Runtime's arena for the next run (faster; the process keeps
      its peak memory). Off returns it to the allocator, for hosts that hold many models.
    - ``memory_pattern``: plan each input shape's allocations once and reuse the plan (ONNX Runtime's default).
    - ``device_id``: the CUDA device an engine on the CUDA provider runs on.
    - ``config_entries``: further ONNX Runtime session config entries (key, value), applied last so they override
      the above; a mapping is accepted.
    - ``cache_dir``: where ONNX Runtime engines keep each graph as optimized for this machine, with its weights
      already packed for the CPU kernels, so the next start of the same graph skips that work. ``"auto"``:
      ``$DIFFRT_CACHE`` or ``$XDG_CACHE_HOME/diffrt`` (``~/.cache/diffrt``); ``None`` turns the cache off.
    - ``fuse_attention``: on the CPU and CUDA providers, replace each attention block of the graph by ONNX Runtime's
      ``com.microsoft.MultiHeadAttention`` before the session is built (:mod:`diffrt.kernels.attention`). Its CPU
      kernel works tile by tile and never holds the (batch x heads, tokens, tokens) score matrix, which at 512x512
      is most of an SD1.5 UNet's peak memory (``benchmarks/ATTENTION.md``). The fused graph is what the graph cache
      keeps, so the pass runs once per graph and machine. On CUDA the fused node runs flash attention in fp16.
      Needs the ``onnx`` package; without it graphs run as they are. Other providers get the graph as exported.
    - ``shared_arena``: CPU sessions with ``memory_arena`` draw from one arena per process instead of one each. Each
      session's arena keeps its own high-water mark, so a pipeline would otherwise hold the UNet's and the VAE's
      peaks at once; shared, it holds the larger (SD1.5 at 512x512: 5.29 -> 4.86 GB, ``benchmarks/MEMORY.md``).
    - ``precision``: what GPU backends compute in. ``"auto"``: fp16 on ONNX Runtime CUDA and TensorRT, fp32 on the
      CPU. ``"fp16"`` converts graphs with :mod:`diffrt.kernels.fp16` (numerically fragile ops stay fp32);
      ``"bf16"`` is TensorRT's only (on GPUs that have it). Inputs and outputs stay float32 whatever the precision.
    - ``cuda_graph``: GPU backends capture the network's kernels once per input shape as a CUDA graph and replay it,
      which removes the per-kernel launch cost (SD 1.5 UNet at 512x512 fp16 on an H200: 15.3 -> 14.1 ms a step).
      ONNX Runtime builds one session per input shape, with that shape fixed, so every node runs on the GPU; a
      graph with nodes on the CPU is refused with a ConfigError. A package applies it to its UNet only.
    """

    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    spinning: bool = False
    graph_optimization: str = "all"
    log_level: int = 3
    memory_arena: bool = True
    memory_pattern: bool = True
    device_id: int = 0
    config_entries: tuple[tuple[str, str], ...] = ()
    cache_dir: str | os.PathLike | None = "auto"
    fuse_attention: bool = True
    shared_arena: bool = True
    precision: str = "auto"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and not _positive_int(self.intra_op_threads):
            raise ConfigError(
                f"intra_op_threads={self.intra_op_threads!r} is not accepted; give a positive int or None."
            )
        if not _positive_int(self.inter_op_threads):
            raise ConfigError(f"inter_op_threads={self.inter_op_threads!r} is not accepted; give a positive int.")
        check_choice("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS, "SessionSettings")
        check_choice("log_level", self.log_level, (0, 1, 2, 3, 4), "SessionSettings")
        check_choice("precision", self.precision, PRECISIONS, "SessionSettings")
        for flag in ("fuse_attention", "shared_arena", "cuda_graph"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag}={getattr(self, flag)!r} is not accepted; give True or False.")
        if not (isinstance(self.device_id, int) and self.device_id >= 0):
            raise ConfigError(f"device_id={self.device_id!r} is not accepted; give a CUDA device index (int >= 0).")
        entries = self.config_entries
        pairs = entries.items() if isinstance(entries, Mapping) else entries
        # A tuple of str pairs keeps the frozen settings hashable whatever form the caller gave.
        object.__setattr__(self, "config_entries", tuple((str(k), str(v)) for k, v in pairs))

    @property
    def cache_path(self) -> Path | None:
        """The folder optimized graphs are cached in, or None when caching is off."""
        if self.cache_dir is None:
            return None
        if self.cache_dir != "auto":
            return Path(self.cache_dir)
        root = os.environ.get("DIFFRT_CACHE")
        if root:
            return Path(root)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffrt"

    @property
    def intra_op_thread_count(self) -> int:
        """The intra-op thread count a session gets: the explicit setting or the cores this process may use."""
        return self.intra_op_threads if self.intra_op_threads is not None else usable_cores()


def select_outputs(owner: str, outputs: Mapping[str, TensorInfo], output_names: Sequence[str] | None) -> list[str]:
    """The output names a run returns: all of ``outputs`` for None, else ``output_names`` (one name or several),
    each checked against what the engine gives."""
    if output_names is None:
        return list(outputs)
    names = [output_names] if isinstance(output_names, str) else list(output_names)
    unknown = [name for name in names if name not in outputs]
    if unknown or not names:
        raise ConfigError(f"output_names={names!r} is not accepted for {owner}; it gives {', '.join(outputs)}.")
    return names


def prepare_feeds(
    owner: str, inputs: Mapping[str, TensorInfo], feeds: Mapping[str, np.ndarray], what: str = "graph"
) -> dict[str, np.ndarray]:
    """``feeds`` checked against ``inputs`` (every input given, no unknown name, declared ranks and fixed sizes) and
    cast to the declared dtypes, C-contiguous: float32 arrays feed a float16 input, int64 token ids an int32 one. A
    float feed of an integer input must hold whole numbers. ``what`` names the engine's form in errors."""
    missing = [name for name in inputs if name not in feeds]
    unknown = [name for name in feeds if name not in inputs]
    if missing or unknown:
        problems = [f"lack {', '.join(map(repr, missing))}"] if missing else []
        problems += [f"name unknown inputs {', '.join(map(repr, unknown))}"] if unknown else []
        raise ConfigError(
            f"The feeds of {owner} {' and '.join(problems)}; {owner} takes "
            f"{', '.join(str(info) for info in inputs.values())}."
        )
    prepared = {}
    for name, info in inputs.items():
        array = np.asarray(feeds[name])
        if array.dtype.kind == "f" and info.dtype.kind in "iub" and not np.array_equal(array, np.trunc(array)):
            # A silent cast would truncate (timestep 999.5 -> 999); whole-number floats are fine.
            raise ConfigError(
                f"{owner} input {name!r} is {info.dtype.name} but was fed {array.dtype.name} values that "
                "are not whole numbers; give integers."
            )
        if len(info.shape) != array.ndim or any(
            isinstance(dim, int) and dim != size for dim, size in zip(info.shape, array.shape)
        ):
            raise ConfigError(f"{owner} input {name!r} has shape {array.shape}; the {what} takes {info}.")
        prepared[name] = np.asarray(array, dtype=info.dtype, order="C")  # ascontiguousarray would make a scalar 1-D
    return prepared


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def model_file(path: str | os.PathLike) -> Path:
    """The ``.onnx`` file at ``path``: the path itself, or ``model.onnx`` in it when it is a folder."""
    path = Path(path)
    model = path / MODEL_FILE if path.is_dir() else path
    if not model.is_file():
        raise PackageError(
            f"{model} does not exist; give a network folder of an engine package holding {MODEL_FILE} "
            "or the path of an .onnx file."
        )
    if model.stat().st_size == 0:
        raise PackageError(
            f"{model} is empty (0 bytes): a copy or an export that was cut short; re-export the package."
        )
    return model


def network_name(model: Path) -> str:
    """The network's name: its folder's in a package (``unet/model.onnx`` -> ``unet``), else the file's stem."""
    return model.parent.name if model.name == MODEL_FILE and model.parent.name else model.stem
