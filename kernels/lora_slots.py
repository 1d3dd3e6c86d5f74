"""LoRA slots: graph inputs through which low-rank adapters reach an exported graph at run time.

Each weight a LoRA may update (every Linear and Conv2d of the UNet and the text encoders: attention q/k/v/out,
feed-forward, projections, resnet convolutions, time embeddings) gets a second path beside it::

    linear (MatMul or Gemm):  y = x W^T (+ b)   ->  y + (x @ down) @ up         down: (in, rank)   up: (rank, out)
    convolution (Conv):       y = conv(x, W)    ->  y + conv(conv(x, down), up)  down: (rank, in, kh, kw), same
                                                                               strides / pads / dilations as W;
                                                                               up: (out, rank, 1, 1)

``down`` and ``up`` are graph inputs with default initializers of rank 0, so a run that feeds nothing computes the
graph as exported (a zero-width product adds zeros) and a run that feeds them adds the adapter. A linear slot's
factors are the transposes of the file's ``lora_A`` / ``lora_B`` (so no Transpose runs per step); a convolution's
are the file's own layout. Several adapters are one feed: factors concatenated along the rank, each adapter's
weight and ``alpha / rank`` folded into its ``up`` rows. ONNX Runtime takes the feeds as overridable initializers,
by plain feeds or through ``onnxruntime.LoraAdapter`` (``RunOptions.add_active_adapter``).

Where a linear layer's MatMul feeds only its bias Add, the slot's Add goes after the bias, so the MatMul + bias
pattern ONNX Runtime fuses stays whole. Weights are found through the network's weights map
(:mod:`diffrt.export.graph_folder`: which initializer holds which torch parameter), so the pass does not depend on
what the exporter called things. It edits nodes and adds small initializers only; the graph's weights are untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the pass needs onnx; the runtime reads slot lists without it
    import onnx

__all__ = ["SLOTS_FILE", "SLOTS_FORMAT", "Slot", "add_lora_slots", "read_slots", "write_slots"]

SLOTS_FILE = "lora_slots.json"
SLOTS_FORMAT = 1
FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class Slot:
    """One weight's adapter inputs: ``down`` / ``up`` graph input names and the shapes they take."""

    parameter: str
    """The torch parameter the slot adds to (canonical name, ``...to_q.weight``)."""
    kind: str
    """"linear" (down (in, rank), up (rank, out)) or "conv" (down (rank, in, kh, kw), up (out, rank, 1, 1))."""
    down: str
    up: str
    in_features: int
    out_features: int
    kernel: tuple[int, int] = (1, 1)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The torch weight's shape: (out, in) for a Linear, (out, in, kh, kw) for a Conv2d."""
        if self.kind == "conv":
            return (self.out_features, self.in_features, *self.kernel)
        return (self.out_features, self.in_features)

    @property
    def module(self) -> str:
        return self.parameter.removesuffix(".weight")

    def to_json(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter,
            "kind": self.kind,
            "down": self.down,
            "up": self.up,
            "in": self.in_features,
            "out": self.out_features,
            "kernel": list(self.kernel),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Slot:
        return cls(
            parameter=str(data["parameter"]),
            kind=str(data["kind"]),
            down=str(data["down"]),
            up=str(data["up"]),
            in_features=int(data["in"]),
            out_features=int(data["out"]),
            kernel=tuple(int(k) for k in data["kernel"]),  # type: ignore[arg-type]
        )


def _attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _linear_site(node: onnx.NodeProto, weight: str, transposed: bool) -> bool:
    """Whether ``node`` computes ``x W^T`` with ``weight`` as its right-hand side (a Linear's MatMul or Gemm)."""
    if node.op_type == "MatMul":
        return transposed and len(node.input) == 2 and node.input[1] == weight
    if node.op_type == "Gemm":
        plain = _attribute(node, "alpha", 1.0) == 1.0 and not _attribute(node, "transA", 0)
        return not transposed and plain and _attribute(node, "transB", 0) == 1 and node.input[1] == weight
    return False


def _conv_site(node: onnx.NodeProto, weight: str) -> bool:
    return (
        node.op_type == "Conv"
        and len(node.input) >= 2
        and node.input[1] == weight
        and _attribute(node, "group", 1) == 1
    )


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {output.name for output in graph.output}
        self.names = {n for node in graph.node for n in node.output} | set(self.initializers)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def after_bias(self, node: onnx.NodeProto) -> onnx.NodeProto:
        """The node whose output the slot adds to: a linear layer's bias Add when the MatMul feeds only that."""
        out = node.output[0]
        readers = self.readers.get(out, [])
        if node.op_type == "MatMul" and len(readers) == 1 and out not in self.outputs:
            add = readers[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            bias = self.initializers.get(other)
            if add.op_type == "Add" and bias is not None and len(bias.dims) == 1:
                return add
        return node


def add_lora_slots(
    model: onnx.ModelProto, weights_map: Mapping[str, Sequence[tuple[str, bool]]]
) -> tuple[onnx.ModelProto, list[Slot]]:
    """A copy of ``model`` with a LoRA slot beside every Linear and Conv2d weight ``weights_map`` locates
    (canonical parameter name -> [(initializer name, stored transposed)]), and the slots made. Weights read only by
    other ops (embedding Gathers) get none. Load large graphs with ``load_external_data=False``: only node edits
    and rank-0 initializers are added."""
    import onnx

    slotted = onnx.ModelProto()
    slotted.CopyFrom(model)
    index = _Graph(slotted.graph)
    sites: list[tuple[onnx.NodeProto, str, str]] = []  # (node, parameter, kind)
    for parameter, entries in sorted(weights_map.items()):
        for initializer, transposed in entries:
            for node in index.readers.get(initializer, []):
                if _linear_site(node, initializer, transposed):
                    sites.append((node, parameter, "linear"))
                elif _conv_site(node, initializer):
                    sites.append((node, parameter, "conv"))
    slots: dict[str, Slot] = {}
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> nodes to insert after it
    for node, parameter, kind in sites:
        slot = slots.get(parameter) or _make_slot(index, node, parameter, kind)
        if parameter not in slots:
            slots[parameter] = slot
            _declare_inputs(slotted.graph, index, slot)
        target = index.after_bias(node) if kind == "linear" else node
        new_nodes.setdefault(id(target), []).extend(_slot_nodes(index, node, target, slot))
    nodes = list(slotted.graph.node)
    del slotted.graph.node[:]
    for node in nodes:
        slotted.graph.node.append(node)
        slotted.graph.node.extend(new_nodes.get(id(node), []))
    return slotted, sorted(slots.values(), key=lambda s: s.parameter)


def _make_slot(index: _Graph, node: onnx.NodeProto, parameter: str, kind: str) -> Slot:
    weight = index.initializers[node.input[1]]
    dims = tuple(int(d) for d in weight.dims)
    module = parameter.removesuffix(".weight")
    down, up = index.fresh(f"{module}.lora_down"), index.fresh(f"{module}.lora_up")
    if kind == "conv":
        return Slot(parameter, "conv", down, up, dims[1], dims[0], (dims[2], dims[3]))
    if node.op_type == "Gemm":  # Gemm with transB keeps the torch layout (out, in)
        return Slot(parameter, "linear", down, up, dims[1], dims[0])
    return Slot(parameter, "linear", down, up, dims[0], dims[1])  # MatMul's constant is W^T (in, out)


def _declare_inputs(graph: onnx.GraphProto, index: _Graph, slot: Slot) -> None:
    from onnx import helper, numpy_helper

    rank = f"{slot.module}.rank"
    if slot.kind == "linear":
        shapes = {slot.down: [slot.in_features, rank], slot.up: [rank, slot.out_features]}
        empty = {slot.down: (slot.in_features, 0), slot.up: (0, slot.out_features)}
    else:
        shapes = {slot.down: [rank, slot.in_features, *slot.kernel], slot.up: [slot.out_features, rank, 1, 1]}
        empty = {slot.down: (0, slot.in_features, *slot.kernel), slot.up: (slot.out_features, 0, 1, 1)}
    for name, shape in shapes.items():
        graph.input.append(helper.make_tensor_value_info(name, FLOAT, shape))
        graph.initializer.append(numpy_helper.from_array(np.zeros(empty[name], np.float32), name))


def _slot_nodes(index: _Graph, node: onnx.NodeProto, target: onnx.NodeProto, slot: Slot) -> list[onnx.NodeProto]:
    """The nodes computing ``target``'s output plus the adapter's product; ``target`` writes under a new name.

    (Accumulating the product onto the base output in one ``Gemm(low, up, C=base)`` was measured slower on ONNX
    Runtime's CPU provider: it copies C rather than working in place; see ``benchmarks/LORA.md``.)"""
    from onnx import helper

    x = node.input[0]
    result = target.output[0]
    base = index.fresh(f"{result}.base")
    low, delta = index.fresh(f"{slot.module}.lora_low"), index.fresh(f"{slot.module}.lora_delta")
    # Every reader of the result (a later slot's bias Add included) reads it after the adapter's Add.
    target.output[0] = base
    if slot.kind == "linear":
        # A Gemm site's input is 2-D by the Gemm's contract, which shape inference reads from Gemm nodes only (the
        # timestep embedding's rank is unknown to it otherwise), so its slot is two Gemms; elsewhere MatMuls.
        op = "Gemm" if node.op_type == "Gemm" else "MatMul"
        product = [
            helper.make_node(op, [x, slot.down], [low], name=f"{slot.module}/lora_down"),
            helper.make_node(op, [low, slot.up], [delta], name=f"{slot.module}/lora_up"),
        ]
    else:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "kernel_shape"}
        product = [
            helper.make_node("Conv", [x, slot.down], [low], name=f"{slot.module}/lora_down", **attrs),
            helper.make_node("Conv", [low, slot.up], [delta], name=f"{slot.module}/lora_up"),
        ]
    return [*product, helper.make_node("Add", [base, delta], [result], name=f"{slot.module}/lora_add")]


# ----- the slot list beside each graph ------------------------------------------------------------------------------
def write_slots(folder: Path, slots: Sequence[Slot], rank_max: int) -> None:
    data = {"format": SLOTS_FORMAT, "rank_max": int(rank_max), "slots": [slot.to_json() for slot in slots]}
    (Path(folder) / SLOTS_FILE).write_text(json.dumps(data, indent=1) + "\n")


def read_slots(folder: Path) -> tuple[list[Slot], int] | None:
    """The slots of the graph in ``folder`` and their rank limit; None when it has no slots file. A file that does not
    read raises ValueError naming it."""
    path = Path(folder) / SLOTS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return [Slot.from_json(entry) for entry in data["slots"]], int(data["rank_max"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable LoRA slot list ({type(error).__name__}: {error})") from None
