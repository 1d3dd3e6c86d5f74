"""safetensors files read without torch: the header validated before anything is allocated, tensors as NumPy.

The header (8-byte little-endian length, JSON, data buffer) is parsed by this module's own code: sizes, dtypes, shapes
and offsets must be consistent with each other and with the file's length, so a hostile or truncated file fails with
one sentence naming it instead of a huge allocation or a Rust panic. :func:`read_safetensors_numpy` then reads the
tensors into float32 NumPy arrays. The runtime reads LoRA files with it (``load_lora_weights``); export's
:mod:`~diffrt.export.weights` builds its checkpoint loading on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import CheckpointError

__all__ = [
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "TensorInfo",
    "check_finite_tensors",
    "file_sha256",
    "read_safetensors_header",
    "read_safetensors_numpy",
    "tensor_shapes",
]

MAX_HEADER_SIZE = 100_000_000

# Bytes per element of every dtype safetensors writes that torch can hold (sub-byte F4/F6 formats left out).
SAFETENSORS_DTYPES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}


_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name as safetensors spells it, shape, and byte range within the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header; ``data_offset`` is where the data buffer starts in the file."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_offset: int = 8
    file_size: int = 0


def _name(path: str | os.PathLike) -> str:
    return repr(str(path))


def _one_line(error: BaseException | str) -> str:
    """The first line of an embedded error message, without a closing period (it sits inside our sentence)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    return text.rstrip(". ") or type(error).__name__


def _short(value: object, limit: int = 60) -> str:
    """repr() of a value taken from the file, cut short: a hostile header can hold megabyte-long names."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "[...]"


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _open_error(kind: str, path: str | os.PathLike, error: OSError) -> CheckpointError:
    if isinstance(error, FileNotFoundError):
        return CheckpointError(f"{kind} {_name(path)} does not exist.")
    if isinstance(error, IsADirectoryError):
        return CheckpointError(f"{kind} {_name(path)} is a folder; accepted: a file.")
    return CheckpointError(f"{kind} {_name(path)} could not be read: {_one_line(error.strerror or error)}.")


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(Exception):
    pass


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file, reading only the header bytes.

    Raises CheckpointError if the file is missing or too short, the header length is absurd, the JSON is invalid,
    an entry has an unknown dtype, a bad shape or offsets that disagree with its shape, entries overlap or leave
    gaps, or the data buffer is shorter (truncated file) or longer than the header accounts for.
    """
    where = f"safetensors file {_name(path)}"
    raw, file_size = _read_header_bytes(path, where)
    header = _parse_header_json(raw, where)
    data_size = file_size - 8 - len(raw)
    metadata = _header_metadata(header, where)
    tensors = {name: _tensor_entry(name, entry, data_size, where) for name, entry in header.items()}
    _check_tiling(tensors, data_size, where)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_offset=8 + len(raw), file_size=file_size)


def _read_header_bytes(path: str | os.PathLike, where: str) -> tuple[bytes, int]:
    """The header's JSON bytes and the file's size, once the 8-byte length before them is plausible."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise CheckpointError(
                    f"{where} is {_plural(file_size, 'byte')} long, too short to be a safetensors file "
                    "(accepted: an 8-byte header length, a JSON header and the tensor data)."
                )
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len < 2:
                raise CheckpointError(
                    f"{where} has a header length of {_plural(header_len, 'byte')}; accepted: at least 2 bytes of JSON."
                )
            if header_len > file_size - 8:
                raise CheckpointError(
                    f"{where} is not valid: its header claims {header_len} bytes but the file has {file_size} bytes."
                )
            if header_len > MAX_HEADER_SIZE:
                raise CheckpointError(
                    f"{where} is not valid: its header claims {header_len} bytes, over the "
                    f"safetensors limit of {MAX_HEADER_SIZE} bytes."
                )
            raw = f.read(header_len)
    except OSError as error:
        raise _open_error("safetensors file", path, error) from None
    if len(raw) != header_len:
        raise CheckpointError(f"{where} changed while it was being read; accepted: a file that is not being written.")
    return raw, file_size


def _parse_header_json(raw: bytes, where: str) -> dict:
    """The header as a JSON object whose entries are named once each."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{where} is not valid: its header is not UTF-8 text (accepted: a JSON object)."
        ) from None
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as dup:
        raise CheckpointError(
            f"{where} names the entry {_short(str(dup.args[0]))} twice in its header; accepted: unique tensor names."
        ) from None
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{where} is not valid: its header is not valid JSON ({_one_line(error)}).") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{where} is not valid: its header is a JSON {_json_type(header)}, not the accepted JSON object."
        )
    return header


def _header_metadata(header: dict, where: str) -> dict[str, str]:
    """Take the ``__metadata__`` entry out of ``header``: a map of strings to strings, empty when absent."""
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{where} has a __metadata__ entry that is not accepted (a map of strings to strings).")
    return dict(metadata)


