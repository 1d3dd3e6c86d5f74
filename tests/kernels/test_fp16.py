"""Float16 conversion (diffrt.kernels.fp16): what stays float32, the Casts between the regions, the graph's interface,
and the numbers ONNX Runtime's CPU provider computes from the converted graphs."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from diffrt.kernels.attention import MS_DOMAIN, fuse_attention
from diffrt.kernels.fp16 import FP16_MAX, KEEP_FP32_OPS, PASS_VERSION, convert_to_fp16

FLOAT, FLOAT16, INT64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64
FP16_TINY = 2.0**-24
# Converted graphs agree with the float32 ones to this (float16 rounds to 2**-11 = 4.9e-4 relative): garbage would
# not, and a graph left float32 would agree exactly.
RTOL = 1e-2
# (kind, network) of the fixture packages converted here: SD1's four networks, the inpainting UNet (9 channels),
# the unconditional DDPM UNet, the depth estimator (a ViT with Pow, ConvTranspose, Resize).
NETWORKS = [
    ("sd1", "text_encoder"),
    ("sd1", "unet"),
    ("sd1", "vae_encoder"),
    ("sd1", "vae_decoder"),
    ("inpaint", "unet"),
    ("ddpm", "unet"),
    ("depth", "depth_estimator"),
]


# ----- helpers ---------------------------------------------------------------------------------------------------
def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(reference - other).max() / max(np.abs(reference).max(), 1e-30))


def package_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for a package graph: batch 2, 77 tokens, 16x16 where the size is free, timestep 981."""
    rng = np.random.default_rng(seed)
    sizes = {"batch": 2, "sequence": 77}
    feeds = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, 16) for d in tensor.shape.dim]
        if tensor.elem_type == INT64:
            feeds[value.name] = rng.integers(0, 49408, dims, dtype=np.int64)
        elif value.name == "timestep":
            feeds[value.name] = np.full(dims, 981.0, np.float32)
        else:
            feeds[value.name] = rng.standard_normal(dims, dtype=np.float32)
    return feeds


def inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of ``model`` by strict ONNX inference (which also checks the types agree)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    types.update((t.name, t.data_type) for t in inferred.initializer)
    return types


def interface(model: onnx.ModelProto) -> list:
    return [(v.name, v.type.SerializeToString()) for v in (*model.graph.input, *model.graph.output)]


def added_casts(original: onnx.ModelProto, converted: onnx.ModelProto) -> list[onnx.NodeProto]:
    names = {node.name for node in original.graph.node}
    return [node for node in converted.graph.node if node.op_type == "Cast" and node.name not in names]


def constants(model: onnx.ModelProto) -> set[str]:
    names = {tensor.name for tensor in model.graph.initializer}
    return names | {n.output[0] for n in model.graph.node if n.op_type in ("Constant", "ConstantOfShape")}


def forward_path(model: onnx.ModelProto, start: str) -> tuple[list, list]:
    """(the nodes reachable from input ``start`` through data, not shape reads, up to the first projection; those
    MatMul / Gemm / Conv projections)."""
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    path, stack, ends = [], [start], []
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.op_type in ("MatMul", "Gemm", "Conv"):
                ends.append(node)
            elif node.op_type != "Shape" and node not in path:
                path.append(node)
                stack.extend(node.output)
    return path, ends


def small_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "small", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def float_input(name: str, dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, dims)


@pytest.fixture(scope="module")
def convert(packages):
    """(kind, network) -> (original, converted, report), each package graph converted once."""
    cache = {}

    def get(kind: str, network: str):
        if (kind, network) not in cache:
            original = onnx.load(str(packages[kind] / network / "model.onnx"))
            cache[kind, network] = (original, *convert_to_fp16(original))
        return cache[kind, network]

    return get


# ----- the package graphs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, network", NETWORKS, ids=["-".join(n) for n in NETWORKS])
def test_each_network_converts_to_a_valid_graph_with_the_same_float32_interface(convert, kind, network):
    original, converted, report = convert(kind, network)
    onnx.checker.check_model(converted, full_check=True)
    assert interface(converted) == interface(original)
    assert report.nodes_fp16 > report.nodes_fp32 > 0
    assert report.casts_added == len(added_casts(original, converted))


