"""``diffrt engines``: build, inspect and refit the TensorRT plans of an engine package.

- ``build PACKAGE``: one plan per network for this GPU and TensorRT, under ``engines/<gpu>-trt<version>/``;
  plans whose key is current are kept unless ``--force``.
- ``status PACKAGE``: what this machine lacks for TensorRT, and every plan of the package, current or stale
  (works without TensorRT and without a GPU).
- ``refit PACKAGE``: after ``diffrt lora apply`` rewrote the weights, give refittable plans the new weights.

``build`` and ``refit`` need TensorRT and an NVIDIA GPU; without them they stop before writing anything, with the
reason (BackendUnavailable, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ...units import human_bytes
from ..errors import BackendUnavailable, ConfigError, DiffrtError, PackageError
from ..schema import INDEX_NAME, MODEL_FILE
from . import cuda, trt_plans
from .choice import trt_backend


def parse_range(text: str) -> tuple[int, int, int]:
    """``"1,2,4"`` -> (1, 2, 4); one value stands for all three (a fixed size)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a range; write MIN,OPT,MAX (e.g. 256,512,768) or one size")
    return values  # type: ignore[return-value]


def parse_networks(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="engines_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build TensorRT plans for this GPU", description="build TensorRT plans")
    build.add_argument("package", type=Path, help="an engine package folder (from `diffrt export`)")
    _networks_argument(build)
    for name, example in (("batch", "1,1,4"), ("height", "256,512,768"), ("width", "256,512,768")):
        build.add_argument(
            f"--{name}",
            type=parse_range,
            metavar="MIN,OPT,MAX",
            help=f"{name} range the plans take (e.g. {example}; default: the package's shape range)",
        )
    build.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp16", "bf16", "fp32"),
        help="what the plans compute in (default auto: fp16 where the GPU has it)",
    )
    build.add_argument("--refittable", action="store_true", help="allow new weights later (`diffrt engines refit`)")
    build.add_argument("--workspace-gb", type=float, metavar="N", help="most GPU memory TensorRT may use for tactics")
    build.add_argument("--force", action="store_true", help="rebuild plans that are current")
    _device_argument(build)

    status = sub.add_parser("status", help="list plans and what this machine lacks", description="list plans")
    status.add_argument("package", type=Path, help="an engine package folder")
    status.add_argument("--json", action="store_true", help="print JSON")
    _device_argument(status)

    refit = sub.add_parser("refit", help="give refittable plans rewritten weights", description="refit plans")
    refit.add_argument("package", type=Path, help="an engine package folder whose weights were rewritten")
    _networks_argument(refit)
    _device_argument(refit)


def _networks_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--networks",
        type=parse_networks,
        metavar="NAMES",
        help="comma-separated networks (default: all the package has), e.g. unet,text_encoder",
    )


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=int, default=0, metavar="N", help="CUDA device index (default 0)")


def run(args: argparse.Namespace) -> int:
    action = {"build": _build, "status": _status, "refit": _refit}[args.engines_command]
    return action(args)


# ----- shared -----------------------------------------------------------------------------------------------------
def _package(path: Path) -> Path:
    if not (path / INDEX_NAME).is_file():
        what = "does not exist" if not path.exists() else f"has no {INDEX_NAME}"
        raise PackageError(
            f"engine package {str(path)!r} {what}; give a folder written by `diffrt export` (or Optimum's exporter)."
        )
    return path


def _networks(package: Path, requested: list[str] | None) -> list[str]:
    present = trt_plans.package_networks(package)
    if not present:
        raise PackageError(f"engine package {str(package)!r} holds no network graphs (no */model.onnx).")
    if not requested:
        return present
    unknown = [n for n in requested if n not in present]
    if unknown:
        raise ConfigError(
            f"--networks {','.join(requested)}: the package has no {', '.join(unknown)}; it holds {', '.join(present)}."
        )
    return list(dict.fromkeys(requested))


def _say(text: str) -> None:
    print(text, flush=True)


# ----- build ------------------------------------------------------------------------------------------------------
def _build(args: argparse.Namespace) -> int:
    package = _package(args.package)
    names = _networks(package, args.networks)
    shape_range = trt_plans.shape_range_for(package, args.batch, args.height, args.width)
    if args.workspace_gb is not None and args.workspace_gb <= 0:
        raise ConfigError(f"--workspace-gb {args.workspace_gb} is not accepted; give a positive number of GB.")
    # Shape contracts first: a package that cannot be built is refused before TensorRT or the GPU are touched.
    profiles = {name: trt_plans.build_profile(trt_plans.network_for(package, name), shape_range) for name in names}
    backend = trt_backend()
    device = backend.require_device(args.device)
    precision = backend.resolve_precision(args.precision, device)
    folder = trt_plans.plan_folder(package, device.compute_capability, backend.TRT_VERSION)
    workspace = None if args.workspace_gb is None else int(args.workspace_gb * (1 << 30))
    _say(f"TensorRT {backend.TRT_VERSION} on {device}: {precision} plans in {folder}")
    for name in names:
        model = package / name / MODEL_FILE
        key = trt_plans.cache_key(
            trt_plans.onnx_digest(model),
            backend.TRT_VERSION,
            device.compute_capability,
            profiles[name],
            precision,
            args.refittable,
        )
        plan_path, meta_path = trt_plans.plan_files(folder, name)
        if not args.force and _is_current(plan_path, meta_path, key):
            _say(f"{name}: current, kept ({plan_path.name}; --force rebuilds it)")
            continue
        shapes = ", ".join(f"{i} {tuple(lo)}..{tuple(hi)}" for i, (lo, _, hi) in profiles[name].items())
        _say(f"{name}: building ({shapes})")
        start = time.perf_counter()
        metadata = backend.build_plan(
            model,
            name,
            profiles[name],
            device,
            precision,
            refittable=args.refittable,
            workspace_bytes=workspace,
            shape_range=shape_range.to_json(),
        )
        _say(f"{name}: built in {time.perf_counter() - start:.1f} s, {human_bytes(metadata.plan_bytes)} -> {plan_path}")
    return 0


