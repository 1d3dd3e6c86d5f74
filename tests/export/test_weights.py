"""diffrt.export.weights: safetensors headers validated before allocation, pickles refused, diffusers folders found."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import struct
import tracemalloc

import pytest
import safetensors.torch
import torch

from diffrt.export import weights as W
from diffrt.runtime.errors import CheckpointError

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def assert_one_sentence(error: pytest.ExceptionInfo, path) -> str:
    """The house rule: one sentence, naming the file at fault."""
    message = str(error.value)
    assert type(error.value) is CheckpointError
    assert str(path) in message, message
    assert "\n" not in message, message
    assert message.endswith("."), message
    rest = message.replace(str(path), "<path>")
    assert ". " not in rest[:-1], message
    return message


def write_raw(path: pathlib.Path, header, data: bytes = b"", length: int | None = None) -> pathlib.Path:
    """A safetensors-shaped file: 8-byte length (``length`` overrides it), header (bytes or JSON-able), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.fixture
def never_load(monkeypatch):
    """Fail the test if any loader is reached: validation must refuse first."""

    def boom(*args, **kwargs):
        raise AssertionError("a loader was called on input that should have been refused before loading")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(torch, "load", boom)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, for dtypes (float8) that torch.equal does not compare."""
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# ---------------------------------------------------------------------------------------------------------------
# safetensors: round trip
# ---------------------------------------------------------------------------------------------------------------


def sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, 2, generator=g).to(torch.bfloat16),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(7, dtype=torch.int64),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


EXPECTED_DTYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "f64": "F64",
    "i64": "I64",
    "i32": "I32",
    "i8": "I8",
    "u8": "U8",
    "bool": "BOOL",
    "f8": "F8_E4M3",
    "scalar": "F32",
    "empty": "F32",
}


def test_round_trip_header_and_tensors(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", "note": "tiny"})

    header = W.read_safetensors_header(path)
    assert header.metadata == {"format": "pt", "note": "tiny"}
    assert header.file_size == path.stat().st_size
    assert header.data_offset == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert {k: v.dtype for k, v in header.tensors.items()} == EXPECTED_DTYPES
    assert {k: v.shape for k, v in header.tensors.items()} == {k: tuple(t.shape) for k, t in tensors.items()}
    assert all(v.nbytes == tensors[k].numel() * tensors[k].element_size() for k, v in header.tensors.items())
    assert W.tensor_shapes(path) == {k: tuple(t.shape) for k, t in tensors.items()}

    loaded = W.load_safetensors(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape
        assert same_bits(loaded[name], tensor), name
    assert W.load_weights_file(path).keys() == tensors.keys()


def test_tensor_shapes_reads_only_the_header(tmp_path, never_load):
    path = tmp_path / "big.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(512, 512)}, str(path))  # 1 MiB of data
    tracemalloc.start()
    try:
        assert W.tensor_shapes(path) == {"w": (512, 512)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_empty_safetensors_file_is_accepted(tmp_path):
    path = tmp_path / "empty.safetensors"
    safetensors.torch.save_file({}, str(path))
    assert W.read_safetensors_header(path).tensors == {}
    assert W.load_safetensors(path) == {}


def test_load_failure_after_validation_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "ok.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError) as error:
        W.load_safetensors(path, device="no-such-device")
    assert_one_sentence(error, path)


# ---------------------------------------------------------------------------------------------------------------
# safetensors: hostile and broken headers
# ---------------------------------------------------------------------------------------------------------------

ONE = {"a": entry()}

BROKEN = [
    # id, header (JSON-able or bytes), data, forced header length, expected words in the message
    ("header-length-zero", b"", b"", 0, "header length of 0 bytes"),
    ("header-length-one", b"{", b"", 1, "header length of 1 byte;"),
    ("header-name-huge", {"x" * 10_000: entry()}, b"\0" * 4, None, "xxx[...] ends at byte 8"),
    ("header-length-2**62", b"{}", b"\0" * 90, 2**62, f"claims {2**62} bytes but the file has 100 bytes"),
    ("header-length-1GB", b"{}", b"\0" * 90, 10**9, f"claims {10**9} bytes but the file has 100 bytes"),
    ("header-length-past-end", b"{}", b"", 40, "claims 40 bytes but the file has 10 bytes"),
    ("invalid-json", b'{"a": {"dtype": ', b"", None, "not valid JSON"),
    ("not-utf8", b'{"\xff\xfe": 1}', b"", None, "not UTF-8"),
    ("json-array", [1, 2, 3], b"", None, "JSON array"),
    ("json-string", b'"hello"', b"", None, "JSON string"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, b"", None, "not valid JSON"),
    ("entry-not-object", {"a": [1, 2]}, b"", None, "dtype, shape and data_offsets"),
    ("entry-missing-field", {"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "data_offsets"),
    ("unknown-dtype", {"a": entry(dtype="F128")}, b"\0" * 8, None, "'F128' is unknown"),
    ("negative-shape", {"a": entry(shape=(-2,))}, b"\0" * 8, None, "shape [-2]"),
    ("float-shape", {"a": entry(shape=(2.0,))}, b"\0" * 8, None, "shape [2.0]"),
    ("bool-shape", {"a": entry(shape=(True,))}, b"\0" * 4, None, "shape [True]"),
    ("shape-not-list", {"a": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape 2"),
    ("offsets-reversed", {"a": entry(offsets=(8, 0))}, b"\0" * 8, None, "[8, 0]"),
    ("offsets-negative", {"a": entry(offsets=(-8, 0))}, b"\0" * 8, None, "[-8, 0]"),
    ("offsets-three", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}, b"\0" * 8, None, "[0, 4, 8]"),
    ("offsets-size-mismatch", {"a": entry(offsets=(0, 12))}, b"\0" * 12, None, "span 12 bytes but shape [2]"),
    ("offsets-past-data", {"a": entry(offsets=(8, 16))}, b"\0" * 8, None, "truncated"),
    (
        "huge-shape",
        {"a": entry(shape=(2**40,), offsets=(0, 4 * 2**40))},
        b"\0" * 8,
        None,
        "truncated",
    ),
    (
        "huge-shape-product",
        {"a": entry(dtype="F64", shape=(2**31, 2**31, 2**31), offsets=(0, 8 * 2**93))},
        b"",
        None,
        "truncated",
    ),
    (
        "overlap",
        {"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))},
        b"\0" * 12,
        None,
        "overlapping tensors",
    ),
    ("gap", {"a": entry(offsets=(4, 12))}, b"\0" * 12, None, "4 unaccounted bytes before tensor 'a'"),
    ("trailing-bytes", ONE, b"\0" * 12, None, "4 bytes after its last tensor"),
    (
        "duplicate-name",
        b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}',
        b"\0" * 16,
        None,
        "names the entry 'a' twice",
    ),
    ("metadata-not-strings", {"__metadata__": {"format": 1}, **ONE}, b"\0" * 8, None, "__metadata__"),
    ("metadata-not-object", {"__metadata__": ["pt"], **ONE}, b"\0" * 8, None, "__metadata__"),
]


@pytest.mark.parametrize(("header", "data", "length", "words"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_header_is_refused_before_loading(tmp_path, never_load, header, data, length, words):
    path = write_raw(tmp_path / "broken.safetensors", header, data, length)
    for call in (W.read_safetensors_header, W.tensor_shapes, W.load_safetensors, W.load_weights_file):
        with pytest.raises(CheckpointError) as error:
            call(path)
        message = assert_one_sentence(error, path)
        assert words in message


@pytest.mark.parametrize("size", [0, 4, 7])
def test_too_short_file(tmp_path, never_load, size):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(CheckpointError) as error:
        W.load_safetensors(path)
    assert "too short" in assert_one_sentence(error, path)


def test_header_over_the_library_limit_is_not_read(tmp_path, never_load):
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(160_000_000)  # sparse: the header length fits in the file but exceeds safetensors' limit
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as error:
            W.read_safetensors_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "over the safetensors limit" in assert_one_sentence(error, path)
    assert peak < 1024 * 1024


def test_truncated_file(tmp_path, never_load):
    path = tmp_path / "cut.safetensors"
    safetensors.torch.save_file({"a": torch.ones(16), "b": torch.ones(16)}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as error:
        W.load_safetensors(path)
    message = assert_one_sentence(error, path)
    assert "truncated" in message and "shorter than its header says" in message


def test_huge_claimed_tensor_is_never_allocated(tmp_path, never_load):
    path = write_raw(tmp_path / "huge.safetensors", {"w": entry(shape=(2**40,), offsets=(0, 4 * 2**40))}, b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError):
            W.load_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_missing_and_folder_paths(tmp_path):
    for call in (W.read_safetensors_header, W.load_safetensors, W.load_weights_file):
        with pytest.raises(CheckpointError) as error:
            call(tmp_path / "nope.safetensors")
        assert "does not exist" in assert_one_sentence(error, tmp_path / "nope.safetensors")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError) as error:
        W.load_safetensors(folder)
    assert "is a folder" in assert_one_sentence(error, folder)


def test_unknown_extension(tmp_path):
    path = tmp_path / "weights.onnx"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(path)
    message = assert_one_sentence(error, path)
    assert ".safetensors, .ckpt, .bin, .pt, .pth" in message
    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(tmp_path / "missing.ckpt", allow_pickle=True)
    assert "does not exist" in assert_one_sentence(error, tmp_path / "missing.ckpt")


# ---------------------------------------------------------------------------------------------------------------
# JSON and hashing
# ---------------------------------------------------------------------------------------------------------------


def test_read_json(tmp_path):
    good = tmp_path / "config.json"
    good.write_text('{"a": 1}')
    assert W.read_json(good) == {"a": 1}
    cases = {
        "missing.json": (None, "does not exist"),
        "bad.json": ('{"a": ', "not valid JSON"),
        "list.json": ("[1]", "JSON array; accepted: a JSON object"),
        "latin1.json": (b'{"\xe9": 1}', "not UTF-8"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        with pytest.raises(CheckpointError) as error:
            W.read_json(path)
        assert words in assert_one_sentence(error, path)


def test_file_sha256(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom((1 << 20) * 2 + 12345)
    path.write_bytes(data)
    assert W.file_sha256(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(CheckpointError) as error:
        W.file_sha256(tmp_path / "nope")
    assert_one_sentence(error, tmp_path / "nope")


# ---------------------------------------------------------------------------------------------------------------
# pickle policy
# ---------------------------------------------------------------------------------------------------------------


def ldm_state():
    g = torch.Generator().manual_seed(1)
    return {
        "model.diffusion_model.conv.weight": torch.randn(4, 4, 3, 3, generator=g),
        "first_stage_model.decoder.bias": torch.randn(4, generator=g).half(),
        "cond_stage_model.position_ids": torch.arange(77),
    }


@pytest.mark.parametrize("ext", W.PICKLE_EXTENSIONS)
def test_pickle_refused_by_default_without_opening(tmp_path, monkeypatch, ext):
    path = tmp_path / f"model{ext}"
    torch.save({"state_dict": ldm_state(), "global_step": 10}, path)
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or {})
    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(path)
    message = assert_one_sentence(error, path)
    assert "--allow-pickle" in message and "allow_pickle=True" in message
    assert "arbitrary code" in message and ".safetensors" in message
    assert opened == []


def test_ldm_checkpoint_loads_with_opt_in(tmp_path):
    state = ldm_state()
    path = tmp_path / "v1-5.ckpt"
    torch.save({"state_dict": state, "global_step": 470000, "epoch": 3}, path)
    loaded = W.load_weights_file(path, allow_pickle=True)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)


def test_pickle_unwrapping_and_non_tensors(tmp_path):
    state = ldm_state()
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"state_dict": {**state, "note": "x", "step": 3, "sub": {"a": 1}}}}, nested)
    assert W.load_weights_file(nested, allow_pickle=True).keys() == state.keys()

    flat = tmp_path / "pytorch_model.bin"
    torch.save(state, flat)
    assert W.load_weights_file(flat, allow_pickle=True).keys() == state.keys()

    for name, obj in {
        "none.pth": {"step": 3, "name": "x"},
        "list.pth": [torch.ones(2)],
        "tensor.pth": torch.ones(2),
    }.items():
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(CheckpointError) as error:
            W.load_weights_file(path, allow_pickle=True)
        assert "accepted: a dict of tensors" in assert_one_sentence(error, path)


def test_garbage_pickle_file(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a pickle at all\n" * 10)
    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(path, allow_pickle=True)
    assert_one_sentence(error, path)


class ExecPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class TouchPayload:
    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_payload(path: pathlib.Path, payload, how: str) -> None:
    obj = {"state_dict": {"weight": torch.ones(2), "evil": payload}}
    if how == "torch-zip":
        torch.save(obj, path)
    elif how == "torch-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle without tensors, so the restricted unpickler meets the payload's global first
        path.write_bytes(pickle.dumps({"state_dict": {"evil": payload}}, protocol=2))


@pytest.mark.parametrize("payload_cls", [ExecPayload, TouchPayload])
def test_payloads_are_armed(tmp_path, payload_cls):
    """Proof that the malicious files below really would run code if plainly unpickled."""
    marker = tmp_path / "armed"
    path = tmp_path / "armed.pkl"
    write_payload(path, payload_cls(marker), "raw")
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("payload_cls", [ExecPayload, TouchPayload])
@pytest.mark.parametrize(
    ("ext", "how"), [(".ckpt", "torch-zip"), (".pt", "torch-legacy"), (".bin", "raw"), (".pth", "torch-zip")]
)
def test_malicious_pickle_never_runs(tmp_path, monkeypatch, payload_cls, ext, how):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{ext}"
    write_payload(path, payload_cls(marker), how)

    real_load = torch.load
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(path)
    assert "--allow-pickle" in assert_one_sentence(error, path)
    assert calls == [] and not marker.exists()

    with pytest.raises(CheckpointError) as error:
        W.load_weights_file(path, allow_pickle=True)
    message = assert_one_sentence(error, path)
    assert "contains objects other than tensors" in message and "not loaded" in message
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert not marker.exists()
    assert ("global 'exec'" if payload_cls is ExecPayload else "global 'getattr'") in message


# ---------------------------------------------------------------------------------------------------------------
# diffusers / transformers component folders
# ---------------------------------------------------------------------------------------------------------------


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()


@pytest.fixture(scope="module")
def unet_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("unet")
    model = tiny_unet()
    fp32 = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(root / "plain")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    model.save_pretrained(root / "pickle", safe_serialization=False)
    model.save_pretrained(root / "both")  # fp32 default weights and an fp16 variant side by side
    model.half()
    fp16 = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(root / "both", variant="fp16")
    model.save_pretrained(root / "sharded_fp16", variant="fp16", max_shard_size="20KB")
    return root, fp32, fp16


def assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


def test_plain_folder(unet_folders):
    root, fp32, _ = unet_folders
    assert_same(W.load_component_weights(root / "plain"), fp32)


def test_variant_selection(unet_folders):
    root, fp32, fp16 = unet_folders
    assert (root / "both" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert_same(W.load_component_weights(root / "both"), fp32)
    assert_same(W.load_component_weights(root / "both", variant="fp16"), fp16)


def test_sharded_folder(unet_folders):
    root, fp32, _ = unet_folders
    shards = list((root / "sharded").glob("diffusion_pytorch_model-*-of-*.safetensors"))
    assert len(shards) > 3 and (root / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_same(W.load_component_weights(root / "sharded"), fp32)


def test_sharded_variant_folder(unet_folders, tmp_path):
    root, _, fp16 = unet_folders
    folder = root / "sharded_fp16"
    # The spelling diffusers 0.42 writes (and reads first).
    assert (folder / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    assert_same(W.load_component_weights(folder, variant="fp16"), fp16)

    # The legacy spelling diffusers still reads.
    legacy = shutil.copytree(folder, tmp_path / "legacy")
    os.rename(
        legacy / "diffusion_pytorch_model.safetensors.index.fp16.json",
        legacy / "diffusion_pytorch_model.safetensors.fp16.index.json",
    )
    assert_same(W.load_component_weights(legacy, variant="fp16"), fp16)


def test_missing_shard(unet_folders, tmp_path, never_load):
    folder = shutil.copytree(unet_folders[0] / "sharded", tmp_path / "sharded")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    victim = sorted(set(json.loads(index.read_text())["weight_map"].values()))[1]
    (folder / victim).unlink()
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(folder)
    message = assert_one_sentence(error, index)
    assert victim in message and "missing" in message


def test_index_key_not_in_its_shard(unet_folders, tmp_path, never_load):
    folder = shutil.copytree(unet_folders[0] / "sharded", tmp_path / "sharded")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    shards = sorted(set(data["weight_map"].values()))
    key = next(k for k, v in data["weight_map"].items() if v == shards[0])
    data["weight_map"][key] = shards[1]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(folder)
    message = assert_one_sentence(error, index)
    assert repr(key) in message and shards[1] in message


@pytest.mark.parametrize(
    ("weight_map", "words"),
    [
        ({"a": "../outside.safetensors"}, "not a plain file name"),
        ({"a": "/etc/passwd"}, "not a plain file name"),
        ({}, "no usable weight_map"),
        ({"a": 3}, "no usable weight_map"),
    ],
)
def test_bad_index(tmp_path, never_load, weight_map, words):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(tmp_path)
    assert words in assert_one_sentence(error, index)


def test_missing_variant(unet_folders):
    folder = unet_folders[0] / "plain"
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(folder, variant="fp16")
    message = assert_one_sentence(error, folder)
    assert "'fp16' variant" in message
    assert "diffusion_pytorch_model.fp16.safetensors" in message  # looked for
    assert "present: diffusion_pytorch_model.safetensors." in message


def test_nothing_found(tmp_path, unet_folders):
    empty = tmp_path / "vae"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(empty)
    message = assert_one_sentence(error, empty)
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin"):
        assert name in message
    assert message.endswith("present are: none.")

    # Only a variant present and none asked for: the message shows it.
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(unet_folders[0] / "sharded_fp16")
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in str(error.value)

    for bad in (tmp_path / "missing", empty / "config.json"):
        with pytest.raises(CheckpointError) as error:
            W.load_component_weights(bad)
        assert_one_sentence(error, bad)


def test_pickle_only_folder(unet_folders, monkeypatch):
    root, fp32, _ = unet_folders
    folder = root / "pickle"
    weights = folder / "diffusion_pytorch_model.bin"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]
    assert_same(W.load_component_weights(folder, allow_pickle=True), fp32)

    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called without allow_pickle"))
    with pytest.raises(CheckpointError) as error:
        W.load_component_weights(folder)
    assert "--allow-pickle" in assert_one_sentence(error, weights)


def test_clip_text_encoder_folder(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=77,
    )
    model = CLIPTextModel(config).eval()
    model.save_pretrained(tmp_path / "text_encoder")
    assert (tmp_path / "text_encoder" / "model.safetensors").is_file()
    loaded = W.load_component_weights(tmp_path / "text_encoder")
    assert_same(loaded, model.state_dict())


def test_component_weight_files_lists_what_is_read(tmp_path):
    from safetensors.torch import save_file

    from diffrt.export.weights import component_weight_files

    single = tmp_path / "single"
    single.mkdir()
    save_file({"w": torch.zeros(2)}, single / "diffusion_pytorch_model.safetensors")
    save_file({"w": torch.zeros(2, dtype=torch.float16)}, single / "diffusion_pytorch_model.fp16.safetensors")
    assert component_weight_files(single) == [single / "diffusion_pytorch_model.safetensors"]
    assert component_weight_files(single, variant="fp16") == [single / "diffusion_pytorch_model.fp16.safetensors"]
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": torch.zeros(2)}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(2)}, sharded / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert component_weight_files(sharded) == [
        sharded / "model.safetensors.index.json",
        sharded / "model-00001-of-00002.safetensors",
        sharded / "model-00002-of-00002.safetensors",
    ]
    with pytest.raises(CheckpointError, match="'fp16' variant"):
        component_weight_files(sharded, variant="fp16")
