"""Attention fused into ONNX Runtime's ``com.microsoft.MultiHeadAttention``, for the CPU and CUDA providers.

diffrt's exporter writes attention as plain ONNX (see ``diffrt.export.models.attention``)::

    q, k, v (B, S, H*D)  -> Reshape (B, S, H, D) -> Transpose to (B, H, S, D); k to (B, H, D, S)
    scores = MatMul(q, k) * scale          (B, H, Sq, Sk)   <- materialised in full
    probs  = Softmax(scores, axis=-1)      (B, H, Sq, Sk)
    out    = MatMul(probs, v) -> Transpose (B, Sq, H, D) -> Reshape (B, Sq, H*D)

At 512x512 the UNet's self-attention runs over 4096 tokens, so each (B, H, 4096, 4096) score tensor is over a
gigabyte. ONNX Runtime's CPU ``MultiHeadAttention`` takes (B, S, H*D) q/k/v and computes the same thing tile by tile
(its flash path), never holding the full score matrix. :func:`fuse_attention` replaces each such block, from the
q/k/v projections' outputs to the merged-heads output, by one ``MultiHeadAttention`` node and leaves everything it
does not recognise as it was.

The pass only edits nodes (no initializer is read or written), so a graph loaded with
``onnx.load(path, load_external_data=False)`` is fused without touching its weights. It needs ``onnx``, not torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger("diffrt.kernels")

MS_DOMAIN = "com.microsoft"
# Bumped whenever the pass writes a different graph for the same input: the runtime's graph cache key includes it.
PASS_VERSION = 2
FLOAT = onnx.TensorProto.FLOAT
# Initializers up to this many elements keep their values for shape inference (reshape targets, axes); larger ones
# are only declared, so fusing never copies weights.
_SMALL_CONSTANT = 64

__all__ = ["MS_DOMAIN", "PASS_VERSION", "fuse_attention"]


def fuse_attention(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fuse every recognised attention block of ``model``'s main graph into ``com.microsoft.MultiHeadAttention``.

    Returns a fused copy (``model`` itself is not modified) and the number of blocks fused. A block is fused only
    when it is exactly ``softmax(q k^T * scale) v`` over float32 (B, S, hidden) q/k/v split into the same number of
    heads, with no mask or bias between the two MatMuls; nodes that only fed the fused blocks are removed, all
    others are kept. With nothing to fuse the copy equals ``model``. Load large graphs with
    ``load_external_data=False``: the copy then holds the graph only.
    """
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    index = _GraphIndex(fused)
    matches = [m for node in fused.graph.node if node.op_type == "Softmax" for m in [_match(index, node)] if m]
    count = 0
    while matches:
        # A score MatMul that some other node still reads would stay beside the fused node (no gain): such
        # blocks are left unfused and the rest tried again (_rewrite changes nothing when it reports any).
        survivors = _rewrite(fused.graph, matches)
        if not survivors:
            count = len(matches)
            break
        logger.debug("attention at %s is read elsewhere; left unfused", ", ".join(m.softmax for m in survivors))
        matches = [m for m in matches if m not in survivors]
    if count:
        _ensure_ms_opset(fused)
    return fused, count


@dataclass(frozen=True)
class _Match:
    """One recognised attention block: the three (B, S, hidden) inputs, heads, scale and what the fused node
    replaces (the merged-heads Reshape, whose output it takes over) and what must disappear with it."""

    query: str
    key: str
    value: str
    heads: int
    scale: float
    merge: str  # the output of the merged-heads Reshape, which the fused node produces instead
    scores: str  # the output of MatMul(q, k^T): it must be gone after the rewrite
    softmax: str  # the Softmax node's name, for messages and for the fused node's name