def _is_current(plan_path: Path, meta_path: Path, key: str) -> bool:
    if not (plan_path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = trt_plans.read_metadata(meta_path)
    except PackageError:
        return False
    return meta.key == key == meta.expected_key() and plan_path.stat().st_size == meta.plan_bytes


# ----- status -----------------------------------------------------------------------------------------------------
def _status(args: argparse.Namespace) -> int:
    package = _package(args.package)
    report: dict[str, Any] = {"package": str(package), "tensorrt": None, "gpu": None, "folder": None}
    problems: list[str] = []
    version = None
    try:
        version = trt_backend().TRT_VERSION
        report["tensorrt"] = version
    except BackendUnavailable as error:
        problems.append(str(error))
    device = None
    usable, reason = cuda.driver_status()
    if usable:
        try:
            device = cuda.device(args.device)
        except (BackendUnavailable, cuda.CudaError) as error:
            problems.append(str(error))
    else:
        problems.append(f"No usable GPU: {reason}.")
    if device is not None:
        report["gpu"] = {
            "index": device.index,
            "name": device.name,
            "compute_capability": list(device.compute_capability),
            "memory_bytes": device.total_memory,
        }
    report["problems"] = problems
    networks: dict[str, dict[str, str]] = {}
    if version is not None and device is not None:
        report["folder"] = str(trt_plans.plan_folder(package, device.compute_capability, version))
        for name in trt_plans.package_networks(package):
            model = package / name / MODEL_FILE
            selection = trt_plans.select_plan(model, version, device.compute_capability, name=name)
            networks[name] = {"state": selection.state, "reason": selection.reason, "remedy": selection.remedy}
    report["networks"] = networks
    report["plans"] = [_plan_json(info) for info in trt_plans.inspect_plans(package)]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 0


def _plan_json(info) -> dict[str, Any]:
    data: dict[str, Any] = {"folder": info.folder, "network": info.network, "state": info.state, "reason": info.reason}
    meta = info.metadata
    if meta is not None:
        data.update(
            precision=meta.precision,
            refittable=meta.refittable,
            tensorrt=meta.tensorrt,
            compute_capability=list(meta.compute_capability),
            gpu=meta.gpu,
            plan_bytes=meta.plan_bytes,
            profile={name: [list(s) for s in shapes] for name, shapes in meta.profile.items()},
            created=meta.created,
        )
    return data


def _print_status(report: dict[str, Any]) -> None:
    print(f"package: {report['package']}")
    print(f"TensorRT: {report['tensorrt'] or 'not available'}")
    gpu = report["gpu"]
    if gpu:
        major, minor = gpu["compute_capability"]
        print(f"GPU: {gpu['name']} (device {gpu['index']}, sm{major}{minor}, {human_bytes(gpu['memory_bytes'])})")
    else:
        print("GPU: none")
    for problem in report["problems"]:
        print(f"  - {problem}")
    if report["folder"]:
        print(f"plans for this machine: {report['folder']}")
        for name, state in report["networks"].items():
            detail = "" if state["state"] == "current" else f": {state['reason']}; run `{state['remedy']}`"
            print(f"  {name}: {state['state']}{detail}")
    else:
        print("plans for this machine: unknown without TensorRT and a GPU; builds need both")
    plans = report["plans"]
    print(f"plans in the package: {len(plans) or 'none'}")
    for plan in plans:
        what = [plan["folder"]]
        if "precision" in plan:
            what += [
                plan["precision"],
                "refittable" if plan["refittable"] else "fixed weights",
                human_bytes(plan["plan_bytes"]),
            ]
        detail = "" if plan["state"] == "current" else f" ({plan['reason']})"
        print(f"  {plan['network']}: {plan['state']}{detail} [{', '.join(what)}]")


# ----- refit ------------------------------------------------------------------------------------------------------
def _refit(args: argparse.Namespace) -> int:
    package = _package(args.package)
    names = _networks(package, args.networks)
    backend = trt_backend()
    device = backend.require_device(args.device)
    folder = trt_plans.plan_folder(package, device.compute_capability, backend.TRT_VERSION)
    with_plans = [name for name in names if trt_plans.plan_files(folder, name)[0].is_file()]
    if not with_plans:
        raise PackageError(
            f"{folder} holds no plans of {', '.join(names)} to refit; build them with "
            f"`diffrt engines build {package} --refittable`."
        )
    failures = []
    for name in with_plans:
        model = package / name / MODEL_FILE
        selection = trt_plans.select_plan(model, backend.TRT_VERSION, device.compute_capability, name=name)
        if selection.ok:
            _say(f"{name}: current, nothing to refit")
            continue
        if selection.state != "stale" or selection.metadata is None or not selection.metadata.refittable:
            why = selection.reason if selection.state != "stale" else "it was built without --refittable"
            failures.append(f"{name}: cannot refit: {why}; run `diffrt engines build {package} --networks {name}`")
            continue
        start = time.perf_counter()
        try:
            backend.refit_plan(trt_plans.plan_files(folder, name)[0], model, device)
        except DiffrtError as error:
            failures.append(f"{name}: {error}")
            continue
        _say(f"{name}: refitted in {time.perf_counter() - start:.1f} s")
    for failure in failures:
        print(f"diffrt engines refit: {failure}", file=sys.stderr)
    return 1 if failures else 0
