"""The LoRA slot pass: a graph with slots computes the exported graph at rank 0 and W x + B (A x) when fed factors.

A small graph holds each kind of site the exporter writes: a Linear as MatMul with the transposed weight followed by
its bias Add, a Linear as Gemm(transB=1) (2-D inputs: the time embedding), and a strided, padded convolution. The
reference is torch's own Linear / Conv2d with the LoRA update computed PEFT's way.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from diffrt.kernels.lora_slots import Slot, add_lora_slots, read_slots, write_slots

RNG = np.random.default_rng(0)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


LINEAR_W, LINEAR_B = rand(6, 8), rand(6)  # torch layout (out, in)
GEMM_W, GEMM_B = rand(5, 6), rand(5)
CONV_W, CONV_B = rand(4, 3, 3, 3), rand(4)


def model() -> tuple[onnx.ModelProto, dict]:
    nodes = [
        helper.make_node("MatMul", ["x", "linear_wt"], ["mm"]),
        helper.make_node("Add", ["mm", "linear_b"], ["linear_out"]),
        helper.make_node("Gemm", ["linear_out", "gemm_w", "gemm_b"], ["gemm_out"], transB=1),
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv_out"], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(LINEAR_W.T), "linear_wt"),
        numpy_helper.from_array(LINEAR_B, "linear_b"),
        numpy_helper.from_array(GEMM_W, "gemm_w"),
        numpy_helper.from_array(GEMM_B, "gemm_b"),
        numpy_helper.from_array(CONV_W, "conv_w"),
        numpy_helper.from_array(CONV_B, "conv_b"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8]),
            helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["n", 3, 9, 9]),
        ],
        [
            helper.make_tensor_value_info("gemm_out", onnx.TensorProto.FLOAT, ["n", 5]),
            helper.make_tensor_value_info("conv_out", onnx.TensorProto.FLOAT, ["n", 4, 5, 5]),
        ],
        inits,
    )
    weights = {
        "lin.weight": [("linear_wt", True)],
        "gemm.weight": [("gemm_w", False)],
        "conv.weight": [("conv_w", False)],
    }
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def torch_reference(x, image, factors: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """torch Linear -> Linear and Conv2d, each plus ``up(down(input))`` where ``factors`` has the module."""
    factors = factors or {}
    x, image = torch.from_numpy(x), torch.from_numpy(image)

    def linear(inp, w, b, name):
        out = torch.nn.functional.linear(inp, torch.from_numpy(w), torch.from_numpy(b))
        if name in factors:
            down, up = (torch.from_numpy(f) for f in factors[name])
            out = out + torch.nn.functional.linear(torch.nn.functional.linear(inp, down), up)
        return out

    hidden = linear(x, LINEAR_W, LINEAR_B, "lin")
    gemm = linear(hidden, GEMM_W, GEMM_B, "gemm")
    conv = torch.nn.functional.conv2d(image, torch.from_numpy(CONV_W), torch.from_numpy(CONV_B), stride=2, padding=1)
    if "conv" in factors:
        down, up = (torch.from_numpy(f) for f in factors["conv"])
        conv = conv + torch.nn.functional.conv2d(torch.nn.functional.conv2d(image, down, stride=2, padding=1), up)
    return gemm.numpy(), conv.numpy()


def feeds_for(slots: list[Slot], factors: dict) -> dict[str, np.ndarray]:
    feeds = {}
    for slot in slots:
        name = slot.module
        if name not in factors:
            continue
        down, up = factors[name]
        if slot.kind == "linear":  # the slot takes the transposes of the file's (rank, in) and (out, rank)
            feeds[slot.down], feeds[slot.up] = np.ascontiguousarray(down.T), np.ascontiguousarray(up.T)
        else:
            feeds[slot.down], feeds[slot.up] = down, up
    return feeds


def test_slots_compute_the_graph_at_rank_0_and_add_the_adapter_when_fed(tmp_path):
    proto, weights = model()
    slotted, slots = add_lora_slots(proto, weights)
    onnx.checker.check_model(slotted)
    assert {(s.parameter, s.kind, s.in_features, s.out_features, s.kernel) for s in slots} == {
        ("lin.weight", "linear", 8, 6, (1, 1)),
        ("gemm.weight", "linear", 6, 5, (1, 1)),
        ("conv.weight", "conv", 3, 4, (3, 3)),
    }
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(slotted.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"x", "image"}  # the slots are optional
    x, image = rand(2, 8), rand(2, 3, 9, 9)
    base = session.run(None, {"x": x, "image": image})
    for got, want in zip(base, torch_reference(x, image, None)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    factors = {
        "lin": (rand(3, 8), rand(6, 3)),
        "gemm": (rand(2, 6), rand(5, 2)),
        "conv": (rand(2, 3, 3, 3), rand(4, 2, 1, 1)),
    }
    fed = session.run(None, {"x": x, "image": image, **feeds_for(slots, factors)})
    for got, want in zip(fed, torch_reference(x, image, factors)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert np.abs(got - base[0 if got.ndim == 2 else 1]).max() > 0.1
    write_slots(tmp_path, slots, 32)
    assert read_slots(tmp_path) == (slots, 32)


def test_the_slot_add_follows_the_bias_so_matmul_and_bias_stay_together():
    proto, weights = model()
    slotted, _ = add_lora_slots(proto, weights)
    producer = {out: node for node in slotted.graph.node for out in node.output}
    bias_add = next(node for node in slotted.graph.node if node.op_type == "Add" and "linear_b" in node.input)
    assert producer[bias_add.input[0]].op_type == "MatMul" and producer[bias_add.input[0]].input[1] == "linear_wt"
    readers = [node for node in slotted.graph.node if bias_add.output[0] in node.input]
    assert [node.name for node in readers] == ["lin/lora_add"]
