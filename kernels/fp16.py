"""Float16 conversion of an exported float32 graph, for ONNX Runtime's CUDA execution provider.

Half precision halves the weights' memory and runs the convolutions and matrix products on the GPU's tensor cores,
but float16 has an 11-bit mantissa and overflows past 65504, so a graph converted wholesale gives NaN or black
images. :func:`convert_to_fp16` therefore splits the nodes of the graph into two regions:

* the **float32 region**: the op types of ``keep_ops`` (:data:`KEEP_FP32_OPS` by default: softmax, the
  normalisations, transcendentals, accumulating reductions; the reason for each is beside it), ops with no float16
  form in the ONNX spec (``Range``), nodes of domains other than ONNX's and ``com.microsoft``, and the **timestep
  path**: every node reachable forward from the graph inputs named in ``keep_from_inputs`` up to (not including)
  the first MatMul, Gemm, Conv or ``com.microsoft`` node on each path. That is where the UNet computes its
  sinusoidal embedding ``sin(t * f)``, ``cos(t * f)`` for ``t`` up to 999: float16 spaces numbers near 1000 by 0.5,
  so the phases would be noise (diffusers computes it in float32 in its float16 pipelines too). SDXL's ``time_ids``
  (image sizes up to 1024 and more, crop corners, aesthetic scores) go through the same sinusoidal features, so
  their path is kept by default too;
* the **float16 region**: everything else, ``com.microsoft.MultiHeadAttention`` (which
  :mod:`diffrt.kernels.attention` writes, and which has float16 CUDA kernels) included.

Float32 data of the float16 region becomes float16: initializers, ``Constant`` and ``ConstantOfShape`` values
(values beyond float16's range are clamped to +-65504, the -3.4e38 of attention masks for one; nonzero values that
would round to 0 become +-2**-24), ``Cast(to=FLOAT)`` and the output type of random, window and ``EyeLike`` nodes.
Where a tensor crosses from one region to the other a ``Cast`` is inserted, one per tensor and target precision
however many nodes read it there. Identity and ``Cast(to=FLOAT)`` nodes, which compute nothing, take the precision
their readers want, so the graph's own casts absorb the crossings they sit on (a Softmax's Cast back to float32
becomes its Cast to float16). Inputs that the ONNX spec (or ONNX Runtime's contrib ops) requires to be float32 stay
so: Resize's ``roi`` and ``scales``, NonMaxSuppression's, quantisation scales, ``com.microsoft.GroupNorm``'s gamma
and beta. Inputs that only read a shape or convert the type (``Shape``, ``Size``, ``Cast``) take either precision
as it comes. Integer and bool tensors are never touched. Constants are written in the precision their readers need
(a constant read in both regions gets one copy of each), so an initializer read only by float32 nodes (the scale
and bias of ``InstanceNormalization``) stays float32 without a Cast, and converted initializers keep their names.

The graph's inputs and outputs keep their float32 types and names, so callers feed and read float32 as before: a
Cast follows each float input that float16 nodes read, and each float output computed in float16 is written under
an internal name and cast back to float32 under its public one. ``value_info`` is updated to the new types.

The pass is linear in the graph: one type inference over a weight-free skeleton of the graph, one backward walk to
decide what each tensor's readers need, one forward walk writing the result; each weight is converted once with
NumPy. The input model is not modified. A graph loaded with ``load_external_data=False`` converts too, but weights
whose data is not loaded cannot be converted: they stay float32 behind a Cast (ONNX Runtime's constant folding
turns such Casts into float16 initializers when it loads the graph). Graphs with control flow (If, Loop, Scan)
are not supported. Needs ``onnx`` and NumPy, not torch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

logger = logging.getLogger("diffrt.kernels")

# Bumped whenever the pass writes a different graph for the same input: the runtime's graph cache keys include it.
PASS_VERSION = "2"  # 2: SDXL's time_ids path stays float32 by default
MS_DOMAIN = "com.microsoft"
FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
FP16_MAX = 65504.0  # the largest finite float16
FP16_TINY = 2.0**-24  # the smallest positive (subnormal) float16

KEEP_FP32_OPS: frozenset[str] = frozenset(
    {
        # exp() of the attention scores, summed over the whole row (4096 keys at 512x512): the sum and exp() of
        # unscaled logits overflow float16, and the small probabilities lose their precision.
        "Softmax",
        "LogSoftmax",
        # Mean and variance over many elements: the exported GroupNorm is InstanceNormalization over
        # (B, 32, C/32*H*W), e.g. 40960 values per group in SD1.5's first blocks. Sums of squares overflow, and
        # eps (1e-5, 1e-6) is at or below float16's smallest normal number (6.1e-5).
        "InstanceNormalization",
        "GroupNormalization",
        "LpNormalization",
        # Periodic functions of large arguments: the timestep embedding's sin(999 * f) needs the phase exactly;
        # float16 rounds 999.3 to 999.5.
        "Sin",
        "Cos",
        # exp() overflows float16 past 11.09; log() of what underflowed to 0 is -inf.
        "Exp",
        "Log",
        # The steps of hand-written normalisations (RMSNorm, LayerNorm as primitives): x ** 2 overflows past
        # |x| = 256, var + eps underflows, 1 / x overflows for x below 1.5e-5.
        "Pow",
        "Sqrt",
        "Reciprocal",
        # Positions and running sums: float16 counts exactly only up to 2048, and the ONNX spec gives Range no
        # float16 form at all.
        "Range",
        "CumSum",
        # Reductions that accumulate (the means and variances of hand-written normalisations): sums over
        # thousands of activations overflow or drown small terms. ReduceMax/ReduceMin do not accumulate.
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
    }
)

# Graph inputs whose forward path, up to the first projection, stays float32: the UNet's timestep and SDXL's
# time ids, both turned into sin/cos features of numbers too large for float16's spacing.
DEFAULT_KEEP_FROM_INPUTS = ("timestep", "time_ids")

__all__ = ["DEFAULT_KEEP_FROM_INPUTS", "FP16_MAX", "Fp16Report", "KEEP_FP32_OPS", "PASS_VERSION", "convert_to_fp16"]

_STANDARD = ("", "ai.onnx")
# Where the timestep path ends: the first projection of the embedding (its input is then in a sane range).
_TIMESTEP_END = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
# Inputs that read only a shape or convert the type: either precision serves, no Cast is needed.
_EITHER_INPUTS = {"Shape": (0,), "Size": (0,), "Cast": (0,), "CastLike": (0,)}
# Float32 inputs beyond those the ONNX schemas fix to float32 (found from the schemas): Resize's roi (a float of
# its own type, which ONNX Runtime's kernels read as float32; opset 10's Resize has its scales there), Upsample's
# scales.
_FLOAT_INPUTS = {("", "Resize"): (1, 2), ("", "Upsample"): (1,)}
# ONNX Runtime's contrib GroupNorm and SkipGroupNorm take gamma and beta as float32 whatever their input's type.
_MS_FLOAT_INPUTS = {"GroupNorm": (1, 2), "SkipGroupNorm": (1, 2)}
# Nodes whose precision changes no value: they take the precision their readers want, sparing a Cast.
_FOLLOWERS = frozenset({"Identity", "Cast"})
# The attribute that gives the element type of an op's output (rewritten from float32 to float16 in the float16
# region), and the ops whose output is float32 when it is absent. (Not stash_type: LayerNormalization and the like
# accumulate in float32 whatever their input.)
_TYPE_ATTRIBUTE = {
    "Cast": "to",
    "EyeLike": "dtype",
    "Bernoulli": "dtype",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "MelWeightMatrix": "output_datatype",
    "HannWindow": "output_datatype",
    "HammingWindow": "output_datatype",
    "BlackmanWindow": "output_datatype",
}
_FLOAT_BY_DEFAULT = frozenset(
    {"RandomNormal", "RandomUniform", "MelWeightMatrix", "HannWindow", "HammingWindow", "BlackmanWindow"}
)


@dataclass(frozen=True)
class Fp16Report:
    """What :func:`convert_to_fp16` did.

    ``nodes_fp16`` and ``nodes_fp32`` count the nodes of the result (the Casts it added aside) that compute on
    float data in that precision; nodes that touch no float data, or only read shapes, count in neither.
    ``casts_added`` counts the Casts inserted between the regions and at the graph's inputs and outputs,
    ``initializers_converted`` the initializers written as float16, ``values_clamped`` the values (of initializers,
    Constant and ConstantOfShape nodes) moved into float16's range: beyond +-65504 to +-65504, nonzero ones that
    would round to 0 to +-2**-24. Infinities and NaN are left as they are."""

    nodes_fp16: int
    nodes_fp32: int
    casts_added: int
    initializers_converted: int
    values_clamped: int


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_ops: Iterable[str] = KEEP_FP32_OPS,
    keep_from_inputs: Iterable[str] = DEFAULT_KEEP_FROM_INPUTS,
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert ``model``'s main graph to float16 except the parts that must stay float32 (see the module doc).

    ``keep_ops`` are the op types computed in float32: names of ONNX ops, or ``"domain.Op"`` for other domains
    (``"com.microsoft.MultiHeadAttention"``). ``keep_from_inputs`` names the graph inputs whose forward path stays
    float32 up to the first MatMul/Gemm/Conv/``com.microsoft`` node; names the graph lacks are ignored.

    Returns the converted copy (``model`` itself is not modified) and a :class:`Fp16Report`. Graph inputs and
    outputs keep their names and float32 types. Raises ValueError for graphs with control flow (subgraphs).
    """
    keep = _names(keep_ops, "keep_ops")
    starts = _names(keep_from_inputs, "keep_from_inputs")
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"{node.op_type} node {node.name!r} holds a subgraph; control flow is not supported")
    plan = _Plan(model, keep, starts)
    converted, report = _Writer(model, plan).write()
    logger.debug("float16 conversion: %s", report)
    return converted, report