# The tiny depth estimator's random head outputs about 1e-8, below float16's smallest number (6e-8): left out here.
@pytest.mark.parametrize("kind, network", NETWORKS[:-1], ids=["-".join(n) for n in NETWORKS[:-1]])
def test_each_network_computes_what_the_float32_graph_does_within_float16_precision(convert, kind, network):
    original, converted, _ = convert(kind, network)
    feeds = package_feeds(original)
    references = session(original).run(None, feeds)
    results = session(converted).run(None, feeds)
    for reference, result in zip(references, results):
        assert result.dtype == np.float32 and np.isfinite(result).all()
        assert 0 < relative_error(reference, result) <= RTOL


@pytest.mark.parametrize("network", ["text_encoder", "unet", "vae_decoder"])
def test_fragile_ops_read_float32_and_the_heavy_ops_float16(convert, network):
    original, converted, _ = convert("sd1", network)
    types = inferred_types(converted)
    producers = {name: node for node in converted.graph.node for name in node.output}
    seen = set()
    for node in converted.graph.node:
        floats = [types.get(name) for name in node.input if name and types.get(name) in (FLOAT, FLOAT16)]
        if node.op_type in ("Softmax", "InstanceNormalization", "Sin", "Cos"):
            assert floats and set(floats) == {FLOAT}, node.name
            seen.add(node.op_type)
        if node.op_type in ("MatMul", "Conv", "Gemm"):
            assert set(floats) == {FLOAT16}, node.name
            seen.add(node.op_type)
        if node.op_type == "InstanceNormalization":  # its scale and bias were float32 constants: no Cast needed
            assert all(producers.get(name, node).op_type != "Cast" for name in node.input[1:]), node.name
    expected = {
        "text_encoder": {"Softmax", "MatMul"},
        "unet": {"Softmax", "MatMul", "InstanceNormalization", "Sin", "Cos", "Conv", "Gemm"},
        "vae_decoder": {"Softmax", "MatMul", "InstanceNormalization", "Conv"},
    }
    assert seen == expected[network]


@pytest.mark.parametrize("network", ["unet", "vae_decoder"])
def test_casts_are_only_where_the_precision_changes(convert, network):
    """Around each InstanceNormalization, before each Softmax unless the graph casts its input already, after each
    float input but the timestep, before each output. None after a Softmax (its Cast to float32 turns into a Cast to
    float16), none between the timestep path and its Gemm (the Cast that ends the path writes float16 itself)."""
    original, converted, report = convert("sd1", network)
    producers = {name: node for node in original.graph.node for name in node.output}
    norms = sum(node.op_type == "InstanceNormalization" for node in original.graph.node)
    softmaxes = [node for node in original.graph.node if node.op_type == "Softmax"]
    uncast = sum(producers[node.input[0]].op_type != "Cast" for node in softmaxes)
    inputs = sum(value.name != "timestep" for value in original.graph.input)
    casts = added_casts(original, converted)
    assert len(casts) == report.casts_added == 2 * norms + uncast + inputs + len(original.graph.output)
    readers = {}
    for node in converted.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    outputs = {value.name for value in converted.graph.output}
    expected_readers = {FLOAT: {"InstanceNormalization", "Softmax"}, FLOAT16: {"Reshape", "Conv", "MatMul"}}
    for cast in casts:
        if cast.output[0] not in outputs:
            assert set(readers[cast.output[0]]) <= expected_readers[cast.attribute[0].i], cast.name


def test_weights_become_float16_under_their_names_and_no_constant_is_cast(convert):
    original, converted, report = convert("sd1", "unet")
    before = {t.name: t for t in original.graph.initializer}
    after = {t.name: t for t in converted.graph.initializer}
    assert set(before) == set(after)  # names kept (LoRA patching finds weights by name); nothing read twice here
    half = {name for name, t in after.items() if t.data_type == FLOAT16}
    assert report.initializers_converted == len(half) > 0
    types = inferred_types(converted)
    for node in converted.graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm"):
            weights = [name for name in node.input[1:] if name in after]
            assert set(weights) <= half, node.name
    for name in half:
        values = numpy_helper.to_array(after[name])
        assert values.dtype == np.float16
        np.testing.assert_allclose(values, numpy_helper.to_array(before[name]), rtol=2**-11, atol=FP16_TINY)
    # Initializers left float32 are read by float32 nodes only; a constant is never behind one of the added Casts.
    for name in set(after) - half:
        readers = [n for n in converted.graph.node if name in n.input]
        assert all(types.get(out) == FLOAT for reader in readers for out in reader.output if out), name
    assert not {cast.input[0] for cast in added_casts(original, converted)} & constants(converted)


