"""Attention fused into ONNX Runtime's MultiHeadAttention (diffrt.kernels.attention) and its use by the CPU engine."""

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from diffrt.kernels.attention import MS_DOMAIN, fuse_attention
from diffrt.runtime.engines import SessionSettings, graph_cache, load_engine
from diffrt.runtime.errors import ConfigError

KINDS = ("sd1", "sd2", "inpaint", "depth", "ddpm")
SIZES = ((16, 16), (24, 32))  # (height, width) of every spatial input: square and not
BATCHES = (1, 2)
RTOL = 1e-5


# ----- expected counts, from the configs -----------------------------------------------------------------------
def conditional_unet_attentions(config: dict) -> int:
    """Attention layers of a UNet2DConditionModel: two (self, cross) per transformer block. diffusers gives each
    CrossAttnDownBlock2D ``layers_per_block`` transformers, each CrossAttnUpBlock2D one more, the cross-attention
    mid block one; each transformer holds ``transformer_layers_per_block`` blocks."""
    layers, depth = config["layers_per_block"], config.get("transformer_layers_per_block", 1)
    assert isinstance(layers, int) and isinstance(depth, int), "the fixtures use one count for every block"
    down = sum(layers for kind in config["down_block_types"] if kind.startswith("CrossAttn"))
    up = sum(layers + 1 for kind in config["up_block_types"] if kind.startswith("CrossAttn"))
    mid = 1 if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn" else 0
    return 2 * depth * (down + up + mid)


def unconditional_unet_attentions(config: dict) -> int:
    """Attention layers of a UNet2DModel: ``layers_per_block`` per AttnDownBlock2D, one more per AttnUpBlock2D,
    and one in the mid block unless ``add_attention`` is off."""
    layers = config["layers_per_block"]
    down = sum(layers for kind in config["down_block_types"] if kind.startswith("Attn"))
    up = sum(layers + 1 for kind in config["up_block_types"] if kind.startswith("Attn"))
    return down + up + int(config.get("add_attention", True))


def expected_fusions(network: str, config: dict) -> int:
    if network == "unet":
        if config["_class_name"] == "UNet2DModel":
            return unconditional_unet_attentions(config)
        return conditional_unet_attentions(config)
    if network in ("vae_encoder", "vae_decoder"):
        return int(config.get("mid_block_add_attention", True))  # AutoencoderKL: one attention in the mid block
    if network == "depth_estimator":
        return config["num_hidden_layers"]  # DPT's ViT: one self-attention per layer
    # CLIP's text encoder adds its causal mask to the scores before the softmax: not a pattern this pass takes.
    assert network == "text_encoder", network
    return 0


