"""int8 quantization of an exported graph for ONNX Runtime's CPU provider: static QDQ through ONNX Runtime's own
quantization tooling (``onnxruntime.quantization``).

- **Static**: activation ranges come from calibration feeds (what the pipeline itself fed the graph, collected by
  :mod:`diffrt.runtime.quantize`), so no range is computed at run time.
- **QDQ**: ``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized node. ONNX Runtime's CPU provider
  fuses them into its integer kernels (``QLinearConv``, ``MatMulIntegerToFloat``), which use VNNI or AMX where the
  CPU has them; any provider that does not is still correct, running the pairs as written.
- **Per-channel int8 weights, uint8 activations** (per tensor): the form ONNX Runtime's x86 kernels are fastest at.
- **Hybrid**: only ``Conv``, ``MatMul`` and ``Gemm`` nodes with constant weights are quantized, and the nodes whose
  quantization costs the most image quality stay in float (:data:`KEEP_FP32`, measured in
  ``benchmarks/QUALITY.md``): attention itself (fused into ``MultiHeadAttention`` before quantizing), normalizations
  and every activation-by-activation product stay float, as OpenVINO's NNCF hybrid mode keeps them for diffusion.

Needs ``onnx`` and ``onnxruntime`` (its ``quantization`` package), not torch.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .attention import fuse_attention

logger = logging.getLogger("diffrt.kernels")

__all__ = ["KEEP_FP32", "Int8Options", "QuantizedGraph", "quantize_graph"]

OP_TYPES = ("Conv", "MatMul", "Gemm")
# Node-name patterns (fnmatch, over diffrt's exported names) kept in float by default, from a sensitivity sweep on the
# SD 1.5 UNet (benchmarks/QUALITY.md): the resnets' 1x1 shortcut convolutions, which read the up blocks' concatenated
# skip connections (wide, uneven ranges: quantizing them alone tripled the UNet's error), and the first and last
# convolutions, which read and write the latents themselves.
# The patterns hold for both namings of the exported UNet ("/model/conv_in/Conv" in a plain export, "/conv_in/Conv"
# in a --deepcache one).
KEEP_FP32 = ("*/conv_shortcut/*", "*/conv_in/*", "*/conv_out/*")


@dataclass(frozen=True)
class Int8Options:
    """How a graph is quantized; recorded in ``diffrt.json`` as given."""

    op_types: tuple[str, ...] = OP_TYPES
    keep_fp32: tuple[str, ...] = KEEP_FP32
    per_channel: bool = True
    calibration: str = "minmax"  # "minmax" or "percentile" (99.999 %)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.op_types) - set(OP_TYPES))
        if unknown:
            raise ValueError(f"op_types {unknown} cannot be quantized here; accepted: {', '.join(OP_TYPES)}.")
        if self.calibration not in ("minmax", "percentile"):
            raise ValueError(f"calibration={self.calibration!r}; accepted: 'minmax', 'percentile'.")


@dataclass
class QuantizedGraph:
    """What :func:`quantize_graph` did, as ``diffrt.json`` records it."""

    quantized_nodes: int
    kept_fp32: list[str]
    calibration_samples: int
    attention_fused: int
    seconds: float
    max_rel_error: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def quantize_graph(
    model: Path,
    out: Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    options: Int8Options = Int8Options(),
    check_feeds: Iterable[Mapping[str, np.ndarray]] = (),
) -> QuantizedGraph:
    """Quantize the graph ``model`` (``model.onnx`` with its external data beside it) into ``out`` (written as
    ``out`` + ``out.data``), calibrated on ``feeds`` (each a dict of the graph's inputs). ``check_feeds`` are run
    through both graphs afterwards; the largest difference relative to the float output's range is reported."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    start = time.perf_counter()
    samples = list(feeds)
    if not samples:
        raise ValueError("quantizing needs at least one calibration sample (the graph's inputs as one dict).")
    with tempfile.TemporaryDirectory(prefix="diffrt-quantize-", dir=out.parent) as scratch:
        # ONNX Runtime's tooling reads the weights from beside the graph it is given and refuses linked files, so the
        # attention-fused graph is written next to a copy of the weights (graph edits only: the data is unchanged).
        fused_path, fused_count = _fused_copy(model, Path(scratch))
        graph = onnx.load(str(fused_path), load_external_data=False)
        weights = {init.name for init in graph.graph.initializer}
        # Only nodes whose weight (input 1) is a constant are quantized (``MatMulConstBOnly`` below).
        candidates = [
            n.name
            for n in graph.graph.node
            if n.op_type in options.op_types and len(n.input) > 1 and n.input[1] in weights
        ]
        kept = [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in options.keep_fp32)]
        del graph

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._items: Iterator[Mapping[str, np.ndarray]] = iter(samples)

            def get_next(self) -> dict[str, np.ndarray] | None:
                item = next(self._items, None)
                return None if item is None else dict(item)

        method = CalibrationMethod.MinMax if options.calibration == "minmax" else CalibrationMethod.Percentile
        quantize_static(
            str(fused_path),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types),
            per_channel=options.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            calibrate_method=method,
            use_external_data_format=True,
            extra_options={
                "MatMulConstBOnly": True,  # activation x activation products (attention, LoRA slots) stay float
                **({"CalibPercentile": 99.999} if options.calibration == "percentile" else {}),
            },
        )
    report = QuantizedGraph(
        quantized_nodes=len(candidates) - len(kept),
        kept_fp32=kept,
        calibration_samples=len(samples),
        attention_fused=fused_count,
        seconds=0.0,
        options={
            **asdict(options),
            "format": "QDQ",
            "weights": "int8 per-channel" if options.per_channel else "int8 per-tensor",
            "activations": "uint8 per-tensor",
        },
    )
    checks = list(check_feeds)
    if checks:
        report.max_rel_error = _compare(model, out, checks)
    report.seconds = round(time.perf_counter() - start, 1)
    return report


def _fused_copy(model: Path, scratch: Path) -> tuple[Path, int]:
    graph = onnx.load(str(model), load_external_data=False)
    fused, count = fuse_attention(graph)
    locations = {
        entry.value
        for init in fused.graph.initializer
        if init.data_location == onnx.TensorProto.EXTERNAL
        for entry in init.external_data
        if entry.key == "location"
    }
    for location in locations:
        shutil.copyfile(model.parent / location, scratch / location)
    path = scratch / model.name
    onnx.save(fused, str(path))
    return path, count


def _compare(reference: Path, quantized: Path, feeds: list[Mapping[str, np.ndarray]]) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    worst = 0.0
    outputs: list[list[np.ndarray]] = []
    for path in (reference, quantized):
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append([session.run(None, dict(feed))[0] for feed in feeds])
        del session
    for ref, got in zip(*outputs):
        scale = float(np.abs(ref).max()) or 1.0
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
    return worst
