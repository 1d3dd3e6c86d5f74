"""Reading checkpoint weights safely: safetensors headers checked before anything is allocated, pickles refused.

* ``.safetensors`` files are validated with this module's own parser of the header (8-byte little-endian length,
  JSON, data buffer) before ``safetensors`` maps a byte of tensor data: sizes, dtypes, shapes and offsets must be
  consistent with each other and with the file's length, so a hostile or truncated file fails with one sentence
  instead of a huge allocation or a Rust panic. :func:`read_safetensors_numpy` then reads the tensors into float32
  NumPy arrays without torch (:mod:`diffrt.runtime.safetensors_file`, which LoRA files are read with).
* Pickle checkpoints (``.ckpt``, ``.bin``, ``.pt``, ``.pth``) are refused unless the caller opts in
  (``allow_pickle=True``, CLI ``--allow-pickle``): unpickling runs whatever code the file names. Even then they go
  through ``torch.load(weights_only=True)``, which accepts tensors and plain containers only.
* Diffusers / transformers component folders (``unet/``, ``vae/``, ``text_encoder/``...) are searched the way
  ``from_pretrained`` searches them: sharded index first, then the single file, safetensors before pickle, with the
  ``variant`` spelling diffusers 0.42 writes (and the legacy one it still reads).

Every failure is a :class:`~diffrt.runtime.errors.CheckpointError` whose message is one sentence naming the file.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from diffrt.runtime.errors import CheckpointError

# The torch-free safetensors reader lives in the runtime (it reads LoRA files at run time); export builds on it.
from diffrt.runtime.safetensors_file import (  # noqa: F401  (re-exported: this module's public API)
    MAX_HEADER_SIZE,
    SAFETENSORS_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    _json_type,
    _name,
    _one_line,
    _open_error,
    _plural,
    _short,
    check_finite_tensors,
    file_sha256,
    read_safetensors_header,
    read_safetensors_numpy,
    tensor_shapes,
)

__all__ = [
    "ACCEPTED_EXTENSIONS",
    "PICKLE_EXTENSIONS",
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "TensorInfo",
    "file_sha256",
    "load_component_weights",
    "load_safetensors",
    "load_weights_file",
    "read_json",
    "read_safetensors_header",
    "read_safetensors_numpy",
    "tensor_shapes",
]

PICKLE_EXTENSIONS = (".ckpt", ".bin", ".pt", ".pth")
ACCEPTED_EXTENSIONS = (".safetensors", *PICKLE_EXTENSIONS)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Validate the header, then load every tensor of a safetensors file onto ``device``."""
    read_safetensors_header(path)
    import safetensors.torch

    try:
        tensors = safetensors.torch.load_file(str(path), device=device)
    except Exception as error:  # SafetensorError, OSError, RuntimeError (device), ... all mean "not loaded"
        raise CheckpointError(
            f"safetensors file {_name(path)} could not be loaded onto {device!r}: {_one_line(error)}."
        ) from None
    return check_finite_tensors(tensors, path)


# ---------------------------------------------------------------------------------------------------------------
# pickle checkpoints
# ---------------------------------------------------------------------------------------------------------------


def _pickle_refusal(path: str | os.PathLike) -> CheckpointError:
    return CheckpointError(
        f"checkpoint file {_name(path)} is a pickle, which was not opened because unpickling can run arbitrary code "
        "from the file; convert it to .safetensors, or if you trust its source pass --allow-pickle "
        "(Python: allow_pickle=True) to read it with torch.load(weights_only=True)."
    )


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([^\s]+)")


def _load_pickle(path: str | os.PathLike) -> dict:
    import torch

    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file {_name(path)} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise _open_error("checkpoint file", path, error) from None
    except Exception as error:
        message = str(error)
        if "Weights only load failed" in message:
            found = _GLOBAL_RE.search(message)
            if found:
                what = f"global {found.group(1)!r}"
            elif "WeightsUnpickler error:" in message:
                what = _one_line(message.split("WeightsUnpickler error:", 1)[1])
            else:
                what = "content the tensors-only loader refuses"
            raise CheckpointError(
                f"checkpoint file {_name(path)} contains objects other than tensors ({what}) and was not loaded; "
                "accepted: a pickle of tensors and plain containers, or a .safetensors file."
            ) from None
        raise CheckpointError(
            f"checkpoint file {_name(path)} could not be read as a PyTorch checkpoint: {_one_line(error)}."
        ) from None
    return _tensors_only(obj, path)