def _names(values: Iterable[str], argument: str) -> frozenset[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{argument} takes a collection of names, not the single string {values!r}")
    return frozenset(values)


# ----- what each node reads and writes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Signature:
    """The precision rules of one op type: whether it has a float16 form at all, which inputs stay float32 and
    which outputs are float32 whatever the node computes in, which inputs take either precision."""

    fp16: bool = True
    float_inputs: frozenset[int] = frozenset()
    float_outputs: frozenset[int] = frozenset()
    either_inputs: frozenset[int] = frozenset()
    variadic_from: int | None = None  # the position of a variadic last input: later positions are the same one

    def _formal(self, position: int) -> int:
        return min(position, self.variadic_from) if self.variadic_from is not None else position

    def takes_either(self, position: int) -> bool:
        return self._formal(position) in self.either_inputs

    def needs_float(self, position: int) -> bool:
        return self._formal(position) in self.float_inputs


_OPAQUE = _Signature(fp16=False)  # nodes of unknown ops: left as they are, in float32


def _signature(domain: str, op_type: str, opset: int) -> _Signature:
    """The rules for an op: from the ONNX schema for ONNX ops (a float32-only input or output there is kept
    float32; an op whose shared type excludes float16, like Range, stays float32 as a whole), from the tables
    above for ``com.microsoft`` ops."""
    if domain == MS_DOMAIN:
        return _Signature(float_inputs=frozenset(_MS_FLOAT_INPUTS.get(op_type, ())))
    if domain not in _STANDARD:
        return _OPAQUE
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return _OPAQUE
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def float32_only(parameter: onnx.defs.OpSchema.FormalParameter) -> bool:
        types = allowed.get(parameter.type_str, {parameter.type_str})
        return "tensor(float)" in types and "tensor(float16)" not in types

    input_types = {p.type_str for p in schema.inputs}
    fp16, float_outputs = True, set()
    for position, parameter in enumerate(schema.outputs):
        if float32_only(parameter):
            if parameter.type_str in input_types:
                fp16 = False  # the node's whole computation (Range, Celu) has no float16 form
            else:
                float_outputs.add(position)  # e.g. LayerNormalization's Mean and InvStdDev
    float_inputs = {position for position, parameter in enumerate(schema.inputs) if float32_only(parameter)}
    float_inputs.update(_FLOAT_INPUTS.get(("", op_type), ()))
    variadic = schema.inputs and schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    return _Signature(
        fp16=fp16,
        float_inputs=frozenset(float_inputs),
        float_outputs=frozenset(float_outputs),
        either_inputs=frozenset(_EITHER_INPUTS.get(op_type, ())),
        variadic_from=len(schema.inputs) - 1 if variadic else None,
    )


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor ONNX type inference can tell, from a skeleton of the graph that holds no
    weights (initializers are declared as inputs). Nodes of other domains, which ONNX cannot infer, stand in the
    skeleton as a Reshape of their first input to an unknown shape: their first output gets their first input's
    element type (right for MultiHeadAttention and the other contrib ops that compute in their input's type), and
    inference carries on past them."""
    graph = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    inner = skeleton.graph
    inner.input.extend(graph.input)
    inner.output.extend(graph.output)
    inner.value_info.extend(graph.value_info)
    declared = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if tensor.name not in declared:
            inner.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
            declared.add(tensor.name)
    for sparse in graph.sparse_initializer:
        if sparse.values.name not in declared:
            inner.input.append(helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, None))
    unknown_shape = "diffrt.fp16.unknown_shape"
    stand_ins = False
    for node in graph.node:
        if node.domain in _STANDARD:
            inner.node.append(node)
        elif node.input and node.input[0] and node.output and node.output[0]:
            inner.node.append(helper.make_node("Reshape", [node.input[0], unknown_shape], [node.output[0]]))
            stand_ins = True
    if stand_ins:
        inner.input.append(helper.make_tensor_value_info(unknown_shape, onnx.TensorProto.INT64, [None]))
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False).graph
    types: dict[str, int] = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def _attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _is_flexible(node: onnx.NodeProto) -> bool:
    """Constant and ConstantOfShape nodes: written in whatever precision their readers want (a copy per precision),
    so they never need a Cast."""
    if node.domain not in _STANDARD or len(node.output) != 1:
        return False
    if node.op_type == "ConstantOfShape":
        value = _attribute(node, "value")
        return value is None or value.data_type == FLOAT
    if node.op_type == "Constant" and len(node.attribute) == 1:
        attribute = node.attribute[0]
        if attribute.name == "value":
            return attribute.t.data_type == FLOAT and attribute.t.data_location != onnx.TensorProto.EXTERNAL
        return attribute.name in ("value_float", "value_floats")
    return False


# ----- deciding --------------------------------------------------------------------------------------------------
class _Plan:
    """The region of every node and, for every float32 tensor, the precisions its readers need."""

    def __init__(self, model: onnx.ModelProto, keep: frozenset[str], starts: frozenset[str]):
        graph = model.graph
        self.nodes = list(graph.node)
        opset = next((o.version for o in model.opset_import if o.domain in _STANDARD), 1)
        self.types = _elem_types(model)
        self.inputs = {value.name for value in graph.input}
        self.outputs = {value.name for value in graph.output}
        signatures: dict[tuple[str, str], _Signature] = {}
        self.signature: list[_Signature] = []
        for node in self.nodes:
            key = (node.domain if node.domain not in _STANDARD else "", node.op_type)
            if key not in signatures:
                signatures[key] = _signature(key[0], node.op_type, opset)
            self.signature.append(signatures[key])
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for position, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers[name].append(position)
        self.flexible = [_is_flexible(node) for node in self.nodes]
        timestep = self._timestep_path(starts)
        self.region = [self._default_region(i, keep, timestep) for i in range(len(self.nodes))]
        self.demand: dict[str, set[int]] = defaultdict(set)
        for name in self.outputs:
            if self.is_float(name):
                self.demand[name].add(FLOAT)
        # Backwards, so that every reader of a node's outputs has spoken before the node is decided.
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if self._follows(node, keep):
                wanted = set().union(*(self.demand.get(name, ()) for name in node.output if name))
                if len(wanted) == 1:
                    self.region[i] = wanted.pop()
            for position, name in enumerate(node.input):
                if name and self.is_float(name):
                    precision = self.wanted(i, position)
                    if precision is not None:
                        self.demand[name].add(precision)

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == FLOAT

    def _timestep_path(self, starts: frozenset[str]) -> set[int]:
        """Nodes reachable from the inputs ``starts`` through the data they carry (not through shape reads), up to
        the first MatMul/Gemm/Conv/ConvTranspose or ``com.microsoft`` node of each path."""
        found: set[int] = set()
        stack = [name for name in starts if name in self.inputs]
        seen = set(stack)
        while stack:
            for i in self.consumers.get(stack.pop(), ()):
                node = self.nodes[i]
                if i in found or node.op_type in ("Shape", "Size") or node.domain == MS_DOMAIN:
                    continue
                if node.domain in _STANDARD and node.op_type in _TIMESTEP_END:
                    continue
                found.add(i)
                for name in node.output:
                    if name and name not in seen:
                        seen.add(name)
                        stack.append(name)
        return found

    def _default_region(self, i: int, keep: frozenset[str], timestep: set[int]) -> int:
        node = self.nodes[i]
        op = node.op_type if node.domain in _STANDARD else f"{node.domain}.{node.op_type}"
        if op in keep or i in timestep or not self.signature[i].fp16:
            return FLOAT
        if op == "Constant":
            return FLOAT  # one that is not rewritten (a sparse value): it keeps writing its own type
        return FLOAT16

    def _follows(self, node: onnx.NodeProto, keep: frozenset[str]) -> bool:
        """Identity and Cast(to=FLOAT) compute nothing: in the precision their readers want they save a Cast."""
        if node.domain not in _STANDARD or node.op_type not in _FOLLOWERS or node.op_type in keep:
            return False
        return node.op_type == "Identity" or _attribute(node, "to") == FLOAT

    def wanted(self, i: int, position: int) -> int | None:
        """The precision node ``i`` reads its float input ``position`` in; None where either serves."""
        signature = self.signature[i]
        if signature.takes_either(position):
            return None
        if self.region[i] == FLOAT or signature.needs_float(position):
            return FLOAT
        return FLOAT16

    def produced(self, i: int, position: int) -> int:
        """The precision node ``i`` writes its float output ``position`` in."""
        if self.region[i] == FLOAT or position in self.signature[i].float_outputs:
            return FLOAT
        return FLOAT16


# ----- writing ---------------------------------------------------------------------------------------------------
def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Copy the set fields of one protobuf message into another, but ``skip`` (works across protobuf versions)."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        destination = getattr(target, field.name)
        if isinstance(value, (bool, int, float, str, bytes)):
            setattr(target, field.name, value)
        elif hasattr(destination, "extend"):
            destination.extend(value)
        else:
            destination.CopyFrom(value)


def _to_fp16(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` as float16 and how many had to be moved into its range (see :class:`Fp16Report`)."""
    values = np.asarray(values, dtype=np.float32)
    moved = 0
    if values.size:
        low, high = values.min(), values.max()
        if not (-FP16_MAX <= low and high <= FP16_MAX):  # also where NaN is present
            beyond = np.isfinite(values) & (np.abs(values) > FP16_MAX)
            moved += int(np.count_nonzero(beyond))
            if moved:
                values = np.where(beyond, np.copysign(np.float32(FP16_MAX), values), values)
    half = values.astype(np.float16)
    # Counted on the bits without the sign (float16 comparisons are slow in NumPy): +-0 only where values had 0.
    if np.count_nonzero(half.view(np.uint16) & np.uint16(0x7FFF)) != np.count_nonzero(values):
        lost = (half == 0) & (values != 0)
        moved += int(np.count_nonzero(lost))
        half[lost] = np.copysign(np.float16(FP16_TINY), values[lost])
    return half, moved


class _Writer:
    """Writes the converted model from a :class:`_Plan`: every float32 tensor gets a version per precision its
    readers need (the producer's own, plus one Cast, a converted or second constant), and readers are rewired to
    the version they need."""

    def __init__(self, model: onnx.ModelProto, plan: _Plan):
        self.model = model
        self.plan = plan
        graph = model.graph
        self.taken = {value.name for value in (*graph.input, *graph.output, *graph.value_info)}
        self.taken.update(tensor.name for tensor in graph.initializer)
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)
            self.taken.add(node.name)
        self.versions: dict[str, dict[int, str]] = {}  # float32 tensor -> {precision: the name holding it}
        self.casts = self.converted = self.clamped = self.fp16_nodes = self.fp32_nodes = 0

    def write(self) -> tuple[onnx.ModelProto, Fp16Report]:
        model, plan = self.model, self.plan
        graph = model.graph
        result = onnx.ModelProto()
        _copy_fields(model, result, skip=("graph",))
        out = result.graph
        _copy_fields(graph, out, skip=("node", "initializer", "value_info"))
        head: list[onnx.NodeProto] = []  # Casts of graph inputs and of weights whose data is not loaded
        declared = {value.name for value in graph.input}
        for value in graph.input:
            if plan.is_float(value.name):
                head += self._fixed(value.name, FLOAT)
        for tensor in graph.initializer:
            if tensor.name in declared or tensor.data_type != FLOAT:
                out.initializer.append(tensor)  # a graph input's default, or not float32 data: as it is
            elif tensor.data_location == onnx.TensorProto.EXTERNAL:
                out.initializer.append(tensor)
                head += self._fixed(tensor.name, FLOAT)
            else:
                out.initializer.extend(self._initializer(tensor))
        for sparse in graph.sparse_initializer:
            if plan.is_float(sparse.values.name):
                head += self._fixed(sparse.values.name, FLOAT)
        out.node.extend(head)
        for i, node in enumerate(plan.nodes):
            out.node.extend(self._constant(node) if plan.flexible[i] else self._node(i, node))
        kinds = {name: precision for versions in self.versions.values() for precision, name in versions.items()}
        for value in graph.value_info:
            copy = out.value_info.add()
            copy.CopyFrom(value)
            if value.name in kinds and copy.type.HasField("tensor_type"):
                copy.type.tensor_type.elem_type = kinds[value.name]
        report = Fp16Report(
            nodes_fp16=self.fp16_nodes,
            nodes_fp32=self.fp32_nodes,
            casts_added=self.casts,
            initializers_converted=self.converted,
            values_clamped=self.clamped,
        )
        return result, report

    # -- names and Casts
    def _unique(self, base: str) -> str:
        name, suffix = base, 0
        while name in self.taken:
            suffix += 1
            name = f"{base}_{suffix}"
        self.taken.add(name)
        return name

    def _cast(self, source: str, target: str, to: int) -> onnx.NodeProto:
        self.casts += 1
        label = "Fp16" if to == FLOAT16 else "Fp32"
        return helper.make_node("Cast", [source], [target], name=self._unique(f"{target}/CastTo{label}"), to=to)

    def _suffixed(self, name: str, precision: int) -> str:
        return self._unique(f"{name}_{'fp16' if precision == FLOAT16 else 'fp32'}")

    def _fixed(self, name: str, precision: int) -> list[onnx.NodeProto]:
        """Versions of a tensor already written in ``precision`` under ``name``: a Cast for the other precision
        where readers need it."""
        self.versions[name] = {precision: name}
        casts = []
        for other in self.plan.demand.get(name, set()) - {precision}:
            target = self._suffixed(name, other)
            self.versions[name][other] = target
            casts.append(self._cast(name, target, other))
        return casts

    def _constant_names(self, name: str) -> dict[int, str]:
        """The names of a constant's versions: the original name goes to float16 where it is needed (converted
        weights keep their names), to float32 where the constant is a graph output (the public name is float32)."""
        demand = self.plan.demand.get(name, set())
        if FLOAT16 not in demand:
            return {FLOAT: name}
        if name in self.plan.outputs:
            return {FLOAT: name, FLOAT16: self._suffixed(name, FLOAT16)}
        names = {FLOAT16: name}
        if FLOAT in demand:
            names[FLOAT] = self._suffixed(name, FLOAT)
        return names

    # -- constants
    def _initializer(self, tensor: onnx.TensorProto) -> list[onnx.TensorProto]:
        names = self.versions[tensor.name] = self._constant_names(tensor.name)
        written = []
        if FLOAT16 in names:
            half, moved = _to_fp16(numpy_helper.to_array(tensor))
            self.clamped += moved
            self.converted += 1
            written.append(numpy_helper.from_array(half, names[FLOAT16]))
        if FLOAT in names:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = names[FLOAT]
            written.append(copy)
        return written

    def _constant(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """A Constant or ConstantOfShape node, once per precision its readers need."""
        output = node.output[0]
        names = self.versions[output] = self._constant_names(output)
        written = []
        for precision, name in sorted(names.items()):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.output[0] = name
            if name != output and node.name:
                copy.name = self._unique(f"{node.name}_{'fp16' if precision == FLOAT16 else 'fp32'}")
            if precision == FLOAT16:
                self._constant_to_fp16(copy)
                self.fp16_nodes += 1
            else:
                self.fp32_nodes += 1
            written.append(copy)
        return written

    def _constant_to_fp16(self, node: onnx.NodeProto) -> None:
        if node.op_type == "ConstantOfShape":
            value = _attribute(node, "value")
            values = np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value)
        else:
            attribute = node.attribute[0]
            if attribute.name == "value":
                values = numpy_helper.to_array(attribute.t)
            elif attribute.name == "value_float":
                values = np.array(attribute.f, np.float32)
            else:
                values = np.array(attribute.floats, np.float32)
        half, moved = _to_fp16(values)
        self.clamped += moved
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(half)))

    # -- other nodes
    def _node(self, i: int, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        plan = self.plan
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        touches_float = False
        for position, name in enumerate(node.input):
            versions = self.versions.get(name) if name else None
            if versions is None:
                continue
            precision = plan.wanted(i, position)
            if precision is None:  # either serves: the producer's own (the original name where it exists)
                copy.input[position] = name if name in versions.values() else next(iter(versions.values()))
            else:
                copy.input[position] = versions[precision]
                touches_float = True
        after = []
        for position, name in enumerate(node.output):
            if not name or not plan.is_float(name):
                continue
            touches_float = True
            precision = plan.produced(i, position)
            if precision == FLOAT16 and name in plan.outputs:
                # A float16 result under a public name: computed under an internal one, cast back to float32.
                internal = self._suffixed(name, FLOAT16)
                copy.output[position] = internal
                self.versions[name] = {FLOAT16: internal, FLOAT: name}
                after.append(self._cast(internal, name, FLOAT))
            else:
                after += self._fixed(name, precision)
        type_attribute = _TYPE_ATTRIBUTE.get(node.op_type) if node.domain in _STANDARD else None
        if type_attribute and plan.region[i] == FLOAT16:
            value = _attribute(node, type_attribute)
            if value == FLOAT:
                next(a for a in copy.attribute if a.name == type_attribute).i = FLOAT16
            elif value is None and node.op_type in _FLOAT_BY_DEFAULT:
                copy.attribute.append(helper.make_attribute(type_attribute, FLOAT16))
        if touches_float:
            if plan.region[i] == FLOAT16:
                self.fp16_nodes += 1
            else:
                self.fp32_nodes += 1
        return [copy, *after]