# ----- running graphs ----------------------------------------------------------------------------------------------
def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def random_feeds(sess: onnxruntime.InferenceSession, batch: int, height: int, width: int, seed: int = 0) -> dict:
    """Random inputs for a package graph: its symbolic dims are batch, sequence, and (latent_)height/width."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in sess.get_inputs():
        dims = []
        for dim in arg.shape:
            if isinstance(dim, int):
                dims.append(dim)
            elif dim == "batch":
                dims.append(batch)
            elif dim == "sequence":
                dims.append(77)
            else:
                dims.append(height if "height" in dim else width if "width" in dim else None)
        assert None not in dims, f"{arg.name}: unexpected dims {arg.shape}"
        if arg.type == "tensor(int64)":
            feeds[arg.name] = rng.integers(0, 1000, size=dims, dtype=np.int64)
        elif arg.name == "timestep":
            feeds[arg.name] = rng.uniform(0, 1000, size=dims).astype(np.float32)
        else:
            feeds[arg.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(reference - other).max() / max(np.abs(reference).max(), 1e-30))


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


# ----- the fixture packages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_every_attention_block_of_a_package_fuses_and_matches_the_unfused_graph(packages, kind):
    networks = sorted(p.parent.name for p in packages[kind].glob("*/model.onnx"))
    fused_any = False
    for network in networks:
        folder = packages[kind] / network
        model = onnx.load(str(folder / "model.onnx"))
        config = json.loads((folder / "config.json").read_text())
        fused, count = fuse_attention(model)
        assert count == expected_fusions(network, config), network
        if not count:
            assert fused.SerializeToString() == model.SerializeToString(), network
            continue
        fused_any = True
        onnx.checker.check_model(fused)
        assert op_count(fused, "MultiHeadAttention") == count and op_count(fused, "Softmax") == 0, network
        assert helper.make_opsetid(MS_DOMAIN, 1) in fused.opset_import
        # Nodes only edited: the weights are the unfused graph's, untouched.
        assert [t.name for t in fused.graph.initializer] == [t.name for t in model.graph.initializer]
        plain, tiled = session(model), session(fused)
        fixed = network == "depth_estimator"  # its input resolution is fixed in the graph
        for batch in BATCHES:
            for height, width in SIZES[:1] if fixed else SIZES:
                feeds = random_feeds(plain, batch, height, width)
                for reference, result in zip(plain.run(None, feeds), tiled.run(None, feeds), strict=True):
                    assert relative_error(reference, result) <= RTOL, (network, batch, height, width)
    assert fused_any


def unet_heads_and_scales(config: dict) -> set[tuple[int, float]]:
    """(heads, scale) of a UNet2DConditionModel's attention blocks. Without ``num_attention_heads`` diffusers reads
    ``attention_head_dim`` as the head count of each down block (reversed for the up blocks, the last one for the
    mid block); a block's head size is its channels over its heads."""
    kinds, channels = config["down_block_types"], config["block_out_channels"]
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(kinds)
    blocks = [(h, c) for h, c, kind in zip(heads, channels, kinds) if kind.startswith("CrossAttn")]
    up = zip(heads[::-1], channels[::-1], config["up_block_types"])
    blocks += [(h, c) for h, c, kind in up if kind.startswith("CrossAttn")]
    blocks.append((heads[-1], channels[-1]))
    return {(h, round((c // h) ** -0.5, 6)) for h, c in blocks}


@pytest.mark.parametrize("kind", ["sd1", "sd2", "inpaint", "depth"])
def test_each_block_gets_the_head_count_and_scale_its_config_gives(packages, kind):
    """The fixtures differ in head size: 8 heads of 8 channels (sd1, sd2, inpaint), 4 heads of 16 (depth)."""
    config = json.loads((packages[kind] / "unet" / "config.json").read_text())
    fused, _ = fuse_attention(onnx.load(str(packages[kind] / "unet" / "model.onnx")))
    found = set()
    for node in fused.graph.node:
        if node.op_type == "MultiHeadAttention":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            found.add((attributes["num_heads"], round(attributes["scale"], 6)))
    assert found == unet_heads_and_scales(config)


def test_a_graph_loaded_without_its_external_data_fuses_with_the_weights_left_where_they_are(packages, tmp_path):
    model = onnx.load(str(packages["sd1"] / "unet" / "model.onnx"))
    feeds = random_feeds(session(model), 2, 16, 16)
    reference = session(model).run(None, feeds)[0]
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    fused, count = fuse_attention(graph)
    assert count == 8
    assert all(t.data_location == TensorProto.EXTERNAL and not t.raw_data for t in fused.graph.initializer)
    onnx.save(fused, tmp_path / "fused.onnx")  # beside the data it points at
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    tiled = onnxruntime.InferenceSession(str(tmp_path / "fused.onnx"), options, providers=["CPUExecutionProvider"])
    assert relative_error(reference, tiled.run(None, feeds)[0]) <= RTOL


# ----- small graphs: what is fused and what is left alone ---------------------------------------------------------
HEADS, HEAD_SIZE = 2, 4
HIDDEN = HEADS * HEAD_SIZE


def attention_model(
    elem: int = TensorProto.FLOAT,
    mask: bool = False,
    scores_out: bool = False,
    key_perm: tuple[int, ...] = (0, 2, 3, 1),
    divide: bool = False,
    merged_shape_out: bool = False,
) -> onnx.ModelProto:
    """softmax(q k^T * scale) v as the exporter writes it: q/k/v projected from x / context, heads split with a
    Concat of Shape reads, merged back. Options: the scale written as a division; spoiling it, an additive mask,
    the scores as a graph output, k transposed wrongly, or the shape of the merged heads as a graph output."""
    rng = np.random.default_rng(1)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    weights = [numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(dtype), f"w{n}") for n in "qkv"]
    nodes = [helper.make_node("MatMul", ["x" if n == "q" else "context", f"w{n}"], [n]) for n in "qkv"]

    def const(name: str, value, dtype=np.int64) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype))))
        return name

    for n in "qkv":
        nodes.append(helper.make_node("Shape", [n], [f"{n}_shape"]))
    # The exporter splits k and v with q's batch, and each with its own length.
    nodes.append(helper.make_node("Gather", ["q_shape", const("zero", 0)], ["batch"], axis=0))
    nodes.append(helper.make_node("Unsqueeze", ["batch", const("axes0", [0])], ["batch1"]))
    for n in "qkv":
        nodes.append(helper.make_node("Gather", [f"{n}_shape", const(f"{n}_one", 1)], [f"{n}_len"], axis=0))
        nodes.append(helper.make_node("Unsqueeze", [f"{n}_len", "axes0"], [f"{n}_len1"]))
        nodes.append(
            helper.make_node(
                "Concat", ["batch1", f"{n}_len1", const(f"{n}_h", [HEADS]), const(f"{n}_d", [-1])], [f"{n}_4d"], axis=0
            )
        )
        nodes.append(helper.make_node("Reshape", [n, f"{n}_4d"], [f"{n}_split"]))
        perm = key_perm if n == "k" else (0, 2, 1, 3)
        nodes.append(helper.make_node("Transpose", [f"{n}_split"], [f"{n}_heads"], perm=list(perm)))
    nodes.append(helper.make_node("MatMul", ["q_heads", "k_heads"], ["scores"]))
    factor = HEAD_SIZE**0.5 if divide else HEAD_SIZE**-0.5
    nodes.append(helper.make_node("Div" if divide else "Mul", ["scores", const("scale", factor, dtype)], ["scaled"]))
    logits = "scaled"
    if mask:
        nodes.append(helper.make_node("Add", ["scaled", "mask"], ["masked"]))
        logits = "masked"
    nodes.append(helper.make_node("Softmax", [logits], ["probs"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["probs", "v_heads"], ["context_heads"]))
    nodes.append(helper.make_node("Transpose", ["context_heads"], ["merged_4d"], perm=[0, 2, 1, 3]))
    nodes.append(helper.make_node("Gather", ["q_shape", "q_one"], ["q_len_again"], axis=0))
    nodes.append(helper.make_node("Unsqueeze", ["q_len_again", "axes0"], ["q_len_again1"]))
    nodes.append(helper.make_node("Concat", ["batch1", "q_len_again1", const("hidden", [HIDDEN])], ["bsh"], axis=0))
    nodes.append(helper.make_node("Reshape", ["merged_4d", "bsh"], ["y"]))
    inputs = [
        helper.make_tensor_value_info("x", elem, ["batch", "tokens", HIDDEN]),
        helper.make_tensor_value_info("context", elem, ["batch", "context_tokens", HIDDEN]),
    ]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", elem, ["tokens", "context_tokens"]))
    outputs = [helper.make_tensor_value_info("y", elem, ["batch", "tokens", HIDDEN])]
    if scores_out:
        outputs.append(helper.make_tensor_value_info("scores", elem, None))
    if merged_shape_out:  # keeps the (B, S, H, D) context, hence the scores, alive beside any fused node
        nodes.append(helper.make_node("Shape", ["merged_4d"], ["merged_shape"]))
        outputs.append(helper.make_tensor_value_info("merged_shape", TensorProto.INT64, [4]))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def attention_feeds(elem: int = TensorProto.FLOAT, mask: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    feeds = {"x": rng.standard_normal((2, 6, HIDDEN)), "context": rng.standard_normal((2, 5, HIDDEN))}
    if mask:
        feeds["mask"] = rng.standard_normal((6, 5))
    return {name: value.astype(dtype) for name, value in feeds.items()}


@pytest.mark.parametrize("divide", [False, True], ids=["mul", "div"])
def test_the_exporters_pattern_becomes_one_node_with_heads_and_scale(divide):
    model = attention_model(divide=divide)
    fused, count = fuse_attention(model)
    assert count == 1
    onnx.checker.check_model(fused)
    (node,) = [n for n in fused.graph.node if n.domain == MS_DOMAIN]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "MultiHeadAttention" and list(node.input) == ["q", "k", "v"] and list(node.output) == ["y"]
    assert attributes["num_heads"] == HEADS and attributes["scale"] == pytest.approx(HEAD_SIZE**-0.5)
    # Everything between the projections and the output went: Shape reads, splits, both MatMuls, the softmax.
    assert sorted(n.op_type for n in fused.graph.node) == ["MatMul"] * 3 + ["MultiHeadAttention"]
    feeds = attention_feeds()
    reference = session(model).run(None, feeds)[0]
    assert relative_error(reference, session(fused).run(None, feeds)[0]) <= RTOL
    assert op_count(model, "Softmax") == 1, "the input model is not modified"


@pytest.mark.parametrize(
    "spoiled",
    [
        dict(mask=True),  # a mask between scores and softmax (CLIP's causal mask)
        dict(scores_out=True),  # the scores are needed elsewhere: fusing would not save them
        dict(key_perm=(0, 2, 1, 3)),  # k not transposed: not q k^T
        dict(merged_shape_out=True),  # the scores would have to stay anyway
        dict(elem=TensorProto.FLOAT16),  # the CPU kernel is float32 only
    ],
    ids=["mask", "scores-read-elsewhere", "key-not-transposed", "context-read-elsewhere", "float16"],
)
def test_anything_else_is_left_exactly_as_it_was(spoiled):
    model = attention_model(**spoiled)
    fused, count = fuse_attention(model)
    assert count == 0
    assert fused.SerializeToString() == model.SerializeToString()


def test_a_graph_with_nothing_to_fuse_is_returned_unchanged():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Softmax", ["y"], ["p"], axis=-1)],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fused, count = fuse_attention(model)
    assert count == 0 and fused is not model
    assert fused.SerializeToString() == model.SerializeToString()


def test_importing_the_pass_does_not_import_torch():
    code = "import sys, diffrt.kernels.attention; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ----- the CPU engine -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def external_unet(packages, tmp_path_factory):
    """The tiny SD1 UNet with its weights in model.onnx.data, as graphs over 2 GB are written."""
    folder = tmp_path_factory.mktemp("external") / "unet"
    folder.mkdir()
    model = onnx.load(str(packages["sd1"] / "unet" / "model.onnx"))
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return folder


def unet_feeds(batch: int = 2, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "sample": rng.standard_normal((batch, 4, size, size), dtype=np.float32),
        "timestep": np.full((batch,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, 32), dtype=np.float32),
    }


def cached_ops(engine) -> list[str]:
    return [n.op_type for n in onnx.load(str(engine.cached_graph / "model.onnx"), load_external_data=False).graph.node]


def test_the_engine_gives_the_same_outputs_fused_or_not_and_caches_the_fused_graph(external_unet, tmp_path):
    plain = load_engine(external_unet, "cpu", SessionSettings(fuse_attention=False, cache_dir=tmp_path / "a"))
    fused = load_engine(external_unet, "cpu", SessionSettings(cache_dir=tmp_path / "b"))
    assert SessionSettings().fuse_attention is True
    assert fused.cached_graph.name != plain.cached_graph.name  # the pass is part of the key
    assert "MultiHeadAttention" not in cached_ops(plain) and cached_ops(fused).count("MultiHeadAttention") == 8
    again = load_engine(external_unet, "cpu", SessionSettings(cache_dir=tmp_path / "b"))  # from the cache
    uncached = load_engine(external_unet, "cpu", SessionSettings(cache_dir=None))  # fused at each start
    for batch, size in ((1, 16), (2, 24)):
        feeds = unet_feeds(batch, size)
        reference = plain.run(feeds)["out_sample"]
        for engine in (fused, again, uncached):
            assert relative_error(reference, engine.run(feeds)["out_sample"]) <= RTOL
    assert not list(external_unet.glob("*fused*")) and sorted(p.name for p in external_unet.iterdir()) == [
        "model.onnx",
        "model.onnx.data",
    ], "the package folder is only read"


def test_without_the_onnx_package_the_engine_runs_unfused_under_the_unfused_key(external_unet, tmp_path, monkeypatch):
    settings = SessionSettings(cache_dir=tmp_path)
    fused_key = graph_cache.cached_graph_folder(external_unet / "model.onnx", graph_cache.CPU, settings)
    monkeypatch.setattr(graph_cache, "attention_pass", lambda: None)
    engine = load_engine(external_unet, "cpu", settings)
    unfused = SessionSettings(cache_dir=tmp_path, fuse_attention=False)
    assert engine.cached_graph == graph_cache.cached_graph_folder(
        external_unet / "model.onnx", graph_cache.CPU, unfused
    )
    assert engine.cached_graph != fused_key and "MultiHeadAttention" not in cached_ops(engine)


def test_a_failing_pass_is_a_warning_and_the_graph_runs_unfused(external_unet, monkeypatch, caplog):
    def broken(model):
        raise ValueError("a bug in the pass")

    import diffrt.kernels.attention as attention

    monkeypatch.setattr(attention, "fuse_attention", broken)
    with caplog.at_level(logging.WARNING, logger="diffrt.engines"):
        engine = load_engine(external_unet, "cpu", SessionSettings(cache_dir=None))
    assert "attention fusion failed (ValueError: a bug in the pass); running the graph unfused" in caplog.text
    assert engine.run(unet_feeds())["out_sample"].shape == (2, 4, 16, 16)


def test_fuse_attention_must_be_a_bool():
    with pytest.raises(ConfigError, match="fuse_attention='yes' is not accepted; give True or False."):
        SessionSettings(fuse_attention="yes")
