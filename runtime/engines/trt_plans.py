"""TensorRT plans of an engine package: where they live, what they were built from, and whether one fits.

A plan is only valid for the graph, TensorRT version and GPU architecture it was built for, so plans are filed per
GPU and TensorRT version and each carries a metadata file with a cache key::

    <package>/engines/sm90-trt10.8.0/unet.plan       the serialized engine
    <package>/engines/sm90-trt10.8.0/unet.json       what it was built from (PlanMetadata), with its key
    <package>/engines/sm90-trt10.8.0/timing.cache    TensorRT's kernel timings, shared by the folder's builds
    <package>/engines/hashes.json                    memo of the ONNX files' SHA-256, by size and mtime

The key is the SHA-256 of: the content of the ONNX graph and its external data, the full TensorRT version, the
compute capability, the optimization profile (min/opt/max shape of every input), the precision and whether the plan
is refittable. A plan whose key does not match what is on disk now is never loaded: :func:`select_plan` says why.

This module is pure Python (no tensorrt, no CUDA) so it can be used and tested anywhere; the TensorRT backend
itself (:mod:`.trt`) is imported through :func:`~diffrt.runtime.engines.choice.trt_backend`. Plans, timing caches
and the hash memo are written whole or not at all (:mod:`diffrt.staging`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ...staging import flush_to_disk, staged_file, write_file
from ..errors import ConfigError, PackageError
from ..networks import (
    PREVIEW_DECODER,
    Network,
    ShapeRange,
    depth_estimator_network,
    depth_input_size,
    preview_decoder_network,
    text_encoder_network,
    unconditional_unet_network,
    unet_network,
    vae_decoder_network,
    vae_encoder_network,
    vae_scale_factor,
)
from ..schema import ENGINES_DIR, INDEX_NAME, MODEL_FILE, NETWORKS, PROVENANCE_NAME
from .base import logger

PLAN_SUFFIX = ".plan"
METADATA_SUFFIX = ".json"
TIMING_CACHE = "timing.cache"
HASHES_FILE = "hashes.json"
METADATA_FORMAT = 1
BUILD_PRECISIONS = ("fp32", "fp16", "bf16")
_CHUNK = 8 << 20

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]

__all__ = [
    "PlanInfo",
    "PlanMetadata",
    "PlanSelection",
    "build_profile",
    "cache_key",
    "check_shapes",
    "inspect_plans",
    "network_for",
    "onnx_digest",
    "onnx_files",
    "package_networks",
    "package_root",
    "plan_folder",
    "read_metadata",
    "resolve_precision",
    "select_plan",
    "shape_range_for",
    "write_plan",
]


# ----- where plans live -------------------------------------------------------------------------------------------
def gpu_tag(compute_capability: Sequence[int]) -> str:
    """``sm90`` for compute capability (9, 0)."""
    major, minor = compute_capability
    return f"sm{int(major)}{int(minor)}"


def version_tag(trt_version: str) -> str:
    """TensorRT's version as folders name it: major.minor.patch (the build number goes into the key)."""
    return ".".join(str(trt_version).split(".")[:3])


def plan_folder(package: str | os.PathLike, compute_capability: Sequence[int], trt_version: str) -> Path:
    """``<package>/engines/<gpu>-trt<version>``, e.g. ``engines/sm90-trt10.8.0``."""
    return Path(package) / ENGINES_DIR / f"{gpu_tag(compute_capability)}-trt{version_tag(trt_version)}"


def plan_files(folder: Path, name: str) -> tuple[Path, Path]:
    """The plan and metadata files of network ``name`` in a plan folder."""
    return folder / f"{name}{PLAN_SUFFIX}", folder / f"{name}{METADATA_SUFFIX}"


def package_root(model_path: str | os.PathLike) -> Path | None:
    """The engine package holding ``<package>/<network>/model.onnx`` (or the network folder), or None."""
    path = Path(model_path)
    folder = path.parent if path.suffix == ".onnx" else path
    root = folder.parent
    return root if (root / INDEX_NAME).is_file() else None


def _model(package: Path, name: str) -> Path:
    return package / name / MODEL_FILE