def test_the_timestep_path_is_float32_up_to_the_first_projection(convert):
    original, converted, _ = convert("sd1", "unet")
    types = inferred_types(converted)
    path, ends = forward_path(converted, "timestep")
    assert {"Sin", "Cos", "Mul", "Concat"} <= {node.op_type for node in path}
    for node in path:
        assert all(types[name] in (FLOAT, INT64) for name in node.input if name), node.name
    assert [node.op_type for node in ends] == ["Gemm"] and types[ends[0].input[0]] == FLOAT16

    # Without the option only the listed ops stay float32: the product t * f before Sin and Cos is float16.
    loose, _ = convert_to_fp16(original, keep_from_inputs=())
    loose_types = inferred_types(loose)
    (sin,) = [node for node in loose.graph.node if node.op_type == "Sin"]
    cast = next(node for node in loose.graph.node if sin.input[0] in node.output)
    assert cast.op_type == "Cast" and loose_types[cast.input[0]] == FLOAT16 and loose_types[sin.input[0]] == FLOAT


def test_sdxl_time_ids_path_is_float32_and_the_unet_keeps_its_precision(sdxl_packages):
    """SDXL's time ids (sizes like 1024) become sin/cos features like the timestep: their path stays float32 up to
    the added-embedding projection, and the half graph computes what the float32 graph does."""
    original = onnx.load(str(sdxl_packages["sdxl"] / "unet" / "model.onnx"))
    converted, _ = convert_to_fp16(original)
    types = inferred_types(converted)
    path, ends = forward_path(converted, "time_ids")
    assert {"Sin", "Cos", "Concat"} <= {node.op_type for node in path}
    for node in path:
        assert all(types[name] in (FLOAT, INT64) for name in node.input if name), node.name
    assert ends and all(types[end.input[0]] == FLOAT16 for end in ends)

    feeds = package_feeds(original)
    feeds["time_ids"] = np.tile(np.float32([1024, 1024, 0, 0, 1024, 1024]), (2, 1))
    reference = session(original).run(None, feeds)[0]
    assert relative_error(reference, session(converted).run(None, feeds)[0]) <= RTOL


def test_resize_reads_float32_scales_and_float16_data(convert):
    _, converted, _ = convert("sd1", "vae_decoder")
    types = inferred_types(converted)
    resizes = [node for node in converted.graph.node if node.op_type == "Resize"]
    assert resizes
    for node in resizes:
        assert types[node.input[0]] == FLOAT16 and types[node.input[2]] == FLOAT


def test_integer_and_bool_tensors_keep_their_types(convert):
    original, converted, _ = convert("sd1", "text_encoder")
    before, after = inferred_types(original), inferred_types(converted)
    others = {name: kind for name, kind in before.items() if kind != FLOAT}
    assert {INT64, TensorProto.BOOL} <= set(others.values())
    assert {name: after[name] for name in others} == others


def test_the_input_model_is_left_as_it_was(packages):
    model = onnx.load(str(packages["sd1"] / "text_encoder" / "model.onnx"))
    before = model.SerializeToString()
    converted, _ = convert_to_fp16(model)
    assert model.SerializeToString() == before and converted.SerializeToString() != before


def test_multi_head_attention_runs_in_float16(packages):
    fused, count = fuse_attention(onnx.load(str(packages["sd1"] / "unet" / "model.onnx")))
    assert count == 8
    converted, _ = convert_to_fp16(fused)
    onnx.checker.check_model(converted, full_check=True)
    types = inferred_types(converted)  # ONNX cannot infer the contrib op: its inputs are what its producers write
    attentions = [node for node in converted.graph.node if node.domain == MS_DOMAIN]
    assert len(attentions) == 8
    for node in attentions:
        assert [types[name] for name in node.input] == [FLOAT16] * 3, node.name
        readers = [n for n in converted.graph.node if node.output[0] in n.input]
        assert readers and all(reader.op_type != "Cast" for reader in readers), node.name
    feeds = package_feeds(fused)
    assert relative_error(session(fused).run(None, feeds)[0], session(converted).run(None, feeds)[0]) <= RTOL
    # Named with its domain in keep_ops, it is kept float32 like any other op.
    kept, _ = convert_to_fp16(fused, keep_ops=KEEP_FP32_OPS | {f"{MS_DOMAIN}.MultiHeadAttention"})
    kept_types = inferred_types(kept)
    for node in kept.graph.node:
        if node.domain == MS_DOMAIN:
            assert [kept_types[name] for name in node.input] == [FLOAT] * 3, node.name