def _tensors_only(obj: object, path: str | os.PathLike) -> dict:
    """Unwrap LDM ``{"state_dict": ...}`` nesting (repeatedly, like diffusers' single-file loader); keep tensors."""
    import torch

    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint file {_name(path)} holds a {type(obj).__name__}; accepted: a dict of tensors "
            "(optionally under 'state_dict')."
        )
    tensors = check_finite_tensors(
        {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, path
    )
    if not tensors:
        keys = ", ".join(_short(k, 40) for k in list(obj)[:8]) or "none"
        raise CheckpointError(
            f"checkpoint file {_name(path)} holds no tensors (keys: {keys}); accepted: a dict of tensors "
            "(optionally under 'state_dict')."
        )
    return tensors


def load_weights_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """Load one weights file, dispatching on its extension; pickles only with ``allow_pickle=True``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return load_safetensors(path)
    if suffix in PICKLE_EXTENSIONS:
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint file {_name(path)} does not exist.")
        if not allow_pickle:
            raise _pickle_refusal(path)
        return _load_pickle(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file {_name(path)} does not exist.")
    raise CheckpointError(
        f"checkpoint file {_name(path)} has an extension diffrt does not read; accepted: "
        f"{', '.join(ACCEPTED_EXTENSIONS)}."
    )


# ---------------------------------------------------------------------------------------------------------------
# diffusers / transformers component folders
# ---------------------------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file that must hold an object (config, index)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise _open_error("JSON file", path, error) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"JSON file {_name(path)} is not UTF-8 text; accepted: a JSON object.") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"JSON file {_name(path)} is not valid JSON: {_one_line(error)}.") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"JSON file {_name(path)} holds a JSON {_json_type(value)}; accepted: a JSON object.")
    return value


def _add_variant(name: str, variant: str | None) -> str:
    """diffusers' / transformers' spelling: the variant goes before the last extension."""
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _candidates(variant: str | None) -> list[tuple[str, str, bool]]:
    """(file name, kind, is_pickle) in the order from_pretrained looks: index before single file, safetensors first."""
    out: list[tuple[str, str, bool]] = []
    for stem in ("diffusion_pytorch_model", "model"):
        index = f"{stem}.safetensors.index.json"
        out.append((_add_variant(index, variant), "index", False))
        if variant is not None:  # legacy spelling diffusers still reads: <stem>.safetensors.<variant>.index.json
            out.append((f"{stem}.safetensors.{variant}.index.json", "index", False))
    for stem in ("diffusion_pytorch_model", "model"):
        out.append((_add_variant(f"{stem}.safetensors", variant), "file", False))
    for stem in ("diffusion_pytorch_model", "pytorch_model"):
        out.append((_add_variant(f"{stem}.bin.index.json", variant), "index", True))
    for stem in ("diffusion_pytorch_model", "pytorch_model"):
        out.append((_add_variant(f"{stem}.bin", variant), "file", True))
    return out


def _weight_files_present(folder: Path) -> list[str]:
    names = []
    for entry in sorted(folder.iterdir()):
        lower = entry.name.lower()
        is_index = lower.endswith(".json") and ".index" in lower
        if entry.is_file() and (lower.endswith(ACCEPTED_EXTENSIONS) or is_index):
            names.append(entry.name)
    return names


def _unmapped(where: str, shard: str, missing: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{where} maps {_plural(len(missing), 'tensor')} (first: {_short(missing[0])}) "
        f"to the shard {_short(shard)}, which does not hold them."
    )


def _load_sharded(index_path: Path, is_pickle: bool, allow_pickle: bool) -> dict:
    where = f"checkpoint index {_name(index_path)}"
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        raise CheckpointError(
            f"{where} has no usable weight_map; accepted: a non-empty map of tensor names to shard file names."
        )
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    folder = index_path.parent
    for shard in shards:
        if shard != os.path.basename(shard) or shard in ("", ".", "..") or "\\" in shard:
            raise CheckpointError(
                f"{where} names the shard {_short(shard)}, which is not a plain file name; "
                "accepted: files beside the index."
            )
        if not (folder / shard).is_file():
            raise CheckpointError(f"{where} lists the shard {_short(shard)}, which is missing from {str(folder)!r}.")
    if is_pickle and not allow_pickle:
        raise _pickle_refusal(folder / next(iter(shards)))

    if not is_pickle:  # every key checked against the shard headers before any tensor data is read
        for shard, keys in shards.items():
            present = read_safetensors_header(folder / shard).tensors
            missing = [k for k in keys if k not in present]
            if missing:
                raise _unmapped(where, shard, missing)
    weights: dict = {}
    for shard, keys in shards.items():
        loaded = load_weights_file(folder / shard, allow_pickle=allow_pickle)
        missing = [k for k in keys if k not in loaded]
        if missing:
            raise _unmapped(where, shard, missing)
        for key in keys:
            weights[key] = loaded[key]
        del loaded
    return weights


def _find_component_weights(root: Path, variant: str | None) -> tuple[Path, str, bool]:
    """The weights file (or shard index) ``from_pretrained`` would read in ``root``: (path, kind, is_pickle)."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a folder"
        raise CheckpointError(f"component folder {_name(root)} {what}; accepted: a diffusers model folder.")
    candidates = _candidates(variant)
    for name, kind, is_pickle in candidates:
        if (root / name).is_file():
            return root / name, kind, is_pickle
    present = _weight_files_present(root)
    present_text = ", ".join(present) if present else "none"
    if variant is not None:
        raise CheckpointError(
            f"component folder {_name(root)} has no {variant!r} variant weights (looked for "
            f"{', '.join(n for n, _, _ in candidates)}); weight files present: {present_text}."
        )
    raise CheckpointError(
        f"component folder {_name(root)} holds no weights: looked for {', '.join(n for n, _, _ in candidates)}, "
        f"and the weight files present are: {present_text}."
    )


def load_component_weights(folder: str | os.PathLike, variant: str | None = None, allow_pickle: bool = False) -> dict:
    """Weights of one diffusers / transformers component folder (``unet/``, ``vae/``, ``text_encoder/``...).

    Looks, in order, for a safetensors shard index, a single safetensors file, then (only loaded with
    ``allow_pickle=True``) a ``.bin`` index or file, under the diffusers (``diffusion_pytorch_model``) and
    transformers (``model`` / ``pytorch_model``) names, with ``variant`` inserted as diffusers 0.42 does
    (``diffusion_pytorch_model.fp16.safetensors``, ``diffusion_pytorch_model.safetensors.index.fp16.json``).
    Tensors come back in the dtype they were stored in.
    """
    path, kind, is_pickle = _find_component_weights(Path(folder), variant)
    if kind == "index":
        return _load_sharded(path, is_pickle, allow_pickle)
    return load_weights_file(path, allow_pickle=allow_pickle)


def component_weight_files(folder: str | os.PathLike, variant: str | None = None) -> list[Path]:
    """The files :func:`load_component_weights` reads (an index and its shards, or one file), for provenance."""
    path, kind, _ = _find_component_weights(Path(folder), variant)
    if kind != "index":
        return [path]
    weight_map = read_json(path).get("weight_map")
    shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    return [path, *(path.parent / shard for shard in shards if isinstance(shard, str))]


def lora_pickle_loader(allow_pickle: bool):
    """What :func:`diffrt.runtime.lora.read_lora` reads non-safetensors LoRA files with at export: this module's
    checks and messages (pickles refused unless ``allow_pickle``), tensors handed over as float32 NumPy arrays."""

    def load(path: Path) -> dict[str, np.ndarray]:
        loaded = load_weights_file(path, allow_pickle=allow_pickle)
        return {key: value.detach().float().cpu().numpy() for key, value in loaded.items()}

    return load
