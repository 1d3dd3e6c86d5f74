"""The files of one network's folder in an engine package, as export and ``diffrt lora apply`` write them.

* ``model.onnx``, its tensors in one ``model.onnx.data`` beside it when they pass the protobuf limit (as Optimum
  writes them): :func:`save_graph`.
* ``weights.json`` beside the graphs LoRA can touch (UNet, text encoders): for each weight matrix or convolution
  kernel of the torch module, the ONNX initializer(s) holding it and whether the exporter stored it transposed
  (constant folding turns a Linear's weight into a transposed MatMul constant with a generated name). The map is
  found by content, not by name, so it does not depend on what the exporter called things.

Torch-free: ``lora apply`` rewrites graphs without building a torch model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..runtime.errors import PackageError
from ..runtime.schema import EXTERNAL_DATA_FILE

WEIGHTS_MAP = "weights.json"
MAP_FORMAT = 1
TEXT_MODEL_PREFIX = "text_model."

WeightsMap = dict[str, list[tuple[str, bool]]]
"""Canonical parameter name -> [(initializer name, stored transposed), ...]."""


def save_graph(proto, target: Path, external: bool, like: Path | None = None) -> None:
    """Write ``proto`` to ``target``; with ``external``, its tensors go to one ``model.onnx.data`` beside it.

    Files get the permissions of ``like`` (default: what ``model.onnx`` got): onnx writes the data file owner-only,
    yet a package is read by whoever serves it."""
    import onnx

    if external:
        onnx.save_model(
            proto,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_FILE,
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(target))
    mode = (like or target).stat().st_mode & 0o777
    for file in (target, target.parent / EXTERNAL_DATA_FILE):
        if file.exists():
            file.chmod(mode)


def canonical(name: str) -> str:
    """Parameter names without transformers 4's ``text_model.`` prefix, so both CLIP layouts share one key."""
    return name.removeprefix(TEXT_MODEL_PREFIX)


def weights_map(proto, parameters: dict[str, np.ndarray]) -> WeightsMap:
    """For each parameter of 2 or more dimensions, the initializers holding it: [(name, transposed), ...]."""
    from onnx import numpy_helper

    index: dict[tuple[tuple[int, ...], bytes], list[str]] = {}
    for init in proto.graph.initializer:
        if len(init.dims) < 2:
            continue
        data = init.raw_data or numpy_helper.to_array(init).tobytes()
        index.setdefault((tuple(init.dims), _digest(data)), []).append(init.name)
    found: WeightsMap = {}
    for name, value in parameters.items():
        if value.ndim < 2:
            continue
        hits = [(n, False) for n in index.get((value.shape, _digest(value.tobytes())), [])]
        if value.ndim == 2:
            flipped = np.ascontiguousarray(value.T)
            hits += [(n, True) for n in index.get((flipped.shape, _digest(flipped.tobytes())), [])]
        if hits:
            found[canonical(name)] = hits
    return found


def write_weights_map(proto, module, folder: Path) -> None:
    """Write ``folder/weights.json`` for the torch ``module`` whose graph is ``proto`` (before its data moves out)."""
    inner = getattr(module, "model", module)
    parameters = {n: p.detach().float().contiguous().numpy() for n, p in inner.named_parameters()}
    found = weights_map(proto, parameters)
    data = {"format": MAP_FORMAT, "parameters": {k: [[n, t] for n, t in v] for k, v in sorted(found.items())}}
    (folder / WEIGHTS_MAP).write_text(json.dumps(data, indent=1) + "\n")


def read_weights_map(folder: Path) -> WeightsMap:
    """The weights map of the graph in ``folder``; PackageError when the folder has none."""
    path = folder / WEIGHTS_MAP
    if not path.is_file():
        raise PackageError(
            f"{folder} has no {WEIGHTS_MAP}, so its weights cannot be found by name; the package was "
            "exported by an older diffrt or elsewhere: export it again with `diffrt export ... --lora FILE`."
        )
    try:
        parameters = json.loads(path.read_text())["parameters"]
        return {str(k): [(str(n), bool(t)) for n, t in v] for k, v in parameters.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PackageError(
            f"{path} is not a readable weights map ({type(error).__name__}: {error}); export the package again with "
            "`diffrt export`."
        ) from None


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
