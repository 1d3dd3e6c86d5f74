"""LoRA in engine packages: fused into the weights at export, and swapped later without re-tracing.

Export writes, beside the graphs LoRA can touch (UNet, text encoders), ``weights.json``: which ONNX initializers hold
each weight of the torch module (:mod:`~diffrt.export.graph_folder`). A package with adapters also keeps
``lora_base.safetensors``: the un-fused values of every weight an adapter changed. ``diffrt lora apply`` starts from
those values, so adapters are replaced, never stacked by accident.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..runtime.errors import CheckpointError, PackageError
from ..runtime.lora import LoraAdapter, LoraSpec, lora_deltas, read_lora
from ..runtime.schema import EXTERNAL_DATA_FILE, MODEL_FILE, PROVENANCE_NAME
from ..staging import staged_folder
from .graph_folder import WeightsMap, canonical, read_weights_map, save_graph
from .output import check_output, writing
from .weights import lora_pickle_loader

if TYPE_CHECKING:
    from .onnx_export import GraphReport

LORA_BASE = "lora_base.safetensors"
LORA_NETWORKS = ("unet", "text_encoder", "text_encoder_2", "transformer")

Progress = Callable[[str, str], None]


# ----- fusing at export ------------------------------------------------------------------------------------------
@dataclass
class FusedSource:
    """A source whose UNet / text encoders load with the adapters fused in, and what was changed."""

    source: Any
    summaries: list[dict[str, Any]]
    bases: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """network -> canonical parameter name -> its value before fusing (float32)."""


def fuse_into_source(source, specs: Sequence[LoraSpec], allow_pickle: bool = False) -> FusedSource:
    """Read the adapters, check them against the source's UNet and text encoders, and return a source whose
    components load fused weights. The state dicts are loaded once here and handed to the model builders."""
    import torch

    adapters = [read_lora(spec, pickle_loader=lora_pickle_loader(allow_pickle)) for spec in specs]
    comps = dict(source.components)
    state_dicts = {name: comps[name].load_weights() for name in LORA_NETWORKS if name in comps}
    targets = {
        name: {k: tuple(v.shape) for k, v in sd.items() if getattr(v, "ndim", 0) >= 2}
        for name, sd in state_dicts.items()
    }
    deltas, summaries = lora_deltas(adapters, targets)
    bases: dict[str, dict[str, np.ndarray]] = {}
    for name, changes in deltas.items():
        sd = state_dicts[name]
        bases[name] = {}
        for key, delta in changes.items():
            base = sd[key].float()
            bases[name][canonical(key)] = base.numpy().copy()
            sd[key] = base + torch.from_numpy(np.ascontiguousarray(delta, dtype=np.float32))
        comps[name] = replace(comps[name], load_weights=_once(sd))
    return FusedSource(replace(source, components=comps), summaries, bases)


def _once(state_dict: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    holder = [state_dict]

    def load() -> dict[str, Any]:  # hands the fused dict over and lets go of it, so it is not kept twice
        if not holder:
            raise CheckpointError("fused LoRA weights were already consumed; load the source again.")
        return holder.pop()

    return load


def write_lora_base(folder: Path, base: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path = folder / LORA_BASE
    if base:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(base.items())}, str(path))
    elif path.exists():
        path.unlink()


# ----- slots for adapters chosen at run time ----------------------------------------------------------------------
def add_slots(graph: GraphReport, rank_max: int) -> GraphReport:
    """Give the exported graph ``graph`` LoRA slots in place (:mod:`diffrt.kernels.lora_slots`) and write its slot
    list beside it; the report's size and time are updated. A graph with external data is edited without loading
    its weights: only nodes and rank-0 initializers are added, and the data file is left as it is."""
    import onnx

    from ..kernels.lora_slots import add_lora_slots, write_slots

    start = time.perf_counter()
    folder = graph.path.parent
    proto = onnx.load(str(graph.path), load_external_data=not graph.external_data)
    slotted, slots = add_lora_slots(proto, read_weights_map(folder))
    del proto
    if graph.external_data:  # the weights stay in model.onnx.data, referenced as before
        onnx.save_model(slotted, str(graph.path))
    else:
        save_graph(slotted, graph.path, external=False)
    write_slots(folder, slots, rank_max)
    graph.bytes = sum(p.stat().st_size for p in folder.glob(f"{MODEL_FILE}*"))
    graph.seconds += time.perf_counter() - start
    return graph


# ----- swapping adapters in an exported package -------------------------------------------------------------------
@dataclass
class ApplyReport:
    path: Path
    adapters: list[dict[str, Any]]
    rewritten: dict[str, int]
    """network -> number of weights rewritten (adapters' targets plus weights restored to base)."""
    seconds: float = 0.0


def apply_loras(
    package: str | Path,
    out: str | Path,
    specs: Sequence[LoraSpec],
    force: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> ApplyReport:
    """Write ``out``: ``package`` with exactly ``specs`` fused (none: the base weights restored).

    Only the UNet and text-encoder graphs (SDXL's second one too) are rewritten, and in them only the weights an
    adapter (old or new) touches; nothing is traced and no torch model is built. ``out`` may equal ``package``
    with ``force``.
    """

    progress = progress or (lambda name, message: None)
    start = time.perf_counter()
    package, out = Path(package), Path(out)
    provenance_path = package / PROVENANCE_NAME
    if not provenance_path.is_file():
        raise PackageError(
            f"{package} is not a diffrt engine package (no {PROVENANCE_NAME}); export one with `diffrt export`."
        )
    if json.loads(provenance_path.read_text()).get("quantization"):
        raise PackageError(
            f"{package} is quantized (int8, `diffrt quantize`): its weights are no longer the float ones a LoRA is "
            "added to; accepted: apply the adapters to the float package, then quantize the result."
        )
    if (json.loads(provenance_path.read_text()).get("export") or {}).get("deepcache"):
        raise PackageError(
            f"{package} was exported with --deepcache, and `diffrt lora apply` does not rewrite its shallow UNets "
            "(unet_shallow_*); accepted: export it again with the adapters fused (--deepcache --lora FILE[:WEIGHT])."
        )
    check_output(out, force, [package, *(spec.path for spec in specs)], in_place=package)
    with writing(out):
        return _apply(package, out, specs, allow_pickle, progress, start)


def _apply(
    package: Path, out: Path, specs: Sequence[LoraSpec], allow_pickle: bool, progress: Progress, start: float
) -> ApplyReport:
    import onnx
    from safetensors.numpy import load_file

    provenance_path = package / PROVENANCE_NAME
    networks = [n for n in LORA_NETWORKS if (package / n / MODEL_FILE).is_file()]
    maps = {name: read_weights_map(package / name) for name in networks}

    adapters: list[LoraAdapter] = [read_lora(spec, pickle_loader=lora_pickle_loader(allow_pickle)) for spec in specs]
    protos = {}
    for name in networks:
        progress(name, "reading graph")
        protos[name] = onnx.load(str(package / name / MODEL_FILE), load_external_data=True)
    targets = {name: _parameter_shapes(protos[name], maps[name]) for name in networks}
    deltas, summaries = lora_deltas(adapters, targets)

    rewritten: dict[str, int] = {}
    with staged_folder(out) as staging:
        skip = shutil.ignore_patterns(MODEL_FILE, EXTERNAL_DATA_FILE, LORA_BASE)
        shutil.copytree(package, staging, ignore=skip, dirs_exist_ok=True)
        for name in _other_graphs(package):  # untouched graphs are copied as they are
            for file in (package / name).glob(f"{MODEL_FILE}*"):
                shutil.copy2(file, staging / name / file.name)
        for name in networks:
            base_path = package / name / LORA_BASE
            old_base = load_file(str(base_path)) if base_path.is_file() else {}
            changes = deltas.get(name, {})
            rewritten[name] = len(set(old_base) | set(changes))
            progress(name, f"rewriting {rewritten[name]} weights")
            new_base = _rewrite(protos[name], maps[name], old_base, changes)
            external = (package / name / EXTERNAL_DATA_FILE).is_file()
            save_graph(protos[name], staging / name / MODEL_FILE, external, like=package / name / MODEL_FILE)
            write_lora_base(staging / name, new_base)
        provenance = json.loads(provenance_path.read_text())
        provenance["loras"] = summaries
        provenance["lora_applied"] = {"from": str(package), "by": "diffrt lora apply"}
        (staging / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    return ApplyReport(out, summaries, rewritten, time.perf_counter() - start)


def _other_graphs(package: Path) -> list[str]:
    return [p.parent.name for p in package.glob(f"*/{MODEL_FILE}") if p.parent.name not in LORA_NETWORKS]


def _parameter_shapes(proto, mapping: WeightsMap) -> dict[str, tuple[int, ...]]:
    dims = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    shapes = {}
    for param, entries in mapping.items():
        name, transposed = entries[0]
        shape = dims[name]
        shapes[param] = shape[::-1] if transposed else shape
    return shapes


def _rewrite(
    proto, mapping: WeightsMap, old_base: dict[str, np.ndarray], changes: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Set each touched weight to base (+ delta); return the new base values to keep."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in proto.graph.initializer}
    new_base = {}
    for param in sorted(set(old_base) | set(changes)):
        entries = mapping[param]
        first, transposed = entries[0]
        base = old_base.get(param)
        if base is None:
            current = numpy_helper.to_array(inits[first])
            base = current.T if transposed else current
        base = np.asarray(base, dtype=np.float32)
        value = base + changes[param] if param in changes else base
        if param in changes:
            new_base[param] = base
        for name, flip in entries:
            init = inits[name]
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value.T if flip else value, dtype=dtype), name))
    return new_base