def package_networks(package: str | os.PathLike) -> list[str]:
    """The networks of a package that have a graph, in build order."""
    package = Path(package)
    return [name for name in NETWORKS if _model(package, name).is_file()]


# ----- content hashes ---------------------------------------------------------------------------------------------
def onnx_files(model_path: str | os.PathLike) -> list[Path]:
    """The graph and its external data: ``model.onnx`` and the files beside it named ``model.onnx<suffix>``
    (``model.onnx.data`` as diffrt writes it, ``model.onnx_data`` as Optimum does)."""
    model = Path(model_path)
    if not model.is_file():
        raise PackageError(f"{model} does not exist; export the package again with `diffrt export`.")
    data = [p for p in model.parent.glob(model.name + "?*") if p.is_file() and not p.name.endswith(".tmp")]
    return [model, *sorted(data)]


_MEMO: dict[tuple[str, int, int], str] = {}
_MEMO_LOCK = threading.Lock()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _HashMemo:
    """SHA-256 of files in a package, remembered in ``engines/hashes.json`` by relative path, size and mtime, so
    gigabytes of weights are hashed once per change rather than at every start. The sidecar is only written where
    ``engines/`` already exists (a package is never changed just to memoise) and its failures are not errors."""

    def __init__(self, package: Path | None) -> None:
        self.package = package
        self.path = package / ENGINES_DIR / HASHES_FILE if package is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict) and isinstance(data.get("files"), dict):
                    self.entries = data["files"]
            except (OSError, ValueError) as error:
                logger.debug("ignoring unreadable hash memo %s: %s", self.path, error)

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        process_key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        with _MEMO_LOCK:
            known = _MEMO.get(process_key)
        relative = self._relative(file)
        entry = self.entries.get(relative) if relative else None
        if known is None and isinstance(entry, dict):
            if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
                known = entry.get("sha256") if isinstance(entry.get("sha256"), str) else None
        if known is None:
            known = _sha256_file(file)
        with _MEMO_LOCK:
            _MEMO[process_key] = known
        if relative and entry != {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": known}:
            self.entries[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": known}
            self.dirty = True
        return known

    def _relative(self, file: Path) -> str | None:
        if self.package is None:
            return None
        try:
            return file.resolve().relative_to(self.package.resolve()).as_posix()
        except ValueError:
            return None

    def save(self) -> None:
        if not (self.dirty and self.path is not None and self.path.parent.is_dir()):
            return
        try:
            write_file(self.path, (json.dumps({"format": 1, "files": self.entries}, indent=1) + "\n").encode())
            self.dirty = False
        except OSError as error:
            logger.debug("could not write the hash memo %s: %s", self.path, error)


def onnx_digest(model_path: str | os.PathLike) -> str:
    """SHA-256 over the graph and its external data files (names and contents), memoised by size and mtime."""
    files = onnx_files(model_path)
    memo = _HashMemo(package_root(files[0]))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{memo.sha256(file)}\0".encode())
    memo.save()
    return digest.hexdigest()


def clear_hash_memo() -> None:
    """Forget the hashes this process remembers (the sidecar files stay)."""
    with _MEMO_LOCK:
        _MEMO.clear()


# ----- the key and the metadata -----------------------------------------------------------------------------------
def _profile_json(profile: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, list[list[int]]]:
    return {name: [[int(d) for d in shape] for shape in profile[name]] for name in sorted(profile)}


def cache_key(
    onnx_sha256: str,
    trt_version: str,
    compute_capability: Sequence[int],
    profile: Mapping[str, Sequence[Sequence[int]]],
    precision: str,
    refittable: bool,
) -> str:
    """The SHA-256 that identifies a plan: everything that decides what TensorRT builds, and nothing else."""
    parts = {
        "format": METADATA_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt": str(trt_version),
        "compute_capability": [int(c) for c in compute_capability],
        "profile": _profile_json(profile),
        "precision": precision,
        "refittable": bool(refittable),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class PlanMetadata:
    """What a plan was built from (``<network>.json`` beside it). ``key`` is :func:`cache_key` of the fields."""

    network: str
    onnx_sha256: str
    tensorrt: str
    compute_capability: tuple[int, int]
    profile: Profile
    precision: str
    refittable: bool
    plan_bytes: int = 0
    gpu: str = ""
    shape_range: dict[str, list[int]] | None = None
    workspace_bytes: int | None = None
    build_seconds: float | None = None
    created: str = ""
    refits: tuple[dict[str, Any], ...] = ()
    key: str = field(default="")

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.expected_key())

    def expected_key(self, onnx_sha256: str | None = None) -> str:
        return cache_key(
            onnx_sha256 or self.onnx_sha256,
            self.tensorrt,
            self.compute_capability,
            self.profile,
            self.precision,
            self.refittable,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"format": METADATA_FORMAT, **data}
        data["compute_capability"] = list(self.compute_capability)
        data["profile"] = _profile_json(self.profile)
        data["refits"] = list(self.refits)
        return data

    @classmethod
    def from_json(cls, data: Any) -> PlanMetadata:
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            raise ValueError(f"not plan metadata of format {METADATA_FORMAT}")
        profile = {
            str(name): tuple(tuple(int(d) for d in shape) for shape in shapes)
            for name, shapes in dict(data["profile"]).items()
        }
        if any(len(shapes) != 3 for shapes in profile.values()):
            raise ValueError("a profile entry is not (min, opt, max)")
        cc = tuple(int(c) for c in data["compute_capability"])
        if len(cc) != 2:
            raise ValueError("compute_capability is not (major, minor)")
        return cls(
            network=str(data["network"]),
            onnx_sha256=str(data["onnx_sha256"]),
            tensorrt=str(data["tensorrt"]),
            compute_capability=(cc[0], cc[1]),
            profile=profile,  # type: ignore[arg-type]
            precision=str(data["precision"]),
            refittable=bool(data["refittable"]),
            plan_bytes=int(data.get("plan_bytes", 0)),
            gpu=str(data.get("gpu", "")),
            shape_range=data.get("shape_range"),
            workspace_bytes=data.get("workspace_bytes"),
            build_seconds=data.get("build_seconds"),
            created=str(data.get("created", "")),
            refits=tuple(data.get("refits") or ()),
            key=str(data["key"]),
        )


def read_metadata(path: Path) -> PlanMetadata:
    """The metadata file of a plan; PackageError naming the file when it is unreadable."""
    try:
        return PlanMetadata.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PackageError(f"{path} is not readable plan metadata ({error}); build the plan again.") from None


def write_plan(folder: Path, name: str, plan: bytes | memoryview, metadata: PlanMetadata) -> Path:
    """Store a plan and its metadata so that no reader ever sees a plan with another plan's metadata.

    Both go to temporary files first; then the old metadata is removed (the old plan is no longer loadable), the
    plan renamed into place, and the metadata last: a crash at any point leaves the old pair, no loadable plan, or
    the new pair. ``plan_bytes`` is filled in from ``plan``.
    """
    plan_path, meta_path = plan_files(folder, name)
    view = memoryview(plan).cast("B")
    metadata = replace(metadata, plan_bytes=view.nbytes, key=metadata.expected_key())
    # The blocks close in reverse order: the plan is renamed into place first, its metadata last.
    with staged_file(meta_path) as meta_tmp, staged_file(plan_path) as plan_tmp:
        plan_tmp.write_bytes(view)
        meta_tmp.write_bytes((json.dumps(metadata.to_json(), indent=2) + "\n").encode())
        flush_to_disk(plan_tmp)  # on disk before the old metadata goes: no plan loads only between two renames
        flush_to_disk(meta_tmp)
        meta_path.unlink(missing_ok=True)
    return plan_path


def write_timing_cache(folder: Path, data: bytes | memoryview) -> None:
    write_file(folder / TIMING_CACHE, data)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----- networks and profiles --------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PackageError(f"{path} is not readable JSON ({error}); export the package again.") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path} holds {type(data).__name__}, not a JSON object; export the package again.")
    return data


def _config(package: Path, component: str) -> dict[str, Any]:
    path = package / component / "config.json"
    return _read_json(path) if path.is_file() else {}


def network_for(package: str | os.PathLike, name: str) -> Network:
    """The shape contract of network ``name`` of a package, from the component configs the package carries."""
    package = Path(package)
    if name.startswith("unet_shallow_"):
        # A PackageError, so that provider="auto" runs these graphs on ONNX Runtime instead.
        raise PackageError(
            f"{name}: TensorRT plans are not built for DeepCache's shallow UNets; ONNX Runtime runs them "
            "(provider='auto' or 'cuda')."
        )
    if name not in NETWORKS:
        raise ConfigError(f"network {name!r} is not one diffrt builds; accepted: {', '.join(NETWORKS)}.")
    if not _model(package, name).is_file():
        held = ", ".join(package_networks(package)) or "none"
        raise PackageError(f"engine package {str(package)!r} has no {name}/{MODEL_FILE}; it holds: {held}.")
    config = _config(package, name)
    if not config:
        raise PackageError(
            f"{package / name} has no config.json, which the {name} shape contract is read from; "
            "export the package again with `diffrt export`."
        )
    vae = _config(package, "vae_decoder") or _config(package, "vae_encoder")
    scale = vae_scale_factor(vae) if vae else 8
    if name == "unet":
        if config.get("_class_name") == "UNet2DModel":
            return unconditional_unet_network(config)
        encoder = _config(package, "text_encoder") or _config(package, "text_encoder_2")
        sequence = int(encoder.get("max_position_embeddings", 77))
        # SDXL's text_time UNet takes the pooled embedding of the second text encoder, as wide as its projection.
        text_embeds_dim = _config(package, "text_encoder_2").get("projection_dim")
        return unet_network(config, scale, sequence_length=sequence, text_embeds_dim=text_embeds_dim)
    if name.startswith("text_encoder"):
        kinds = {str(config.get("_class_name", "")), *map(str, config.get("architectures") or ())}
        return text_encoder_network(config, name=name, projection="CLIPTextModelWithProjection" in kinds)
    if name == "vae_encoder":
        return vae_encoder_network(config, scale)
    if name == "vae_decoder":
        return vae_decoder_network(config, scale)
    if name == PREVIEW_DECODER:
        return preview_decoder_network(config, scale)
    preprocessor = package / name / "preprocessor_config.json"
    return depth_estimator_network(depth_input_size(_read_json(preprocessor) if preprocessor.is_file() else {}))


def shape_range_for(
    package: str | os.PathLike,
    batch: Sequence[int] | None = None,
    height: Sequence[int] | None = None,
    width: Sequence[int] | None = None,
) -> ShapeRange:
    """The package's shape range (``diffrt.json``; diffrt's default for packages exported elsewhere), with the
    given (min, opt, max) overrides. A package exported at a fixed size keeps it: other sizes are refused."""
    package = Path(package)
    provenance = package / PROVENANCE_NAME
    data = _read_json(provenance) if provenance.is_file() else {}
    try:
        base = ShapeRange.from_json(data["shape_range"]) if "shape_range" in data else ShapeRange()
    except (KeyError, TypeError, ValueError) as error:
        raise PackageError(f"{provenance} has an unreadable shape_range ({error}); export the package again.") from None
    overrides = {
        key: tuple(int(v) for v in value)
        for key, value in (("batch", batch), ("height", height), ("width", width))
        if value is not None
    }
    for key, value in overrides.items():
        if len(value) != 3:
            raise ConfigError(f"{key} range {value} is not accepted; give MIN,OPT,MAX (or one value for all three).")
    shape_range = replace(base, **overrides)
    static = (data.get("export") or {}).get("static")
    if static and (shape_range.height[0] != shape_range.height[2] or shape_range.width[0] != shape_range.width[2]):
        raise ConfigError(
            f"engine package {str(package)!r} was exported at a fixed size of {static[0]}x{static[1]}; its graphs "
            "take no other size, so --height and --width must be that size."
        )
    if static and (shape_range.height[0], shape_range.width[0]) != tuple(static):
        raise ConfigError(
            f"engine package {str(package)!r} was exported at a fixed size of {static[0]}x{static[1]}; "
            f"{shape_range.height[0]}x{shape_range.width[0]} is not accepted."
        )
    return shape_range


def build_profile(network: Network, shape_range: ShapeRange) -> Profile:
    """The TensorRT optimization profile of ``network`` for ``shape_range``.

    :meth:`Network.profile` doubles the batch of a guided UNet at every point; the minimum here keeps the plain
    batch as well, so the same plan also runs without guidance (guidance_scale <= 1, one image).
    """
    profile = dict(network.profile(shape_range))
    if network.batch_multiplier > 1:
        low = network.dims(shape_range.batch[0], shape_range.height[0], shape_range.width[0])
        for spec in network.inputs:
            if spec.name in profile:
                _, opt, high = profile[spec.name]
                profile[spec.name] = (spec.resolve(low), opt, high)
    return profile  # type: ignore[return-value]


def resolve_precision(requested: str, compute_capability: Sequence[int], fast_fp16: bool = True) -> str:
    """What a plan is built in: ``auto`` is fp16 where the GPU has fast fp16, else fp32; bf16 needs sm80+."""
    if requested == "auto":
        return "fp16" if fast_fp16 else "fp32"
    if requested not in BUILD_PRECISIONS:
        accepted = ", ".join(repr(p) for p in ("auto", *BUILD_PRECISIONS))
        raise ConfigError(f"precision={requested!r} is not accepted for TensorRT plans; accepted: {accepted}.")
    if requested == "bf16" and tuple(compute_capability) < (8, 0):
        raise ConfigError(
            f"precision 'bf16' needs a GPU of compute capability 8.0 or newer (Ampere); this one is "
            f"{gpu_tag(compute_capability)}. Use 'fp16' or 'fp32'."
        )
    if requested == "fp16" and not fast_fp16:
        logger.warning("this GPU has no fast fp16; an fp16 plan will mostly run fp32 kernels")
    return requested


def check_shapes(
    profile: Mapping[str, Sequence[Sequence[int]]], shapes: Mapping[str, Sequence[int]], name: str
) -> None:
    """Refuse inputs outside the plan's profile, naming the input, its shape and the range the plan takes."""
    for input_name, (low, _, high) in profile.items():
        shape = shapes.get(input_name)
        if shape is None:
            continue
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            raise ConfigError(
                f"{name} input {input_name!r} has shape {shape}, outside what its TensorRT plan was built for: "
                f"from {tuple(low)} to {tuple(high)}. Build a plan that covers it, e.g. `diffrt engines build "
                "PACKAGE --batch MIN,OPT,MAX --height MIN,OPT,MAX --width MIN,OPT,MAX`."
            )


# ----- choosing a plan --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanSelection:
    """The outcome of :func:`select_plan`: the plan to load, or why there is none and what would make one.

    ``state`` is ``current`` (load ``plan``), ``missing`` (nothing built for this GPU and TensorRT), ``stale`` (the
    ONNX graph changed since the build: refit or rebuild), ``incompatible`` (another precision, TensorRT build or
    GPU) or ``broken`` (unreadable or inconsistent metadata, a plan file of the wrong size).
    """

    state: str
    reason: str
    remedy: str
    plan: Path | None = None
    metadata: PlanMetadata | None = None

    @property
    def ok(self) -> bool:
        return self.state == "current"


def select_plan(
    model_path: str | os.PathLike,
    trt_version: str,
    compute_capability: Sequence[int],
    precision: str = "auto",
    name: str | None = None,
) -> PlanSelection:
    """The plan of the graph at ``model_path`` (``<package>/<network>/model.onnx``) for this TensorRT and GPU.

    ``precision`` other than ``auto`` must match the plan's. A plan whose key no longer matches the ONNX files is
    reported ``stale`` and never selected.
    """
    model = Path(model_path)
    model = model / MODEL_FILE if model.is_dir() else model
    name = name or model.parent.name
    package = package_root(model)
    if package is None:
        return PlanSelection(
            "missing",
            f"{model} is not in an engine package (no {INDEX_NAME} beside its folder), where plans are kept",
            "diffrt export CHECKPOINT PACKAGE",
        )
    build = f"diffrt engines build {package}"
    folder = plan_folder(package, compute_capability, trt_version)
    where = f"{ENGINES_DIR}/{folder.name}"
    if not folder.is_dir():
        others = sorted(p.name for p in (package / ENGINES_DIR).glob("*-trt*") if p.is_dir())
        held = f" (it has plans for {', '.join(others)} only)" if others else ""
        return PlanSelection("missing", f"the package has no {where} folder for this GPU and TensorRT{held}", build)
    plan_path, meta_path = plan_files(folder, name)
    if not meta_path.is_file() or not plan_path.is_file():
        return PlanSelection("missing", f"{where} has no {name}{PLAN_SUFFIX} with its {name}{METADATA_SUFFIX}", build)
    try:
        meta = read_metadata(meta_path)
    except PackageError as error:
        return PlanSelection("broken", str(error).rstrip("."), f"{build} --networks {name} --force")
    force = f"{build} --networks {name} --force"
    if meta.key != meta.expected_key() or meta.network != name:
        return PlanSelection("broken", f"{meta_path} does not match its own key (it was edited)", force, None, meta)
    if plan_path.stat().st_size != meta.plan_bytes:
        return PlanSelection(
            "broken",
            f"{plan_path} has {plan_path.stat().st_size} bytes, its metadata says {meta.plan_bytes}",
            force,
            None,
            meta,
        )
    if meta.tensorrt != str(trt_version):
        return PlanSelection(
            "incompatible", f"{plan_path} was built with TensorRT {meta.tensorrt}, this is {trt_version}", build
        )
    if tuple(meta.compute_capability) != tuple(compute_capability):
        return PlanSelection(
            "incompatible",
            f"{plan_path} was built for {gpu_tag(meta.compute_capability)}, this GPU is {gpu_tag(compute_capability)}",
            build,
        )
    if precision not in ("auto", meta.precision):
        return PlanSelection(
            "incompatible",
            f"{plan_path} computes in {meta.precision}, and precision={precision!r} was asked for",
            f"{build} --networks {name} --precision {precision}",
        )
    current = onnx_digest(model)
    if current != meta.onnx_sha256:
        remedy = f"diffrt engines refit {package}" if meta.refittable else build
        return PlanSelection(
            "stale",
            f"{name}/{MODEL_FILE} changed since {plan_path} was built (its weights or graph were rewritten, e.g. by "
            "`diffrt lora apply`)",
            remedy,
            None,
            meta,
        )
    return PlanSelection("current", "current", "", plan_path, meta)


@dataclass(frozen=True)
class PlanInfo:
    """One plan found in a package, for ``diffrt engines status``."""

    folder: str
    network: str
    state: str
    reason: str
    metadata: PlanMetadata | None


def inspect_plans(package: str | os.PathLike) -> list[PlanInfo]:
    """Every plan under ``<package>/engines``, each checked against the package's ONNX files as they are now
    (whatever GPU and TensorRT it was built for): ``current``, ``stale`` or ``broken``."""
    package = Path(package)
    found = []
    for folder in sorted(p for p in (package / ENGINES_DIR).glob("*-trt*") if p.is_dir()):
        for plan_path in sorted(folder.glob(f"*{PLAN_SUFFIX}")):
            name = plan_path.name[: -len(PLAN_SUFFIX)]
            meta_path = plan_files(folder, name)[1]
            if not meta_path.is_file():
                found.append(PlanInfo(folder.name, name, "broken", f"{meta_path.name} is missing", None))
                continue
            try:
                meta = read_metadata(meta_path)
            except PackageError as error:
                found.append(PlanInfo(folder.name, name, "broken", str(error).rstrip("."), None))
                continue
            if _model(package, name).is_file():
                selection = select_plan(_model(package, name), meta.tensorrt, meta.compute_capability, name=name)
            else:
                selection = PlanSelection("stale", f"the package has no {name}/{MODEL_FILE} any more", "")
            found.append(PlanInfo(folder.name, name, selection.state, selection.reason, meta))
    return found
