"""``diffrt quantize`` (and ``diffrt export --quantize int8``): an engine package's UNet made int8 for the CPU, with
calibration data drawn from the pipeline itself.

The float package runs its own text-to-image (or inpainting) pipeline over calibration prompts; every UNet input it
feeds is kept, and ONNX Runtime's static QDQ quantization (:mod:`diffrt.kernels.quantize`) sets the activation
ranges from them. The result is a new package (or the same one, replaced) whose quantized graphs take the place of
the float ones, everything else copied, and ``diffrt.json`` saying what was done (``quantization``). Torch-free.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..staging import staged_folder
from .engines.base import prepare_feeds
from .errors import ConfigError, PackageError
from .networks import unet_shallow_name
from .package import EnginePackage
from .schema import MODEL_FILE, PROVENANCE_NAME

logger = logging.getLogger("diffrt.quantize")

# Calibration prompts: varied subjects, styles and lengths, so the activation ranges cover more than one picture.
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red sports car parked on a wet street at night, neon lights",
    "portrait of an old fisherman, oil painting, dramatic light",
    "a bowl of fruit on a wooden table",
    "a mountain lake at sunrise, mist, wide angle landscape photo",
    "an isometric illustration of a tiny city, pastel colours",
    "a close-up of a cat's face",
    "text on a chalkboard in a classroom",
)
QUANTIZABLE = ("unet", "text_encoder", "text_encoder_2", "vae_decoder")
Progress = Callable[[str, str], None]


@dataclass(frozen=True)
class Calibration:
    """The pipeline calls whose inputs calibrate the graphs: one call per prompt (seeded ``seed + i``), the last
    prompt's call kept apart to check the quantized graph against the float one."""

    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    steps: int = 8
    size: tuple[int, int] | None = None  # (height, width); None: the model's default size
    guidance_scale: float = 7.5
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise ConfigError("calibration needs at least 2 prompts (the last one checks the result).")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"calibration steps={self.steps!r}; accepted: an int >= 1.")