class _GraphIndex:
    """Producers, consumers, constant values, element types and shapes of the tensors of one graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.types = _infer_types(model)
        self._rows: dict[str, frozenset[str]] = {}

    def initializer(self, name: str) -> onnx.TensorProto | None:
        """The initializer ``name`` is, directly or through Identity nodes (the exporter shares equal weights so)."""
        for _ in range(8):
            if name in self.initializers:
                return self.initializers[name]
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when an initializer (with its data present) or a Constant node gives it."""
        tensor = self.initializer(name)
        if tensor is None:
            node = self.producer.get(name)
            if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
                return None
            attribute = node.attribute[0]
            if attribute.name == "value":
                tensor = attribute.t
            elif attribute.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.asarray(helper.get_attribute_value(attribute))
            else:
                return None
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None  # a weight, never a shape or scale here; its data may not even be loaded
        try:
            return numpy_helper.to_array(tensor)
        except (ValueError, TypeError):
            return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1 or value.ndim > 4:
            return None
        return float(value.reshape(()))

    def dims(self, name: str) -> tuple[int | None, ...] | None:
        """The inferred dims of ``name`` (None for an unknown dim), or None when its rank is unknown."""
        info = self.types.get(name)
        return None if info is None else info[1]

    def elem_type(self, name: str) -> int | None:
        info = self.types.get(name)
        return None if info is None else info[0]

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``, when exactly one does and it is not a graph output."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def rows(self, name: str) -> frozenset[str]:
        """Tensors whose dims other than the last equal ``name``'s: ``name`` and its producers back through
        projections (MatMul by a 2-D weight), per-channel bias or scale, LayerNorm over the last axis, casts.
        The shape of any of them gives ``name``'s batch and sequence length (transformers' exports read them so)."""
        if name not in self._rows:
            found = [name]
            node = self.producer.get(name)
            while node is not None and len(found) < 16:
                source = self._row_source(node)
                if source is None or source in found:
                    break
                found.append(source)
                node = self.producer.get(source)
            self._rows[name] = frozenset(found)
        return self._rows[name]

    def _same_rows(self, first: str, second: str) -> bool:
        """Whether two tensors provably share their leading dims: both trace back (see :meth:`rows`) to one tensor,
        and neither is a constant."""
        if self.constant(first) is not None or self.constant(second) is not None:
            return False
        return bool(self.rows(first) & self.rows(second))

    def _row_source(self, node: onnx.NodeProto) -> str | None:
        op = node.op_type
        if op in ("Identity", "Cast"):
            return node.input[0]
        if op == "LayerNormalization":
            axis = _attribute(node, "axis", -1)
            rank = self.dims(node.input[0])
            return node.input[0] if axis == -1 or (rank is not None and axis == len(rank) - 1) else None
        if op == "MatMul":
            weight = self.initializer(node.input[1])
            return node.input[0] if weight is not None and len(weight.dims) == 2 else None
        if op == "Add" and len(node.input) == 2 and self._same_rows(*node.input):
            return node.input[0]  # a sum of two row-aligned tensors (a LoRA slot: x W + (x down) up)
        if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
            first, second = node.input
            for data, other in ((first, second), (second, first)):
                declared = self.initializer(other)
                constant = declared.dims if declared is not None else getattr(self.constant(other), "shape", None)
                if constant is not None and len(constant) <= 1 and (op in ("Add", "Mul") or data == node.input[0]):
                    return data
        return None


