"""What every package export writes besides its graphs: the report, JSON files, the tokenizer and the provenance
(``diffrt.json``); shared by the image packages (:mod:`.package`) and the video ones (:mod:`.video_package`)."""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..runtime.networks import deepcache_branches
from . import weights
from .onnx_export import GraphReport

PACKAGE_FORMAT = 1
ONNX_COMPONENT = ["diffusers", "OnnxRuntimeModel"]


@dataclass
class PackageReport:
    path: Path
    pipeline: str
    graphs: list[GraphReport] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _write_tokenizer(files: dict[str, Path], pad_token: str, folder: Path) -> None:
    """Copy the source's tokenizer files, or write the built-in CLIP vocabulary with ``pad_token``."""
    if files:
        folder.mkdir(parents=True)
        for name, path in files.items():
            shutil.copyfile(path, folder / name)
        return
    from .clip_vocab import write_clip_tokenizer

    write_clip_tokenizer(folder, pad_token=pad_token)


def _provenance(  # source: a Source, shape_range: a ShapeRange, options: ExportOptions
    source: Any, shape_range: Any, options: Any, report: PackageReport, loras: list[dict[str, Any]]
) -> dict:
    import onnx
    import torch

    from .vae_swap import vae_provenance

    root = source.path if source.path.is_dir() else source.path.parent
    files = {}
    for path in source.files:
        try:
            key = str(path.relative_to(root))
        except ValueError:
            key = str(path)
        files[key] = weights.file_sha256(path)
    return {
        "format": PACKAGE_FORMAT,
        "diffrt_version": __version__,
        "pipeline": source.pipeline_class,
        "source": {"path": str(source.path), "kind": source.kind, "sha256": files},
        "notes": report.notes,
        "loras": loras,
        **vae_provenance(source),
        "export": {
            "opset": options.opset,
            "static": list(options.static) if options.static else None,
            "batch": options.batch,
            "lora_slots": {"rank_max": options.lora_slots} if options.lora_slots is not None else None,
            "deepcache": _deepcache(source, options),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "shape_range": shape_range.to_json(),
        "networks": {
            g.name: {
                "file": str(g.path.relative_to(g.path.parent.parent)),
                "bytes": g.bytes,
                "external_data": g.external_data,
                "export_seconds": round(g.seconds, 3),
                "check": {
                    "sizes": [list(s) for s in g.checked],
                    "max_abs_error": g.max_abs_error,
                    "max_rel_error": g.max_rel_error,
                }
                if g.checked
                else None,
            }
            for g in report.graphs
        },
    }


def _deepcache(source: Any, options: Any) -> dict[str, list[int]] | None:
    """What the runtime reads to offer ``cache_interval``: the DeepCache branches with a ``unet_shallow_{b}``."""
    if not getattr(options, "deepcache", False):
        return None
    return {"branches": list(deepcache_branches(source.components["unet"].config))}