def _tensor_entry(name: str, entry: object, data_size: int, where: str) -> TensorInfo:
    """One tensor's entry, checked: known dtype, a shape, offsets that span exactly its bytes within the data."""
    bad = f"{where} has an invalid entry for tensor {_short(name)}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{bad}; accepted: an object with dtype, shape and data_offsets.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(f"{bad}: dtype {_short(dtype)} is unknown (accepted: {', '.join(SAFETENSORS_DTYPES)}).")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{bad}: shape {_short(shape)} is not accepted (a list of non-negative integers).")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(
            f"{bad}: data_offsets {_short(offsets)} is not accepted (two integers [begin, end] with 0 <= begin <= end)."
        )
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    expected = numel * SAFETENSORS_DTYPES[dtype]
    if end - begin != expected:
        raise CheckpointError(
            f"{bad}: its data_offsets span {end - begin} bytes but shape {_short(shape)} of {dtype} needs {expected}."
        )
    if end > data_size:
        raise CheckpointError(
            f"{where} is truncated: tensor {_short(name)} ends at byte {end} of the data "
            f"but the file is shorter than its header says, holding only {data_size} bytes of data."
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tiling(tensors: dict[str, TensorInfo], data_size: int, where: str) -> None:
    """Like the safetensors library: the entries tile the data buffer from 0 to its end, no overlaps, no gaps."""
    position, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < position:
            raise CheckpointError(
                f"{where} has overlapping tensors: {_short(name)} (bytes {info.begin}-{info.end}) "
                f"overlaps {_short(previous)} (which ends at byte {position}); "
                "accepted: tensors stored one after another."
            )
        if info.begin > position:
            raise CheckpointError(
                f"{where} has {info.begin - position} unaccounted bytes before tensor {_short(name)}; "
                "accepted: tensors stored one after another from the start of the data."
            )
        position, previous = info.end, name
    if position != data_size:
        raise CheckpointError(
            f"{where} has {data_size - position} bytes after its last tensor that its header does not account for "
            "(accepted: a file that ends with its last tensor)."
        )


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the validated header alone (no tensor data is read)."""
    return {name: info.shape for name, info in read_safetensors_header(path).tensors.items()}


def check_finite_tensors(tensors: dict, path: str | os.PathLike) -> dict:
    """``tensors`` (torch or NumPy) unless a floating one holds NaN or infinity, which would make every image black:
    then a CheckpointError naming the file and the tensor (a damaged file, or a training run that diverged)."""
    for name, tensor in tensors.items():
        if isinstance(tensor, np.ndarray):
            bad = tensor.dtype.kind == "f" and not np.isfinite(tensor).all()
        elif tensor.is_floating_point():
            if tensor.element_size() == 1:  # float8: no isfinite kernel; widen (small tensors in practice)
                tensor = tensor.float()
            bad = not bool(tensor.isfinite().all())
        else:
            bad = False
        if bad:
            raise CheckpointError(
                f"{_name(path)}: tensor {name!r} holds NaN or infinite values; the file is damaged or its training "
                "diverged; accepted: finite weights."
            )
    return tensors


# Little-endian NumPy dtypes of the safetensors dtypes the torch-free reader converts to float32 (BF16 apart).
_NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _bf16_to_float32(raw: bytes) -> np.ndarray:
    """bfloat16 is the top half of a float32: widen each 16-bit pattern into the high bits."""
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32)


def read_safetensors_numpy(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a safetensors file as a float32 NumPy array, and the file's ``__metadata__``; no torch.

    The header is validated first (:func:`read_safetensors_header`). F16 and BF16 are widened exactly; F64 and
    integer / bool tensors are converted to float32. FP8 tensors are refused with a CheckpointError.
    """
    header = read_safetensors_header(path)
    unreadable = sorted({info.dtype for info in header.tensors.values()} - {"BF16", *_NUMPY_DTYPES})
    if unreadable:
        raise CheckpointError(
            f"safetensors file {_name(path)} holds {', '.join(unreadable)} tensors, which the torch-free reader does "
            "not convert; accepted: F64, F32, F16, BF16, integer and bool tensors."
        )
    tensors: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as f:
            for name, info in sorted(header.tensors.items(), key=lambda item: item[1].begin):
                f.seek(header.data_offset + info.begin)
                raw = f.read(info.nbytes)
                if len(raw) != info.nbytes:
                    raise CheckpointError(
                        f"safetensors file {_name(path)} changed while it was being read; "
                        "accepted: a file that is not being written."
                    )
                if info.dtype == "BF16":
                    array = _bf16_to_float32(raw)
                else:
                    array = np.frombuffer(raw, dtype=_NUMPY_DTYPES[info.dtype]).astype(np.float32)
                tensors[name] = array.reshape(info.shape)
    except OSError as error:
        raise _open_error("safetensors file", path, error) from None
    return check_finite_tensors(tensors, path), dict(header.metadata)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise _open_error("file", path, error) from None
    return digest.hexdigest()
