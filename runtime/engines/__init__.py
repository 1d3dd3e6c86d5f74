"""Engines: one network of an engine package, ready to run on NumPy arrays.

An :class:`Engine` takes a dict of NumPy feeds and returns a dict of NumPy outputs; pipelines see nothing else of
the backend. :func:`load_engine` opens a network on the backend asked for (``"auto"``: TensorRT, then ONNX
Runtime's CUDA provider, then its CPU provider).

- :mod:`.base`: the Engine protocol, TensorInfo, SessionSettings and the checks every backend shares;
- :mod:`.choice`: :func:`load_engine`, which picks the backend;
- :mod:`.ort` (with :mod:`.graph_cache` and :mod:`.ort_cuda`): ONNX Runtime;
- :mod:`.trt` (with :mod:`.trt_plans` and :mod:`.cuda`): TensorRT;
- :mod:`.cli`: ``diffrt engines``.

Importing this package imports neither torch, onnxruntime nor tensorrt: each backend's library is imported when
its first engine is loaded.
"""

from __future__ import annotations

from .base import (
    GRAPH_OPTIMIZATIONS,
    MODEL_FILE,
    PRECISIONS,
    Engine,
    SessionSettings,
    TensorInfo,
    logger,
    model_file,
    network_name,
    prepare_feeds,
    select_outputs,
    usable_cores,
)
from .choice import TENSORRT_NAMES, load_engine

__all__ = [
    "Engine",
    "GRAPH_OPTIMIZATIONS",
    "MODEL_FILE",
    "PRECISIONS",
    "SessionSettings",
    "TENSORRT_NAMES",
    "TensorInfo",
    "load_engine",
    "logger",
    "model_file",
    "network_name",
    "prepare_feeds",
    "select_outputs",
    "usable_cores",
]