def quantize_package(
    package: str | Path,
    out: str | Path,
    networks: Sequence[str] = ("unet",),
    calibration: Calibration | None = None,
    options: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write ``out``: the package ``package`` with ``networks`` quantized to int8 (see the module doc); ``out`` may
    be ``package`` itself, which is then replaced only once the new one is complete. Returns the ``quantization``
    record written to ``diffrt.json``."""
    from ..kernels.quantize import Int8Options, quantize_graph

    options = options or Int8Options()
    calibration = calibration or Calibration()
    progress = progress or (lambda name, message: logger.info("%s: %s", name, message))
    source, out = Path(package), Path(out)
    targets = _targets(EnginePackage(source, provider="cpu"), networks)
    start = time.perf_counter()
    # The float sessions that ran the calibration calls are gone before quantizing starts (at SD 1.5 size, holding
    # them beside ONNX Runtime's calibration session doubled the peak).
    samples = collect_feeds(EnginePackage(source, provider="cpu"), targets, calibration, progress)
    gc.collect()
    record: dict[str, Any] = {
        "method": "int8 static QDQ (onnxruntime.quantization)",
        "calibration": {**asdict(calibration), "prompts": list(calibration.prompts)},
        "networks": {},
    }
    with staged_folder(out) as staging:
        _copy_package(source, staging, skip=targets)
        for name in targets:
            calib, check = samples[name]
            progress(name, f"quantizing ({len(calib)} calibration samples)")
            (staging / name).mkdir(exist_ok=True)
            for path in (source / name).iterdir():  # config.json and the like; not the float graph
                if path.is_file() and not path.name.startswith(MODEL_FILE):
                    shutil.copy2(path, staging / name / path.name)
            report = quantize_graph(source / name / MODEL_FILE, staging / name / MODEL_FILE, calib, options, check)
            record["networks"][name] = json.loads(json.dumps(report.to_json()))  # as diffrt.json holds it
            progress(name, f"{report.quantized_nodes} nodes int8, error {report.max_rel_error:.2%} of range")
        record["seconds"] = round(time.perf_counter() - start, 1)
        _record(staging, record)
    return record


def _targets(package: EnginePackage, networks: Sequence[str]) -> list[str]:
    path = str(package.path)
    if package.provenance.get("quantization"):
        raise PackageError(f"engine package {path!r} is already quantized; quantize its float package instead.")
    if package.pipeline_class.startswith("CogVideoX") or not package.has("unet"):
        raise PackageError(
            f"engine package {path!r} ({package.pipeline_class or 'unknown'}) has no UNet; int8 quantization "
            "covers Stable Diffusion 1.x/2.x/XL packages."
        )
    if package.adapters is not None:
        raise PackageError(
            f"engine package {path!r} has LoRA slots; quantize a package exported without --lora-slots (fuse "
            "LoRAs at export with --lora), since the slots' float weights would no longer match int8 base weights."
        )
    unknown = [n for n in networks if n not in QUANTIZABLE]
    missing = [n for n in networks if n in QUANTIZABLE and not package.has(n)]
    if unknown or missing or not networks:
        raise ConfigError(
            f"networks {list(networks)}: {'unknown ' + str(unknown) if unknown else ''}"
            f"{' missing from the package ' + str(missing) if missing else ''}; accepted: a non-empty list of "
            f"{', '.join(n for n in QUANTIZABLE if package.has(n))}."
        )
    targets = list(dict.fromkeys(networks))
    if "unet" in targets:  # DeepCache's shallow UNets run in the same loop: quantized with it
        targets += [unet_shallow_name(b) for b in package.deepcache_branches]
    return targets


def collect_feeds(
    package: EnginePackage, targets: list[str], calibration: Calibration, progress: Progress
) -> dict[str, tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]]:
    """Run the package's pipeline over the calibration prompts and keep every input each target graph was fed:
    {network: (calibration samples, check samples)}."""
    pipe, extra = _calibration_pipeline(package)
    recorded: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in targets}
    engines = {name: package.engine(name) for name in targets}
    originals = {name: engine.run for name, engine in engines.items()}

    def recorder(name: str) -> Callable[..., dict[str, np.ndarray]]:
        def run(feeds: dict[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
            # As the graph takes them (declared dtypes): ONNX Runtime's calibrator feeds a bare session.
            prepared = prepare_feeds(name, engines[name].inputs, feeds)
            recorded[name].append({key: np.array(value, copy=True) for key, value in prepared.items()})
            return originals[name](feeds, output_names)

        return run

    branches = package.deepcache_branches if any(n.startswith("unet_shallow") for n in targets) else ()
    if branches and (len(calibration.prompts) - 1 < len(branches) or calibration.steps < 2):
        raise ConfigError(
            f"this package has DeepCache shallow UNets for branches {list(branches)}, which calibration runs in turn "
            f"(one branch a call, the last call held out): accepted: at least {len(branches) + 1} calibration prompts "
            "(--calibration-prompts) and --calibration-steps 2 or more."
        )
    result = {}
    try:
        for name, engine in engines.items():
            engine.run = recorder(name)  # type: ignore[method-assign]
        marks = []
        for i, prompt in enumerate(calibration.prompts):
            progress("calibration", f"call {i + 1} of {len(calibration.prompts)}: {prompt!r}")
            marks.append({name: len(found) for name, found in recorded.items()})
            cache = {"cache_interval": 2, "cache_branch": branches[i % len(branches)]} if branches else {}
            height, width = calibration.size or pipe.default_size()
            pipe(
                prompt,
                num_inference_steps=calibration.steps,
                guidance_scale=calibration.guidance_scale,
                height=height,
                width=width,
                generator=np.random.default_rng(calibration.seed + i),
                output_type="latent" if "vae_decoder" not in targets else "np",
                **extra(height, width),
                **cache,
            )
        for name, found in recorded.items():
            # The last call's inputs check the result; a shallow UNet that call did not run (the branches take
            # turns) is checked on its own last calibration input, held out.
            split = marks[-1][name] if marks[-1][name] < len(found) else len(found) - 1
            result[name] = (found[:split], found[split:])
            if not found[:split]:
                raise PackageError(f"calibration never ran {name}; it cannot be quantized from these calls.")
    finally:
        for engine in engines.values():
            engine.__dict__.pop("run", None)
    return result


def _calibration_pipeline(package: EnginePackage):
    """The pipeline that drives the package's UNet and the extra arguments of each call (image and mask for an
    inpainting UNet)."""
    from .pipelines.auto import AutoPipelineForInpainting, AutoPipelineForText2Image

    channels = package.unet_config.in_channels
    if package.index.requires_aesthetics_score:
        raise PackageError(
            f"engine package {str(package.path)!r} is an SDXL refiner (its UNet takes an aesthetic score); int8 "
            "calibration drives text-to-image and inpainting UNets; accepted: an SDXL base or inpainting package."
        )
    if channels == 4:
        return AutoPipelineForText2Image.pipeline_class(package.pipeline_class)(package), lambda h, w: {}
    if channels == 9:

        def inpaint(height: int, width: int) -> dict[str, Any]:
            import PIL.Image

            pixels = np.random.default_rng(1234).integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = PIL.Image.fromarray(pixels)
            hole = np.zeros((height, width), np.uint8)
            hole[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
            mask = PIL.Image.fromarray(hole)
            return {"image": image, "mask_image": mask}

        return AutoPipelineForInpainting.pipeline_class(package.pipeline_class)(package), inpaint
    raise PackageError(
        f"engine package {str(package.path)!r}: its UNet takes {channels} channels; int8 calibration drives "
        "text-to-image (4) and inpainting (9) UNets."
    )


def _copy_package(source: Path, staging: Path, skip: list[str]) -> None:
    """Everything of ``source`` except the graphs being replaced and built TensorRT plans (made for the float
    graphs)."""
    for path in sorted(source.iterdir()):
        if path.name in skip or path.name == "engines":
            continue
        if path.is_dir():
            shutil.copytree(path, staging / path.name)
        else:
            shutil.copy2(path, staging / path.name)


def _record(staging: Path, record: dict[str, Any]) -> None:
    path = staging / PROVENANCE_NAME
    provenance = json.loads(path.read_text()) if path.is_file() else {}
    provenance["quantization"] = record
    path.write_text(json.dumps(provenance, indent=2) + "\n")


# ----- the command line -----------------------------------------------------------------------------------------
def add_arguments(p: Any, export: bool = False) -> None:
    """``diffrt quantize PACKAGE OUT`` options; with ``export``, only the calibration options that
    ``diffrt export --quantize int8`` adds."""
    if not export:
        p.add_argument("package", help="an engine package written by `diffrt export` (float)")
        p.add_argument("out", help="the int8 package to write (PACKAGE itself to replace it)")
        p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--quantize-networks",
        default="unet",
        metavar="LIST",
        help=f"comma-separated graphs to quantize (default unet; accepted: {', '.join(QUANTIZABLE)})",
    )
    p.add_argument(
        "--calibration-prompts", metavar="FILE", help="calibration prompts, one per line (default: 8 built in)"
    )
    p.add_argument(
        "--calibration-steps", type=int, default=8, metavar="N", help="steps per calibration call (default 8)"
    )
    p.add_argument(
        "--calibration-size", metavar="HxW", help="image size of the calibration calls (default: the model's size)"
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="then build this machine's optimized graphs into the graph cache, so the first start loads from it",
    )
    p.add_argument(
        "--keep-fp32",
        action="append",
        metavar="PATTERN",
        help="node-name pattern (fnmatch) kept in float, repeatable (default: conv_shortcut, conv_in, conv_out)",
    )


def calibration_from_args(args: Any) -> Calibration:
    prompts = DEFAULT_PROMPTS
    if args.calibration_prompts:
        try:
            lines = Path(args.calibration_prompts).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"--calibration-prompts {args.calibration_prompts!r} is not readable text ({error})."
            ) from None
        prompts = tuple(line.strip() for line in lines if line.strip())
    size = None
    if args.calibration_size:
        try:
            height, width = (int(v) for v in args.calibration_size.lower().split("x"))
        except ValueError:
            raise ConfigError(
                f"--calibration-size {args.calibration_size!r}; accepted: HxW in pixels, e.g. 512x512."
            ) from None
        size = (height, width)
    return Calibration(prompts=prompts, steps=args.calibration_steps, size=size)


def run_from_args(args: Any, package: str, out: str) -> int:
    from ..kernels.quantize import KEEP_FP32, Int8Options

    def progress(name: str, message: str) -> None:
        print(f"  {name:<16} {message}", flush=True)

    options = Int8Options(keep_fp32=tuple(args.keep_fp32) if args.keep_fp32 else KEEP_FP32)
    networks = [n.strip() for n in args.quantize_networks.split(",") if n.strip()]
    record = quantize_package(package, out, networks, calibration_from_args(args), options, progress)
    print(f"wrote {out}: {', '.join(record['networks'])} int8 in {record['seconds']} s")
    if getattr(args, "warm_cache", False):
        seconds = warm_graph_cache(out)
        print(f"graph cache filled for this machine in {seconds:.1f} s: the first start loads from it")
    return 0


def warm_graph_cache(package: str | Path) -> float:
    """Build every graph's ONNX Runtime CPU session of ``package`` once, so that the optimized graphs (with their
    prepacked weights) are in the graph cache (``$DIFFRT_CACHE`` or ~/.cache/diffrt/ort) before the first start:
    what ``make engines`` does after exporting. Seconds taken."""
    from .schema import NETWORKS

    start = time.perf_counter()
    opened = EnginePackage(package, provider="cpu")
    names = [*NETWORKS, *(unet_shallow_name(b) for b in opened.deepcache_branches)]
    for name in names:
        if opened.has(name):
            opened.engine(name)
    del opened
    gc.collect()
    return time.perf_counter() - start


def check_out(package: str | Path, out: str | Path, force: bool) -> None:
    """Refuse an ``out`` that would lose data: an existing folder without ``--force``, anything but an engine package
    even with it, a link, or a folder holding the source package."""
    source, target = Path(package).resolve(), Path(out)
    if target.is_symlink():
        raise PackageError(f"{str(target)!r} is a symbolic link; accepted: a real folder path for the package.")
    if target.resolve() in source.parents:
        raise PackageError(f"{str(target)!r} holds the package {str(package)!r}; accepted: a folder outside it.")
    if target.exists() and target.resolve() != source:
        if not force:
            raise PackageError(f"{str(target)!r} exists; pass --force to replace it, or name another folder.")
        if not (target / "model_index.json").is_file():
            raise PackageError(
                f"{str(target)!r} exists and is not an engine package (no model_index.json); --force replaces "
                "packages only: name another folder."
            )


def run(args: Any) -> int:
    """``diffrt quantize``."""
    check_out(args.package, args.out, args.force)
    return run_from_args(args, args.package, args.out)