def test_weights_whose_data_is_not_loaded_stay_float32_behind_one_cast_each(packages, tmp_path):
    model = onnx.load(str(packages["sd1"] / "vae_decoder" / "model.onnx"))
    feeds = package_feeds(model)
    reference = session(model).run(None, feeds)[0]
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    bare = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    converted, report = convert_to_fp16(bare)
    external = {t.name for t in converted.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert external == {t.name for t in bare.graph.initializer} and report.initializers_converted == 0
    casts = [cast.input[0] for cast in added_casts(bare, converted) if cast.input[0] in external]
    assert casts and len(casts) == len(set(casts))
    inferred_types(converted)
    onnx.save(converted, tmp_path / "converted.onnx")  # beside the data it points at
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    runner = onnxruntime.InferenceSession(str(tmp_path / "converted.onnx"), options, providers=["CPUExecutionProvider"])
    assert relative_error(reference, runner.run(None, feeds)[0]) <= RTOL


# ----- small graphs ----------------------------------------------------------------------------------------------
def test_out_of_range_values_are_clamped_and_counted():
    big = np.array([-3.4e38, 1e5, 0.5, 1e-30, -np.inf], np.float32)
    nodes = [
        helper.make_node("Add", ["x", "c"], ["y1"]),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32([1e6, -1e6, 2, 3, -4]))),
        helper.make_node("Mul", ["x", "k"], ["y2"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.int64([5]))),
        helper.make_node("ConstantOfShape", ["shape"], ["m"], value=numpy_helper.from_array(np.float32([-3.4e38]))),
        helper.make_node("Add", ["x", "m"], ["y3"]),
        helper.make_node("Constant", [], ["e"], value_floats=[-1e-9, 7e4]),
        helper.make_node("Concat", ["x", "e"], ["y4"], axis=0),
    ]
    outputs = [float_input(name, [5]) for name in ("y1", "y2", "y3")] + [float_input("y4", [7])]
    model = small_model(nodes, [float_input("x", [5])], outputs, [numpy_helper.from_array(big, "c")])
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    assert report.values_clamped == 3 + 2 + 1 + 2  # c: -3.4e38, 1e5, 1e-30 (not -inf); k: +-1e6; m; e: both
    (c,) = converted.graph.initializer
    written = [n for n in converted.graph.node if n.op_type in ("Constant", "ConstantOfShape")]
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in written}
    np.testing.assert_array_equal(numpy_helper.to_array(c), np.float16([-FP16_MAX, FP16_MAX, 0.5, FP16_TINY, -np.inf]))
    np.testing.assert_array_equal(values["k"], np.float16([FP16_MAX, -FP16_MAX, 2, 3, -4]))
    assert values["m"].dtype == np.float16 and values["m"].tolist() == [-FP16_MAX]
    np.testing.assert_array_equal(values["e"], np.float16([-FP16_TINY, FP16_MAX]))
    x = np.float32([1, 0.5, 3, 4, 5])
    y1, y2, y3, y4 = session(converted).run(None, {"x": x})
    # A mask added in float16 stays finite (ONNX Runtime's CPU provider may add in float32: no exact values).
    assert np.isfinite(y3).all() and np.allclose(y3, -FP16_MAX, rtol=1e-3)
    assert np.isfinite(y2).all() and y1[-1] == -np.inf and y4.dtype == np.float32


