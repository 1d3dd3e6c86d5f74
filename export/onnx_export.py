"""Trace one torch module to ONNX under its network's shape contract, then check the graph against the module.

The module must take the network's inputs positionally, in the contract's order, and return its outputs in the
contract's order (:class:`GraphModule` adapts a model to that). Graphs whose weights pass the protobuf limit are
saved with their tensors in one ``model.onnx.data`` file beside ``model.onnx``, as Optimum writes them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import CheckpointError
from ..runtime.networks import Network
from ..runtime.schema import MODEL_FILE
from .graph_folder import save_graph, write_weights_map

DEFAULT_OPSET = 17
# protobuf refuses messages of 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


class GraphModule(torch.nn.Module):
    """Calls ``fn(**inputs)`` with the contract's inputs by name and returns its outputs as a tuple."""

    def __init__(self, model: torch.nn.Module, network: Network, fn: Callable[..., Sequence[torch.Tensor]]):
        super().__init__()
        self.model = model
        self.input_names = network.input_names
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.fn(self.model, **dict(zip(self.input_names, args, strict=True))))


@dataclass
class GraphReport:
    """What exporting one network produced."""

    name: str
    path: Path
    bytes: int
    seconds: float
    external_data: bool
    max_abs_error: float = float("nan")
    max_rel_error: float = float("nan")
    checked: tuple[tuple[int, int, int], ...] = ()


def export_graph(
    module: torch.nn.Module,
    network: Network,
    folder: Path,
    trace_size: tuple,
    opset: int = DEFAULT_OPSET,
    static_size: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    map_weights: bool = False,
) -> GraphReport:
    """Export ``module`` to ``folder/model.onnx``, tracing at ``trace_size`` = (batch, height, width) (plus, for a
    video network, a dict of its own dimensions: ``(2, 64, 64, {"latent_frames": 3})``).

    ``map_weights`` also writes ``weights.json`` (which initializer holds which parameter), so LoRA adapters can
    later be swapped into the graph without tracing it again."""
    import onnx

    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    feeds = network.sample_feeds(*trace_size[:3], **_extra(trace_size))
    args = tuple(torch.from_numpy(feeds[n]) for n in network.input_names)
    with tempfile.TemporaryDirectory(prefix="diffrt-trace-") as scratch:
        traced = Path(scratch) / MODEL_FILE
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values are expected and reviewed
            torch.onnx.export(
                module.eval(),
                args,
                str(traced),
                input_names=network.input_names,
                output_names=network.output_names,
                dynamic_axes=network.dynamic_axes(static_size=static_size),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        # Over the threshold, torch has written one file per tensor beside the graph: gather them into one file.
        traced_bytes = sum(p.stat().st_size for p in Path(scratch).iterdir())
        external = traced_bytes > external_data_threshold
        target = folder / MODEL_FILE
        proto = onnx.load(str(traced), load_external_data=True)
        dims = network.dims(*trace_size[:3], **_extra(trace_size))
        declared = _declare_dropped_inputs(proto, network, dims, network.dynamic_axes(static_size=static_size))
        if map_weights:
            write_weights_map(proto, module, folder)
        if external or declared:
            save_graph(proto, target, external=external)
        else:
            shutil.move(traced, target)
        del proto
    onnx.checker.check_model(str(target))
    size = sum(p.stat().st_size for p in folder.glob(f"{MODEL_FILE}*"))
    return GraphReport(network.name, target, size, time.perf_counter() - start, external)


def _declare_dropped_inputs(proto, network: Network, dims: dict[str, int], axes: dict[str, dict[int, str]]) -> bool:
    """Give the graph back the inputs of its contract that the trace dropped because nothing reads them (a DeepCache
    shallow UNet whose outer layers have no cross-attention never reads the text), in the contract's order, so
    every graph takes its whole contract's feeds. True when one was missing."""
    from onnx import helper

    present = {value.name: value for value in proto.graph.input}
    if all(name in present for name in network.input_names):
        return False
    inputs = []
    for spec in network.inputs:
        if spec.name in present:
            inputs.append(present.pop(spec.name))
            continue
        named = axes.get(spec.name, {})
        shape = [named.get(i, size) for i, size in enumerate(spec.resolve(dims))]
        inputs.append(
            helper.make_tensor_value_info(spec.name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), shape)
        )
    inputs.extend(present.values())  # anything else the graph takes stays, after the contract's inputs
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    return True


def _extra(size: tuple) -> dict[str, int]:
    """A size is (batch, height, width), or that plus a dict of a video network's own dimensions."""
    return dict(size[3]) if len(size) > 3 else {}


@dataclass
class Reference:
    """Inputs at one (batch, height, width) and the torch module's outputs for them."""

    size: tuple[int, int, int]
    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]


def reference_outputs(
    module: torch.nn.Module, network: Network, sizes: Sequence[tuple], seed: int = 1
) -> list[Reference]:
    """Run the torch module on seeded random inputs at each (batch, height, width)."""
    references = []
    for i, size in enumerate(sizes):
        feeds = network.sample_feeds(*size[:3], seed=seed + i, **_extra(size))
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(feeds[n]) for n in network.input_names))
        references.append(Reference(size, feeds, [o.float().numpy() for o in outputs]))
    return references


def compare_graph(path: Path, network: Network, references: Sequence[Reference]) -> tuple[float, float]:
    """Run the ONNX graph (ORT CPU) on the references' inputs.

    Returns the worst absolute error and the worst relative error (``max|a - b| / max|b|`` per output).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst_abs = worst_rel = 0.0
    for ref in references:
        got = session.run(network.output_names, ref.feeds)
        for name, g, w in zip(network.output_names, got, ref.outputs, strict=True):
            if g.shape != w.shape:
                raise AssertionError(f"{network.name}.{name}: ONNX shape {g.shape} != torch {w.shape} at {ref.size}")
            if not np.isfinite(g).all():
                raise CheckpointError(
                    f"{network.name}: the exported graph's {name!r} holds NaN or infinite values at size "
                    f"{ref.size} (torch's {'does too' if not np.isfinite(w).all() else 'is finite'}); the "
                    "weights or an adapter overflow; accepted: weights whose outputs are finite."
                )
            err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
            scale = float(np.max(np.abs(w))) if w.size else 0.0
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return worst_abs, worst_rel


def check_graphs(checks: Sequence[tuple[GraphReport, Network, Sequence[Reference]]], report, progress) -> None:
    """Compare each exported graph with its torch module's outputs (those with references) and add it to
    ``report``, in export order."""
    for graph, network, references in checks:
        if references:
            progress(network.name, "checking against torch")
            graph.max_abs_error, graph.max_rel_error = compare_graph(graph.path, network, references)
            graph.checked = tuple(r.size[:3] for r in references)
        report.graphs.append(graph)