def _infer_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    """Element type and dims of every tensor ONNX shape inference can tell, from a weight-free skeleton of the
    model (large initializers become inputs), so inference never needs nor copies the weights."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {value.name for value in graph.input}
    for tensor in model.graph.initializer:
        small = tensor.data_location != onnx.TensorProto.EXTERNAL and np.prod(tensor.dims, dtype=np.int64) <= (
            _SMALL_CONSTANT
        )
        if tensor.name in declared:
            continue  # an overridable initializer (a LoRA slot): its declared input type is the general one
        if small:
            graph.initializer.append(tensor)
        else:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton).graph
    except Exception as error:  # inference is best effort: without it nothing is fused, which is safe
        logger.debug("shape inference failed (%s); attention is left unfused", error)
        inferred = graph
    types: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.elem_type:
            continue
        dims = None
        if tensor_type.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        types[value.name] = (tensor_type.elem_type, dims)
    for tensor in model.graph.initializer:
        types[tensor.name] = (tensor.data_type, tuple(tensor.dims))
    return types


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


# ----- matching ------------------------------------------------------------------------------------------------
_IDENTITY4 = (0, 1, 2, 3)
_SPLIT = (0, 2, 1, 3)  # (B, S, H, D) -> (B, H, S, D), and back from the MatMul's output
_SPLIT_KEY = (0, 2, 3, 1)  # (B, S, H, D) -> (B, H, D, S): k transposed for q @ k^T


def _match(index: _GraphIndex, softmax: onnx.NodeProto) -> _Match | None:
    """The attention block around ``softmax``, or None when it is not one this pass can fuse exactly."""
    axis = _attribute(softmax, "axis", -1 if index.opset >= 13 else 1)
    if axis not in (-1, 3):
        return None
    # Backwards from the Softmax to MatMul(q, k^T): no-op casts and constant scalings only.
    scale = 1.0
    tensor = softmax.input[0]
    while True:
        node = index.producer.get(tensor)
        if node is None or index.only_consumer(tensor) is None:
            return None
        if node.op_type == "MatMul":
            break
        factor = _scalar_factor(index, node)
        if factor is None:
            return None
        scale *= factor
        tensor = node.input[0] if node.op_type in ("Cast", "Identity") else _data_input(index, node)
    scores = node
    # Forwards from the Softmax to MatMul(probs, v): no-op casts only.
    tensor = softmax.output[0]
    while True:
        node = index.only_consumer(tensor)
        if node is None:
            return None
        if node.op_type == "MatMul" and node.input[0] == tensor:
            break
        if not _is_noop(node):
            return None
        tensor = node.output[0]
    context = node
    # The merged heads: Transpose(s) back to (B, S, H, D), then Reshape to (B, S, H*D).
    merge, perm = _forward_transposes(index, context.output[0])
    if merge is None or merge.op_type != "Reshape" or perm != _SPLIT:
        return None
    query = _head_split(index, scores.input[0], _SPLIT)
    key = _head_split(index, scores.input[1], _SPLIT_KEY)
    value = _head_split(index, context.input[1], _SPLIT, scaling=False)
    if query is None or key is None or value is None:
        return None
    (q_split, q_scale), (k_split, k_scale), (v_split, _) = query, key, value
    q, k, v = (split.input[0] for split in (q_split, k_split, v_split))
    for name in (q, k, v):
        dims = index.dims(name)
        if index.elem_type(name) != FLOAT or dims is None or len(dims) != 3:
            return None  # MultiHeadAttention's CPU kernel is float32 only, on (B, S, hidden) inputs
    heads = {_split_heads(index, split, split.input[0], q) for split in (q_split, k_split, v_split)}
    if len(heads) != 1 or None in heads or not _merges_heads(index, merge, merge.input[0], q, v):
        return None
    return _Match(
        query=q,
        key=k,
        value=v,
        heads=heads.pop(),
        scale=scale * q_scale * k_scale,
        merge=merge.output[0],
        scores=scores.output[0],
        softmax=softmax.name or softmax.output[0],
    )


def _is_noop(node: onnx.NodeProto) -> bool:
    """Identity, or a Cast to float32 (every tensor here is checked to be float32 already)."""
    return node.op_type == "Identity" or (node.op_type == "Cast" and _attribute(node, "to", 0) == FLOAT)


def _data_input(index: _GraphIndex, node: onnx.NodeProto) -> str:
    return node.input[1] if index.scalar(node.input[0]) is not None and node.op_type == "Mul" else node.input[0]


def _scalar_factor(index: _GraphIndex, node: onnx.NodeProto) -> float | None:
    """What ``node`` multiplies its data by: 1 for a no-op, c for Mul by a scalar c, 1/c for Div by c."""
    if _is_noop(node):
        return 1.0
    if node.op_type == "Mul" and len(node.input) == 2:
        for other in (node.input[1], node.input[0]):
            value = index.scalar(other)
            if value is not None and index.elem_type(other) == FLOAT:
                return value
    if node.op_type == "Div" and len(node.input) == 2:
        value = index.scalar(node.input[1])
        if value and index.elem_type(node.input[1]) == FLOAT:
            return 1.0 / value
    return None


def _compose(outer: tuple[int, ...], inner: tuple[int, ...]) -> tuple[int, ...]:
    """One permutation for two Transposes, ``outer`` applied to the output of ``inner``: result[j] = inner[outer[j]]."""
    return tuple(inner[axis] for axis in outer)


def _head_split(
    index: _GraphIndex, tensor: str, want: tuple[int, ...], scaling: bool = True
) -> tuple[onnx.NodeProto, float] | None:
    """Back from a MatMul operand through Transposes (composing to ``want``), no-op casts and, with ``scaling``,
    constant scalings, to the Reshape that splits the heads; that Reshape and the scale picked up on the way."""
    perm, scale = _IDENTITY4, 1.0
    while True:
        node = index.producer.get(tensor)
        if node is None:
            return None
        if node.op_type == "Reshape":
            return (node, scale) if perm == want else None
        if node.op_type == "Transpose":
            inner = tuple(_attribute(node, "perm", ()))
            if sorted(inner) != list(_IDENTITY4):
                return None
            perm = _compose(perm, inner)
            tensor = node.input[0]
            continue
        factor = _scalar_factor(index, node) if scaling else (1.0 if _is_noop(node) else None)
        if factor is None:
            return None
        scale *= factor
        tensor = node.input[0] if _is_noop(node) else _data_input(index, node)


def _forward_transposes(index: _GraphIndex, tensor: str) -> tuple[onnx.NodeProto | None, tuple[int, ...]]:
    """From the MatMul(probs, v) output through Transposes to the next other node; Shape readers (which feed
    the final Reshape's target in some exports) are looked past."""
    perm = _IDENTITY4
    if index.only_consumer(tensor) is None:
        return None, perm
    while True:
        readers = [n for n in index.consumers.get(tensor, []) if n.op_type != "Shape"]
        if len(readers) != 1 or tensor in index.outputs:
            return None, perm
        node = readers[0]
        if node.op_type != "Transpose":
            return node, perm
        inner = tuple(_attribute(node, "perm", ()))
        if sorted(inner) != list(_IDENTITY4):
            return None, perm
        perm = _compose(inner, perm)
        tensor = node.output[0]


@dataclass(frozen=True)
class _Dim:
    """One entry of a Reshape target: a constant, or dim ``axis`` of tensor ``of`` read with Shape."""

    constant: int | None = None
    of: str | None = None
    axis: int | None = None


def _target(index: _GraphIndex, name: str) -> list[_Dim] | None:
    """The entries of a Reshape target, from a constant or from Concat(axis 0) of constants and Shape reads."""
    value = index.constant(name)
    if value is not None:
        return [_Dim(constant=int(v)) for v in value.reshape(-1)] if value.ndim == 1 else None
    node = index.producer.get(name)
    if node is None or node.op_type != "Concat" or _attribute(node, "axis", 0) not in (0, -1):
        return None
    dims: list[_Dim] = []
    for piece in node.input:
        read = _shape_read(index, piece)
        if read is None:
            return None
        dims += read
    return dims


def _shape_read(index: _GraphIndex, name: str) -> list[_Dim] | None:
    value = index.constant(name)
    if value is not None:
        return [_Dim(constant=int(v)) for v in value.reshape(-1)] if value.ndim <= 1 else None
    node = index.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Unsqueeze":
        axes = _attribute(node, "axes", None) if len(node.input) < 2 else index.constant(node.input[1])
        gather = index.producer.get(node.input[0])
        if axes is None or list(np.reshape(axes, -1)) != [0] or gather is None or gather.op_type != "Gather":
            return None
        position = index.constant(gather.input[1])
        if position is None or position.ndim != 0 or _attribute(gather, "axis", 0) != 0:
            return None
        shape = _shape_of(index, gather.input[0])
        return None if shape is None or not -len(shape) <= int(position) < len(shape) else [shape[int(position)]]
    return _shape_of(index, name)


def _shape_of(index: _GraphIndex, name: str) -> list[_Dim] | None:
    """``name`` as the dims it reads when it is Shape(x) (with start/end), or a unit-step Slice of one."""
    node = index.producer.get(name)
    start, end = 0, None
    if node is not None and node.op_type == "Slice" and len(node.input) >= 3:
        # Slice(Shape(x), starts, ends[, axes=0[, steps=1]]) with one constant bound each.
        bounds = [index.constant(n) if n else np.array([default]) for n, default in zip(node.input[1:], (0, 0, 0, 1))]
        if any(b is None or b.size != 1 for b in bounds):
            return None
        bounds = [int(b.reshape(())) for b in bounds]
        if bounds[2:3] not in ([], [0], [-1]) or bounds[3:4] not in ([], [1]):
            return None
        start, end = bounds[0], bounds[1]
        node = index.producer.get(node.input[0])
    if node is None or node.op_type != "Shape":
        return None
    dims = index.dims(node.input[0])
    if dims is None:
        return None
    rank = len(dims)
    lo = _attribute(node, "start", 0)
    hi = _attribute(node, "end", rank)
    axes = list(range(rank))[lo:hi][start:end]
    return [_Dim(of=node.input[0], axis=axis) for axis in axes]


def _is_dim(index: _GraphIndex, dim: _Dim, sources: Iterable[str], axis: int, copy_of: str | None) -> bool:
    """Whether ``dim`` is dim ``axis`` of (any of) ``sources``: read with Shape, copied by a 0 from ``copy_of``
    (a Reshape's own input, when ``axis`` is its position), or a constant those tensors are known to have."""
    sources = tuple(sources)
    if dim.of is not None:
        return dim.axis == axis and dim.of in sources
    if dim.constant == 0:
        return copy_of is not None
    known = [index.dims(name) for name in sources]
    return (
        dim.constant is not None
        and dim.constant > 0
        and any(d and len(d) > axis and d[axis] == dim.constant for d in known)
    )


def _split_heads(index: _GraphIndex, reshape: onnx.NodeProto, x: str, query: str) -> int | None:
    """The head count when ``reshape`` turns (B, S, H*D) ``x`` into (B, S, H, D), else None.

    The batch may be read from the query's shape (the exporter reshapes k and v with q's batch), the sequence
    length from ``x``'s own; an unknown dim is accepted only where Reshape's arithmetic forces it to be right."""
    dims = _target(index, reshape.input[1])
    if dims is None or len(dims) != 4:
        return None
    copy = x if _attribute(reshape, "allowzero", 0) == 0 else None
    heads, size = dims[2].constant, dims[3].constant
    if heads is None or heads <= 0 or size is None or (size <= 0 and size != -1):
        return None
    batch_ok = _is_dim(index, dims[0], index.rows(x) | index.rows(query), 0, copy)
    if dims[1].constant == -1:
        # (B, -1, H, D): the sequence length follows from the element count only when hidden == H * D.
        hidden = index.dims(x)[2]
        sequence_ok = size > 0 and hidden == heads * size
    else:
        sequence_ok = size == -1 or size > 0
        sequence_ok = sequence_ok and _is_dim(index, dims[1], index.rows(x), 1, copy)
    return heads if batch_ok and sequence_ok else None


def _merges_heads(index: _GraphIndex, reshape: onnx.NodeProto, x: str, query: str, value: str) -> bool:
    """Whether ``reshape`` turns (B, Sq, H, D) ``x`` into (B, Sq, H*D): with batch and sequence pinned to the
    query's, the last entry can only be H*D wherever the Reshape is valid at all."""
    dims = _target(index, reshape.input[1])
    if dims is None or len(dims) != 3 or dims[2].constant == 0:
        return False
    copy = x if _attribute(reshape, "allowzero", 0) == 0 else None
    sources = index.rows(query) | {x}
    return _is_dim(index, dims[0], sources, 0, copy) and _is_dim(index, dims[1], sources, 1, copy)


# ----- rewriting -----------------------------------------------------------------------------------------------
def _rewrite(graph: onnx.GraphProto, matches: list[_Match]) -> list[_Match]:
    """Put a MultiHeadAttention node in place of each match's merged-heads Reshape and drop the nodes that no
    longer feed anything (nodes dead before are left as they were). Returns the matches whose score MatMul is
    still needed by some other node (the graph is then left half done and must be rebuilt without them)."""
    by_output = {m.merge: m for m in matches}
    names = {node.name for node in graph.node}
    dead_before = _dead(graph.node, graph)
    nodes = []
    for node in graph.node:
        match = by_output.get(node.output[0]) if node.op_type == "Reshape" and node.output else None
        nodes.append(_fused_node(match, names) if match else node)
    dead = _dead(nodes, graph)
    survivors = {node.output[0] for position, node in enumerate(nodes) if position not in dead and node.output}
    left = [m for m in matches if m.scores in survivors]
    if left:
        return left
    removed = {out for position, node in enumerate(nodes) if position in dead - dead_before for out in node.output}
    kept = [node for position, node in enumerate(nodes) if position not in dead or position in dead_before]
    del graph.node[:]
    graph.node.extend(kept)
    stale = [value for value in graph.value_info if value.name in removed]
    for value in stale:
        graph.value_info.remove(value)
    return []


def _fused_node(match: _Match, names: set[str]) -> onnx.NodeProto:
    scope = match.softmax.rsplit("/", 1)[0] + "/" if "/" in match.softmax else ""
    name, suffix = f"{scope}MultiHeadAttention", 0
    while name in names:
        suffix += 1
        name = f"{scope}MultiHeadAttention_{suffix}"
    names.add(name)
    return helper.make_node(
        "MultiHeadAttention",
        [match.query, match.key, match.value],
        [match.merge],
        name=name,
        domain=MS_DOMAIN,
        num_heads=match.heads,
        scale=float(np.float32(match.scale)),
    )


def _dead(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> set[int]:
    """Positions of the nodes none of whose outputs reach a graph output (nodes are in topological order)."""
    needed = {value.name for value in graph.output}
    dead = set()
    for position in range(len(nodes) - 1, -1, -1):
        node = nodes[position]
        if not any(name in needed for name in node.output if name):
            dead.add(position)
            continue
        needed.update(node.input)
        needed.update(_captured(node))
    return dead


def _captured(node: onnx.NodeProto) -> Iterator[str]:
    """Names the subgraphs of ``node`` (If, Loop, Scan) read, which may come from the enclosing graph."""
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for subgraph in graphs:
            for inner in subgraph.node:
                yield from inner.input
                yield from _captured(inner)


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