def crossing_model() -> onnx.ModelProto:
    """h = x @ w (float16) read by Softmax and Exp (float32) and by Mul (float16), and a graph output; the two
    float32 results read by float16 nodes; x read by three float16 nodes."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["a"], axis=-1),
        helper.make_node("Exp", ["h"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Mul", ["a", "h"], ["d"]),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Sum", ["c", "d", "b", "s", "r"], ["y"]),
    ]
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) / 4, "w")
    outputs = [float_input("y", [3, 4]), float_input("h", [3, 4])]
    model = small_model(nodes, [float_input("x", [3, 4])], outputs, [weight])
    model.graph.value_info.extend(float_input(name, [3, 4]) for name in ("a", "b", "c", "d", "s"))
    return model


def test_a_tensor_read_in_the_other_precision_gets_one_cast_per_precision():
    model = crossing_model()
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    assert interface(converted) == interface(model)
    casts = added_casts(model, converted)
    assert report.casts_added == len(casts)
    types = inferred_types(converted)
    # The original name of each tensor the converted nodes write (they are the original nodes, in order).
    written = [node for node in converted.graph.node if node not in casts]
    pairs = zip(written, model.graph.node)
    origin = {new: old for ours, theirs in pairs for new, old in zip(ours.output, theirs.output)}
    crossings = sorted((origin.get(cast.input[0], cast.input[0]), types[cast.output[0]]) for cast in casts)
    # x once to float16; h once to float32 (the public output h serves Softmax and Exp too); a and b once each to
    # float16 (b is read by Add and Sum, a by Add and Mul); y once back to float32.
    assert crossings == [("a", FLOAT16), ("b", FLOAT16), ("h", FLOAT), ("x", FLOAT16), ("y", FLOAT)]
    (matmul,) = [node for node in written if node.op_type == "MatMul"]
    assert types[matmul.output[0]] == FLOAT16 and types["h"] == FLOAT  # the public h is the float32 copy
    # value_info follows: a and b are computed in float32, c, d and s in float16 (full_check agreed with it).
    declared = {v.name: v.type.tensor_type.elem_type for v in converted.graph.value_info}
    assert declared == {"a": FLOAT, "b": FLOAT, "c": FLOAT16, "d": FLOAT16, "s": FLOAT16}
    assert report.nodes_fp32 == 2 and report.nodes_fp16 == 6
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    for reference, result in zip(session(model).run(None, {"x": x}), session(converted).run(None, {"x": x})):
        assert 0 < relative_error(reference, result) <= RTOL


def test_a_constant_read_in_both_precisions_is_written_in_both_without_a_cast():
    nodes = [
        helper.make_node("Mul", ["x", "g"], ["h"]),
        helper.make_node("InstanceNormalization", ["h", "g", "g"], ["y"]),
    ]
    ones = numpy_helper.from_array(np.float32([1.5, 2.5]), "g")
    model = small_model(nodes, [float_input("x", [1, 2, 2])], [float_input("y", [1, 2, 2])], [ones])
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    kinds = {t.name: t.data_type for t in converted.graph.initializer}
    assert kinds["g"] == FLOAT16 and sorted(kinds.values()) == [FLOAT, FLOAT16]  # the weight keeps its name
    assert report.initializers_converted == 1
    assert {cast.input[0] for cast in added_casts(model, converted)} == {"x", "h"}


def test_keep_ops_choose_what_stays_float32_but_ops_without_a_float16_form_always_do():
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["positions"]),
        helper.make_node("Softmax", ["positions"], ["p"], axis=-1),
        helper.make_node("Conv", ["image", "w"], ["features"]),
    ]
    inputs = [float_input(name, []) for name in ("start", "limit", "delta")] + [float_input("image", [1, 1, 3, 3])]
    outputs = [float_input("p", None), float_input("features", [1, 1, 3, 3])]
    model = small_model(nodes, inputs, outputs, [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    for keep, softmax, conv in ((KEEP_FP32_OPS, FLOAT, FLOAT16), ((), FLOAT16, FLOAT16), ({"Conv"}, FLOAT16, FLOAT)):
        converted, _ = convert_to_fp16(model, keep_ops=keep)
        types = inferred_types(converted)
        (range_, softmax_node, conv_node) = [n for n in converted.graph.node if n.op_type != "Cast"]
        assert [types[name] for name in range_.input] == [FLOAT] * 3  # the spec has no float16 Range
        assert types[softmax_node.input[0]] == softmax and types[conv_node.input[0]] == conv
        feeds = {name: np.array(value, np.float32) for name, value in (("start", 0), ("limit", 4), ("delta", 1))}
        feeds["image"] = np.ones((1, 1, 3, 3), np.float32)
        reference = session(model).run(None, feeds)
        for expected, result in zip(reference, session(converted).run(None, feeds)):
            assert relative_error(expected, result) <= RTOL


def test_resize_keeps_float32_roi_and_scales_that_it_shares_with_nothing_else():
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear")]
    roi = numpy_helper.from_array(np.float32([0, 0, 0, 0, 1, 1, 1, 1]), "roi")
    scales = numpy_helper.from_array(np.float32([1, 1, 2, 2]), "scales")
    model = small_model(nodes, [float_input("x", [1, 1, 2, 2])], [float_input("y", [1, 1, 4, 4])], [roi, scales])
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    assert {t.name: t.data_type for t in converted.graph.initializer} == {"roi": FLOAT, "scales": FLOAT}
    assert report.initializers_converted == 0
    (resize,) = [n for n in converted.graph.node if n.op_type == "Resize"]
    assert inferred_types(converted)[resize.input[0]] == FLOAT16


def test_an_embedding_in_float16_is_wrong_where_the_timestep_path_keeps_it_right():
    """sin(t * f), cos(t * f) for t = 981: float16 rounds t * f by up to 0.25, the kept path does not."""
    freqs = np.exp(-np.log(10000.0) * np.arange(8) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.int64([0]))),
        helper.make_node("Unsqueeze", ["timestep", "axes"], ["t"]),
        helper.make_node("Mul", ["t", "freqs"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["sin"]),
        helper.make_node("Cos", ["phase"], ["cos"]),
        helper.make_node("Concat", ["sin", "cos"], ["embedding"], axis=0),
        helper.make_node("Unsqueeze", ["embedding", "axes"], ["row"]),
        helper.make_node("MatMul", ["row", "eye"], ["y"]),
    ]
    weights = [numpy_helper.from_array(freqs, "freqs"), numpy_helper.from_array(np.eye(16, dtype=np.float32), "eye")]
    model = small_model(nodes, [float_input("timestep", [])], [float_input("y", [1, 16])], weights)
    feeds = {"timestep": np.array(981, np.float32)}
    reference = session(model).run(None, feeds)[0]
    kept, _ = convert_to_fp16(model)
    loose, _ = convert_to_fp16(model, keep_from_inputs=())
    assert relative_error(reference, session(kept).run(None, feeds)[0]) <= 1e-3
    assert relative_error(reference, session(loose).run(None, feeds)[0]) > 2e-2
    assert {t.name: t.data_type for t in kept.graph.initializer} == {"freqs": FLOAT, "eye": FLOAT16}


def test_ops_that_name_their_output_type_name_float16_in_the_float16_region():
    nodes = [
        helper.make_node("RandomNormal", [], ["noise"], shape=[2, 2], seed=1.0),  # float32 unless told otherwise
        helper.make_node("EyeLike", ["noise"], ["eye"], dtype=FLOAT),
        helper.make_node("Cast", ["count"], ["scale"], to=FLOAT),
        helper.make_node("Mul", ["eye", "scale"], ["scaled"]),
        helper.make_node("Add", ["noise", "scaled"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("count", INT64, [])]
    model = small_model(nodes, inputs, [float_input("y", [2, 2])])
    converted, report = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    types = inferred_types(converted)
    assert [types[name] for name in ("noise", "eye", "scale", "scaled")] == [FLOAT16] * 4 and types["y"] == FLOAT
    assert report.casts_added == 1 and report.nodes_fp16 == 5


# ----- the API ---------------------------------------------------------------------------------------------------
def test_the_default_keeps_the_fragile_op_types():
    required = {"Softmax", "InstanceNormalization", "GroupNormalization", "LpNormalization", "Sin", "Cos", "Exp"}
    required |= {"Log", "Pow", "Sqrt", "Reciprocal", "Range", "CumSum", "ReduceMean", "ReduceSum"}
    required |= {"ReduceSumSquare", "ReduceL2"}
    assert required <= KEEP_FP32_OPS and "LayerNormalization" not in KEEP_FP32_OPS
    assert isinstance(PASS_VERSION, str) and PASS_VERSION


def test_a_single_string_for_a_list_of_names_is_refused():
    model = crossing_model()
    with pytest.raises(TypeError, match="keep_ops takes a collection of names"):
        convert_to_fp16(model, keep_ops="Softmax")
    with pytest.raises(TypeError, match="keep_from_inputs takes a collection of names"):
        convert_to_fp16(model, keep_from_inputs="timestep")


def test_control_flow_is_refused():
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "branch", [], [float_input("z", [1])])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)
    inputs = [helper.make_tensor_value_info("flag", TensorProto.BOOL, []), float_input("x", [1])]
    with pytest.raises(ValueError, match="control flow is not supported"):
        convert_to_fp16(small_model([node], inputs, [float_input("y", [1])]))


def test_importing_the_pass_does_not_import_torch():
    code = "import sys, diffrt.kernels.fp16; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
