"""Which backend runs a network: :func:`load_engine` opens a network folder of an engine package
(``<package>/unet/model.onnx``) or an ``.onnx`` file on the provider asked for.

- ``"auto"``: TensorRT, then ONNX Runtime's CUDA provider, then its CPU provider. Each GPU candidate is tried only
  where it can run (its library imports, a GPU is there, for TensorRT a current plan was built for this GPU); the
  choice and the reason each earlier candidate was skipped are logged at INFO on the ``diffrt.engines`` logger;
- ``"tensorrt"`` (``"trt"``): a TensorRT plan built by ``diffrt engines build`` (``<package>/engines/<gpu>-trt<v>/``);
- ``"cuda"`` / ``"cpu"``: ONNX Runtime's CUDA / CPU execution provider;
- an ONNX Runtime provider name (``"CUDAExecutionProvider"``, ``"OpenVINOExecutionProvider"``, ...).

A backend named explicitly that cannot run here raises :class:`~diffrt.runtime.errors.BackendUnavailable`, which
names what is missing (the library, the GPU, the plan for this GPU) and what to install or run. Each backend's
module (:mod:`.ort`, :mod:`.trt`) and so its library is imported here, inside the function that first needs it;
the backends never import this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ...kernels.lora_slots import SLOTS_FILE
from ..errors import BackendUnavailable, ConfigError, PackageError
from .base import Engine, SessionSettings, logger, model_file, network_name

TENSORRT_NAMES = ("tensorrt", "trt")
# What a missing or broken TensorRT install fails to import; other import errors are diffrt's and propagate.
_TENSORRT_MODULES = ("tensorrt", "tensorrt_libs", "tensorrt_bindings", "tensorrt_lean", "tensorrt_dispatch")

__all__ = ["TENSORRT_NAMES", "load_engine", "trt_backend"]


def load_engine(
    path: str | os.PathLike,
    provider: str = "auto",
    settings: SessionSettings | None = None,
    name: str | None = None,
) -> Engine:
    """Open the network at ``path`` (a package's network folder or an ``.onnx`` file) on ``provider``.

    ``provider`` is ``"auto"``, ``"tensorrt"``, ``"cuda"``, ``"cpu"`` or an ONNX Runtime provider name; ``name``
    defaults to the network folder's name. External data (``model.onnx.data``) beside the graph is read from there.
    """
    model = model_file(path)
    name = name or network_name(model)
    settings = settings or SessionSettings()
    if not isinstance(provider, str):
        raise ConfigError(
            f"provider={provider!r} for {name} is not a string; "
            "give 'auto', 'tensorrt', 'cuda', 'cpu' or an ONNX Runtime provider."
        )
    if provider.lower() in TENSORRT_NAMES:
        return _tensorrt_engine(model, name, settings)
    if provider != "auto":
        ort = _ort_backend(provider)
        ort.resolve_provider(provider, owner=name, extra=("auto", *TENSORRT_NAMES))  # its error lists all values
        return ort.OrtEngine(model, provider, settings, name)
    skipped: list[tuple[str, str]] = []
    for candidate, open_engine in (("TensorRT", _tensorrt_engine), ("ONNX Runtime CUDA", _ort_cuda_engine)):
        try:
            engine = open_engine(model, name, settings)
        except BackendUnavailable as error:
            skipped.append((candidate, str(error)))
            continue
        except PackageError as error:  # a plan or graph that exists but does not load: the next backend may
            logger.warning("%s: %s could not open it (%s); trying the next backend", name, candidate, error)
            skipped.append((candidate, str(error)))
            continue
        _log_choice(name, f"{candidate} ({engine.provider})", skipped)
        return engine
    engine = _ort_backend("cpu").OrtEngine(model, "cpu", settings, name)
    _log_choice(name, f"ONNX Runtime {engine.provider}", skipped)
    return engine


def _log_choice(name: str, chosen: str, skipped: list[tuple[str, str]]) -> None:
    reasons = "; ".join(f"{candidate}: {why}" for candidate, why in skipped) or "none"
    logger.info("%s: provider 'auto' chose %s (skipped %s)", name, chosen, reasons)


def trt_backend() -> ModuleType:
    """The TensorRT backend module (:mod:`diffrt.runtime.engines.trt`); BackendUnavailable when the ``tensorrt``
    package is not installed or its libraries do not load. Other import errors propagate unchanged."""
    try:
        from . import trt
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] not in _TENSORRT_MODULES:
            raise
        raise BackendUnavailable(
            f"TensorRT is not installed ({error}); install it with `pip install 'diffrt[trt]'` (tensorrt>=10) on a "
            "machine with an NVIDIA GPU, or use the ONNX Runtime providers ('cuda', 'cpu')."
        ) from error
    except OSError as error:
        raise BackendUnavailable(
            f"TensorRT's libraries could not be loaded ({error}); reinstall tensorrt>=10 for this CUDA version."
        ) from error
    return trt


def _tensorrt_engine(model: Path, name: str, settings: SessionSettings) -> Engine:
    """A TensorRT engine from the package's plan for this GPU; BackendUnavailable says what is missing."""
    if (model.parent / SLOTS_FILE).is_file():
        # Slot inputs would need a rank dimension in every optimization profile (0 to RANK_MAX, two per weight):
        # not built, and not verifiable while TensorRT cannot be installed here. Refit stays TensorRT's LoRA path.
        raise BackendUnavailable(
            f"provider='tensorrt' for {name}: the graph has LoRA slots (--lora-slots), which diffrt's TensorRT "
            "backend does not build; use ONNX Runtime (provider 'cuda' or 'cpu'), or a package exported without "
            "slots, with adapters fused (`diffrt lora apply`) and TensorRT's refit."
        )
    try:
        backend = trt_backend()
    except BackendUnavailable as error:
        raise BackendUnavailable(
            f"provider='tensorrt' for {name} needs TensorRT 10's Python package: {error}"
        ) from error
    return backend.open_engine(model, name, settings)


def _ort_cuda_engine(model: Path, name: str, settings: SessionSettings) -> Engine:
    return _ort_backend("cuda").OrtEngine(model, "cuda", settings, name)


def _ort_backend(provider: str) -> ModuleType:
    # Imported late so this package (and the TensorRT backend) loads without onnxruntime.
    try:
        from . import ort
    except ImportError as error:
        if error.name != "onnxruntime":
            raise
        if provider.lower() in ("cpu", "cpuexecutionprovider"):
            raise ImportError(
                "onnxruntime is not installed; install diffrt[cpu] (onnxruntime) or diffrt[gpu] (onnxruntime-gpu)."
            ) from error
        raise BackendUnavailable(
            f"provider={provider!r} needs onnxruntime, which is not installed; install diffrt[gpu] (onnxruntime-gpu) "
            "for NVIDIA GPUs or diffrt[cpu] (onnxruntime)."
        ) from error
    return ort
