"""Text-to-image latency side by side: diffrt on ONNX Runtime's CPU provider, diffusers on torch, and OpenVINO.

One model, the SD 1.5 architecture with deterministic random weights (``sd15.py``: the real configs, no download),
built once as a diffusers folder and exported once with ``diffrt export``; both are cached under build/bench/.
Each backend x size runs in a fresh process, so its cold start and peak RSS are its own:

- ``diffrt_ort_cpu``: ``diffrt.runtime.StableDiffusionPipeline.from_pretrained(package, provider="cpu")``; a
  first start with an empty graph cache, then a restart that finds it (to the first image);
- ``diffusers_torch``: ``diffusers.StableDiffusionPipeline`` in fp32 on the source folder (same weights),
  ``torch.set_num_threads`` = usable cores;
- ``openvino_cpu``: the same exported ONNX graphs compiled by OpenVINO's CPU plugin (f32), driven by diffrt's NumPy
  pipeline; recorded as skipped, with the reason, when openvino does not import or run.

Every call: the same prompt, classifier-free guidance 7.5, DPM-Solver++ (multistep, built from the folder's
scheduler config on both sides), the same initial latents (seeded NumPy noise handed to both), PIL output.
Measured per backend and size: cold start (process start -> first image, split into load and first call), then
over the warm calls: text encoder, UNet per step (median, min/max, IQR), scheduler + glue per step (everything in
the denoising loop that is not the UNet), VAE decode, end-to-end, and the child's peak RSS (ru_maxrss). diffrt's
stages are timed by wrapping its engines' ``run``; diffusers' by forward hooks and a wrapper on ``vae.decode``.

    python benchmarks/bench_pipeline.py --quick    # 256x256, 8 steps (what `make bench QUICK=1` runs)
    python benchmarks/bench_pipeline.py            # 256x256 and 512x512, 20 steps (`make bench`)
    python benchmarks/bench_pipeline.py --tiny --work /tmp/b --out /tmp/b/latest.json --history ""   # tiny model

Writes benchmarks/results/latest.json, prints a markdown table and puts a dated section at the top of the history
in benchmarks/RESULTS.md. Ratios are peer / diffrt: above 1, diffrt is faster (or smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
REFERENCE = "diffrt_ort_cpu"
BACKENDS = {
    REFERENCE: "diffrt, ONNX Runtime CPU provider (exact fp32)",
    "diffrt_int8": "diffrt, UNet int8 (`diffrt quantize`), ONNX Runtime CPU",
    "diffrt_cached": "diffrt fp32 with DeepCache feature caching (`--deepcache`, cache_interval/cache_branch)",
    "diffrt_int8_cached": "diffrt, UNet int8 + DeepCache feature caching",
    "diffrt_int8_cached_tinyvae": "diffrt, UNet int8 + DeepCache + the tiny VAE (TAESD-shaped) as decoder",
    "diffusers_torch": "diffusers on torch, fp32",
    "openvino_cpu": "OpenVINO CPU plugin (f32) on diffrt's ONNX graphs, diffrt's NumPy pipeline",
}
# diffrt's fast modes: which package each runs (prepare_fast) and what each call adds.
CACHE = {"cache_interval": 3, "cache_branch": 0}
FAST = {
    "diffrt_int8": ("int8", {}),
    "diffrt_cached": ("deepcache", CACHE),
    "diffrt_int8_cached": ("int8", CACHE),
    "diffrt_int8_cached_tinyvae": ("int8-tinyvae", CACHE),
}
PEERS = ["diffusers_torch", "openvino_cpu"]
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
SEED = 0
# (sizes, steps, warm calls): the full run, `--quick` and `--tiny`.
# quick: 8 steps keep the VAE decode (the same cost on every backend) from swamping a 4-step call.
MODES = {"full": ([256, 512], 20, 2), "quick": ([256], 8, 2), "tiny": ([64], 2, 1)}
HEADLINE_SIZE = 256
HISTORY_MARK = "<!-- runs below, newest first; bench_pipeline.py inserts each new run here -->"


# ======================================================================================================== child ====
class StageClock:
    """(stage, start, end) in perf_counter seconds for every network call of the call being measured."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []
        self.imported = 0.0  # time.time() once the backend's libraries are imported

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.events.append((stage, start, time.perf_counter()))

        return timed

    def hook(self, stage: str, module: Any) -> None:
        """Time a torch module's forward with hooks (diffusers calls the module, not our wrapper)."""
        starts: list[float] = []
        module.register_forward_pre_hook(lambda _m, _a: starts.append(time.perf_counter()))
        module.register_forward_hook(lambda _m, _a, _o: self.events.append((stage, starts.pop(), time.perf_counter())))

    def stages(self, start: float, end: float) -> dict[str, Any]:
        """One call's stages; the denoising loop is the window between the last text encoder call and the VAE."""
        text = [e for e in self.events if e[0] == "text_encoder"]
        unet = [e[2] - e[1] for e in self.events if e[0] == "unet"]
        vae = [e for e in self.events if e[0] == "vae_decode"]
        if not (text and unet and len(vae) == 1):
            raise RuntimeError(f"unexpected network calls: {[e[0] for e in self.events]}")
        loop = vae[0][1] - text[-1][2]
        text_s, vae_s = sum(e[2] - e[1] for e in text), vae[0][2] - vae[0][1]
        return {
            "end_to_end_s": end - start,
            "text_encoder_s": text_s,
            "unet_steps_s": unet,
            "glue_per_step_s": (loop - sum(unet)) / len(unet),
            "vae_decode_s": vae_s,
            # Tokenizing, argument checks, converting to PIL: what lies outside the networks and the loop.
            "other_s": (end - start) - text_s - loop - vae_s,
        }


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OpenVinoEngine:
    """One ONNX graph compiled by OpenVINO's CPU plugin, behind diffrt's Engine protocol (NumPy in, NumPy out)."""

    def __init__(self, path: Path, name: str) -> None:
        import openvino as ov

        from diffrt.runtime.engines import TensorInfo

        config = {
            "INFERENCE_NUM_THREADS": usable_cores(),
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.name, self.provider = name, "OpenVINO CPU"
        self.compiled = ov.Core().compile_model(str(path / "model.onnx"), "CPU", config)

        import onnx

        graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
        declared = {v.name for v in (*graph.input, *graph.output)}

        def port_name(port: Any) -> str:
            # A port may carry several tensor names (OpenVINO merges an input with the Reshape it feeds); the
            # graph's own input / output name is the one feeds use.
            return next((n for n in sorted(port.get_names()) if n in declared), port.get_any_name())

        def info(port: Any) -> TensorInfo:
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            return TensorInfo(port_name(port), np.dtype(port.get_element_type().to_dtype()), shape)

        self.inputs = {port_name(p): info(p) for p in self.compiled.inputs}
        self.outputs = {port_name(p): info(p) for p in self.compiled.outputs}

    def run(self, feeds: dict[str, np.ndarray], output_names: Any = None) -> dict[str, np.ndarray]:
        names = list(self.outputs) if output_names is None else list(output_names)
        results = self.compiled({k: np.asarray(feeds[k], dtype=v.dtype) for k, v in self.inputs.items()})
        return {name: np.asarray(results[name], dtype=np.float32) for name in names}


def load_diffrt(
    backend: str, package: Path, steps: int, clock: StageClock, extra: dict[str, Any]
) -> tuple[Callable[[np.ndarray], Any], int]:
    """(generate(latents) -> first image, the VAE scale factor) for diffrt's pipeline on ORT or OpenVINO."""
    from diffrt.runtime import StableDiffusionPipeline
    from diffrt.runtime.package import EnginePackage
    from diffrt.runtime.schedulers import DPMSolverMultistepScheduler

    # Imported here, before the clock mark, so that the import counts as such and not as building the pipeline.
    if backend == "openvino_cpu":
        import openvino  # noqa: F401
    else:
        import onnxruntime  # noqa: F401
    clock.imported = time.time()
    if backend == "openvino_cpu":

        class OpenVinoPackage(EnginePackage):
            def engine(self, network: str) -> OpenVinoEngine:
                return OpenVinoEngine(self.path / network, network)

        pipe = StableDiffusionPipeline(OpenVinoPackage(package))
    else:
        pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for attribute, stage in (("text_encoder", "text_encoder"), ("unet", "unet"), ("vae_decoder", "vae_decode")):
        engine = getattr(pipe, attribute)
        engine.run = clock.wrap(stage, engine.run)

    def generate(latents: np.ndarray) -> Any:
        size = latents.shape[-1] * pipe.vae_scale_factor
        call = {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "output_type": "pil", **extra}
        return pipe(PROMPT, height=size, width=size, latents=latents, **call).images[0]

    return generate, pipe.vae_scale_factor


def load_diffusers(source: Path, steps: int, clock: StageClock) -> tuple[Callable[[np.ndarray], Any], int]:
    """(generate(latents) -> first image, the VAE scale factor) for diffusers' pipeline on torch."""
    import diffusers
    import torch

    clock.imported = time.time()
    torch.set_num_threads(usable_cores())
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        source, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    clock.hook("text_encoder", pipe.text_encoder)
    clock.hook("unet", pipe.unet)
    pipe.vae.decode = clock.wrap("vae_decode", pipe.vae.decode)  # decode is a method, not the module's forward

    def generate(latents: np.ndarray) -> Any:
        size = latents.shape[-1] * pipe.vae_scale_factor
        call = {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "output_type": "pil"}
        with torch.inference_mode():
            return pipe(PROMPT, height=size, width=size, latents=torch.from_numpy(latents), **call).images[0]

    return generate, pipe.vae_scale_factor


def child(args: argparse.Namespace) -> None:
    """Load one backend, make the first image, then the warm calls; write the measurements to ``args.result``."""
    entered = time.time()
    clock = StageClock()
    if args.child == "diffusers_torch":
        generate, factor = load_diffusers(args.model, args.steps, clock)
    else:
        generate, factor = load_diffrt(args.child, args.model, args.steps, clock, json.loads(args.call or "{}"))
    loaded = time.time()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    side = args.size // factor
    latents = np.random.default_rng(SEED).standard_normal((1, 4, side, side), dtype=np.float32)
    image = generate(latents)
    first_image = time.time()
    np.save(args.image, np.asarray(image))
    calls = []
    for _ in range(args.warm):
        clock.events.clear()
        start = time.perf_counter()
        generate(latents)
        calls.append(clock.stages(start, time.perf_counter()))
    result = {
        "interpreter_start_s": entered - args.t0,
        "imports_s": clock.imported - entered,
        "build_pipeline_s": loaded - clock.imported,
        "load_s": loaded - args.t0,
        "first_call_s": first_image - loaded,
        "cold_start_s": first_image - args.t0,
        "peak_rss_after_load_gb": rss_after_load / 2**20,  # ru_maxrss is in KiB on Linux
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "calls": calls,
    }
    Path(args.result).write_text(json.dumps(result) + "\n")


# ======================================================================================================= parent ====
def run(command: list[str], what: str) -> float:
    """Run a preparation step, its output passed through; seconds taken."""
    print(f"[bench] {what}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path | None, Path, dict[str, Any]]:
    """(source folder, engine package, what preparing took): built and exported only when not there yet."""
    notes: dict[str, Any] = {}
    source = Path(args.source) if args.source else None
    if source is None and not args.package:
        source = work / ("tiny-source" if args.tiny else "sd15-source")
        if not (source / "model_index.json").is_file():
            builder = ["-m", "diffrt.export.tiny"] if args.tiny else [str(BENCH / "sd15.py")]
            notes["build_source_s"] = round(run([sys.executable, *builder, str(source)], "building the model"), 1)
    package = Path(args.package) if args.package else work / ("tiny-package" if args.tiny else "sd15-package")
    if not (package / "model_index.json").is_file():
        if source is None:
            raise SystemExit(f"{package} is not an engine package and no --source was given to export one.")
        export = [sys.executable, "-m", "diffrt", "export", str(source), str(package), "--force"]
        notes["export_s"] = round(run(export, "exporting with diffrt export"), 1)
    return source, package, notes


def prepare_fast(
    source: Path | None, package: Path, backends: list[str], notes: dict[str, Any], tiny: bool = False
) -> dict[str, Path]:
    """The packages of the fast modes in ``backends``, each made once beside ``package``: exported with
    ``--deepcache`` and a tiny preview VAE, that quantized with ``diffrt quantize`` (int8), and a view of the int8
    package whose decoder is the tiny VAE (its other folders linked)."""
    packages = {"plain": package}
    wanted = {FAST[b][0] for b in backends if b in FAST}
    if not wanted:
        return packages
    if source is None:  # their rows are recorded as skipped
        return packages
    sys.path.insert(0, str(BENCH))
    from sd15 import build_tiny_vae

    tiny_vae = build_tiny_vae(source, package.parent / f"{source.name}-tiny-vae")
    packages["deepcache"] = deep = package.parent / f"{package.name}-deepcache"
    if not (deep / "model_index.json").is_file():
        command = [sys.executable, "-m", "diffrt", "export", str(source), str(deep), "--force", "--deepcache"]
        command += ["--preview-vae", str(tiny_vae)]
        notes["export_deepcache_s"] = round(run(command, "exporting with --deepcache"), 1)
    if wanted & {"int8", "int8-tinyvae"}:
        packages["int8"] = int8 = package.parent / f"{package.name}-int8"
        if not (int8 / "model_index.json").is_file():
            # Calibrated at 256x256 (8 prompts x 8 steps): ONNX Runtime's calibration session at 512x512 beside
            # the SD 1.5 UNet came near this 24 GB machine's memory; QUALITY.md gives the PSNR at both sizes.
            command = [sys.executable, "-m", "diffrt", "quantize", str(deep), str(int8), "--force"]
            command += [] if tiny else ["--calibration-size", "256x256"]
            notes["quantize_s"] = round(run(command, "quantizing with diffrt quantize"), 1)
    if "int8-tinyvae" in wanted:
        packages["int8-tinyvae"] = view = package.parent / f"{package.name}-int8-tinyvae"
        if not (view / "model_index.json").is_file():
            staging = view.with_name(view.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(view, ignore_errors=True)
            staging.mkdir(parents=True)
            for entry in packages["int8"].iterdir():
                if entry.name not in ("vae_decoder", "vae_encoder", "vae_decoder_preview"):
                    (staging / entry.name).symlink_to(entry.resolve())
            (staging / "vae_decoder").symlink_to((packages["int8"] / "vae_decoder_preview").resolve())
            staging.rename(view)
    return packages


def warm_page_cache(folder: Path) -> None:
    """Read every file once, so that each backend's cold start finds its weights in the page cache alike."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass


def spawn(backend: str, model: Path, size: int, steps: int, warm: int, work: Path, tag: str = "") -> dict[str, Any]:
    """Run one child process; its measurements, or RuntimeError with the end of its stderr."""
    result, image = work / f"{backend}-{size}{tag}.json", work / "images" / f"{backend}-{size}{tag}.npy"
    image.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--model", str(model)]
    command += ["--size", str(size), "--steps", str(steps), "--warm", str(warm), "--result", str(result)]
    command += ["--call", json.dumps(FAST.get(backend, (None, {}))[1])]
    # diffrt's ONNX Runtime engines cache optimized graphs; the benchmark keeps that cache in its own folder.
    env = {**os.environ, "DIFFRT_CACHE": str(work / "graph-cache")}
    busy, ours = machine_cpu_seconds(), own_cpu_seconds()
    t0 = time.time()
    done = subprocess.run([*command, "--image", str(image), "--t0", repr(t0)], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if done.returncode:
        raise RuntimeError(f"{backend} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    # On a shared machine, what the rest of it did meanwhile says how far to trust the row.
    others = (machine_cpu_seconds() - busy) - (own_cpu_seconds() - ours)
    share = max(0.0, others) / (wall * (os.cpu_count() or 1))
    return {**json.loads(result.read_text()), "image": str(image), "other_processes_cpu_share": round(share, 3)}


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def run_backend(backend: str, model: Path, size: int, steps: int, warm: int, work: Path) -> dict[str, Any]:
    """One backend x size in a fresh process; its row (status "ok", or "skipped" with the reason).

    diffrt starts twice: first with an empty graph cache (a first start: ONNX Runtime optimizes each graph and
    writes it to the cache), then once more for the first image only, as a restart finds the cache.
    """
    row: dict[str, Any] = {"backend": backend, "what": BACKENDS[backend], "size": f"{size}x{size}", "steps": steps}
    if backend == "openvino_cpu":
        probe = subprocess.run([sys.executable, "-c", "import openvino"], capture_output=True, text=True)
        if probe.returncode:
            return {**row, "status": "skipped", "reason": f"openvino does not import: {_last_line(probe.stderr)}"}
    print(f"[bench] {backend} at {size}x{size}, {steps} steps, 1 cold + {warm} warm calls", flush=True)
    shutil.rmtree(work / "graph-cache", ignore_errors=True)
    try:
        measured = spawn(backend, model, size, steps, warm, work)
    except RuntimeError as error:
        if backend == "openvino_cpu":  # a peer that cannot run here is recorded, not fatal
            return {**row, "status": "skipped", "reason": f"openvino failed: {_last_line(str(error))}"}
        raise SystemExit(str(error)) from None
    restart: dict[str, Any] = {}
    if backend in (REFERENCE, "diffrt_int8"):
        cache_bytes = sum(f.stat().st_size for f in (work / "graph-cache").rglob("*") if f.is_file())
        print(f"[bench] {backend} at {size}x{size}, restarted with the graph cache", flush=True)
        again = spawn(backend, model, size, steps, 0, work, tag="-restart")
        restart = {
            "graph_cache_gb": round(cache_bytes / 2**30, 2),
            "restart_load_s": round(again["load_s"], 3),
            "restart_first_call_s": round(again["first_call_s"], 3),
            "restart_cold_start_s": round(again["cold_start_s"], 3),
            "restart_peak_rss_gb": round(again["peak_rss_gb"], 3),
            "restart_other_processes_cpu_share": again["other_processes_cpu_share"],
        }
    calls = measured.pop("calls")
    steps_s = [t for call in calls for t in call["unet_steps_s"]]
    quartiles = statistics.quantiles(steps_s, n=4) if len(steps_s) > 1 else [steps_s[0]] * 3
    middle = lambda key: statistics.median(call[key] for call in calls)
    return {
        **row,
        "status": "ok",
        "warm_calls": len(calls),
        **{key: round(value, 3) if isinstance(value, float) else value for key, value in measured.items()},
        **restart,
        "text_encoder_s": round(middle("text_encoder_s"), 4),
        "unet_step_median_s": round(statistics.median(steps_s), 4),
        "unet_step_min_s": round(min(steps_s), 4),
        "unet_step_max_s": round(max(steps_s), 4),
        "unet_step_iqr_s": [round(quartiles[0], 4), round(quartiles[2], 4)],
        "unet_total_s": round(statistics.median(sum(call["unet_steps_s"]) for call in calls), 3),
        "glue_per_step_ms": round(1e3 * middle("glue_per_step_s"), 2),
        "vae_decode_s": round(middle("vae_decode_s"), 4),
        "other_ms": round(1e3 * middle("other_s"), 1),
        "end_to_end_s": round(middle("end_to_end_s"), 3),
        "end_to_end_all_s": [round(call["end_to_end_s"], 3) for call in calls],
    }


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def image_differences(rows: list[dict[str, Any]]) -> None:
    """Same weights and same noise: each image against diffrt's exact one, as the largest 8-bit pixel difference and
    as PSNR (dB; what a fast mode costs in quality)."""
    reference = {r["size"]: np.load(r["image"]) for r in rows if r["backend"] == REFERENCE and r["status"] == "ok"}
    for row in rows:
        if row["status"] == "ok":
            image = np.load(row.pop("image")).astype(np.int16)
            diff = image - reference[row["size"]]
            row["max_pixel_diff_vs_diffrt"] = int(np.abs(diff).max())
            row["psnr_vs_exact_db"] = psnr(diff)


def psnr(diff: np.ndarray) -> float | None:
    """PSNR in dB of an 8-bit difference image; None (identical) when it is all zero."""
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def lowest_ratio(peer: dict[str, Any], ours: dict[str, Any]) -> float:
    """peer / ours end to end, per repetition (warm call i against warm call i), the lowest of them."""
    pairs = zip(peer["end_to_end_all_s"], ours["end_to_end_all_s"])
    return round(min(theirs / mine for theirs, mine in pairs), 2)


def fast_ratios(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """For each fast mode and size: diffusers / mode and OpenVINO / mode end to end (the lower of the repetitions),
    peak RSS, cold start and UNet step, and the quality it costs."""
    found = {(r["backend"], r["size"]): r for r in rows if r["status"] == "ok"}
    out: dict[str, Any] = {}
    for mode in [REFERENCE, *FAST]:
        for size in (f"{s}x{s}" for s in sizes):
            ours = found.get((mode, size))
            if ours is None:
                continue
            entry: dict[str, Any] = {"psnr_vs_exact_db": ours.get("psnr_vs_exact_db")}
            for peer in PEERS:
                theirs = found.get((peer, size))
                if theirs is None:
                    continue
                entry[f"{peer}_end_to_end"] = lowest_ratio(theirs, ours)
                entry[f"{peer}_peak_rss"] = round(theirs["peak_rss_gb"] / ours["peak_rss_gb"], 2)
                entry[f"{peer}_cold_start"] = round(theirs["cold_start_s"] / ours["cold_start_s"], 2)
                entry[f"{peer}_unet_step"] = round(theirs["unet_step_median_s"] / ours["unet_step_median_s"], 2)
            out.setdefault(mode, {})[size] = entry
    return out


def fast_table(report: dict[str, Any]) -> str:
    lines = [
        "| diffrt mode | size | diffusers / mode, end to end (lower of reps) | OpenVINO / mode | peak RSS: diffusers "
        "/ mode | cold start: diffusers / mode | PSNR vs exact fp32, dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, by_size in report["fast_ratios"].items():
        for size, e in by_size.items():
            quality = (
                "exact"
                if mode == REFERENCE
                else ("identical" if e["psnr_vs_exact_db"] is None else f"{e['psnr_vs_exact_db']:.1f}")
            )
            if mode.endswith("tinyvae"):
                quality += " (random-weight tiny VAE: see QUALITY.md)"
            lines.append(
                f"| {mode} | {size} | {e.get('diffusers_torch_end_to_end', '—')}× | "
                f"{e.get('openvino_cpu_end_to_end', '—')}× | {e.get('diffusers_torch_peak_rss', '—')}× | "
                f"{e.get('diffusers_torch_cold_start', '—')}× | {quality} |"
            )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """peer / diffrt for end-to-end, cold start (first start and restart), peak RSS and UNet step, per size; the
    headline is the end-to-end one at 256x256."""
    found = {(r["backend"], r["size"]): r for r in rows if r["status"] == "ok"}
    headline = f"{HEADLINE_SIZE}x{HEADLINE_SIZE}" if HEADLINE_SIZE in sizes else f"{sizes[0]}x{sizes[0]}"
    out: dict[str, Any] = {"headline_size": headline}
    for peer in PEERS:
        for prefix, theirs, ours in (
            ("", "end_to_end_s", "end_to_end_s"),
            ("cold_start_", "cold_start_s", "cold_start_s"),
            # a peer restarts as it starts (nothing of it is cached between processes); diffrt finds its graph cache
            ("restart_", "cold_start_s", "restart_cold_start_s"),
            ("peak_rss_", "peak_rss_gb", "peak_rss_gb"),
            ("unet_step_", "unet_step_median_s", "unet_step_median_s"),
        ):
            by_size = {
                size: round(found[peer, size][theirs] / found[REFERENCE, size][ours], 2)
                for size in (f"{s}x{s}" for s in sizes)
                if (peer, size) in found and ours in found.get((REFERENCE, size), {})
            }
            if by_size:
                name = f"{prefix}{peer}_over_{REFERENCE}"
                if not prefix:  # the headline key holds one number, the per-size ones sit beside it
                    out[name] = by_size.get(headline)
                    name += "_by_size"
                out[name] = by_size
    return out


def machine(loadavg: tuple[float, ...]) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or platform.machine(),
    )
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    flags = set(flags.split(":", 1)[-1].split())
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    versions = {}
    for name in ("diffrt", "numpy", "onnxruntime", "torch", "diffusers", "transformers", "openvino"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "isa": [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if flag in flags],
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "ram_gib": round(memory_kb / 2**20, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "loadavg_before": [round(x, 2) for x in loadavg],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def uncommitted() -> list[str]:
    """Tracked files that differ from the commit."""
    return git("diff", "--name-only", "HEAD").splitlines()


# ====================================================================================================== reports ====
def table(rows: list[dict[str, Any]]) -> str:
    g = lambda x: f"{x:.3g}"  # three significant digits: seconds at SD 1.5 size, milliseconds on the tiny model
    lines = [
        "| backend | size | cold start s (load + first call) | restart s (graph cache) | text encoder s "
        "| UNet s/step: median [min–max] | scheduler + glue ms/step | VAE decode s | end-to-end s (warm) "
        "| peak RSS GB | max pixel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['size']} | skipped: {r['reason']} | | | | | | | | |")
            continue
        restart = "—"  # only diffrt caches what it builds at load; the others start the same way every time
        if "restart_cold_start_s" in r:
            restart = f"{g(r['restart_cold_start_s'])} ({g(r['restart_load_s'])} + {g(r['restart_first_call_s'])})"
        lines.append(
            f"| {r['backend']} | {r['size']} | {g(r['cold_start_s'])} ({g(r['load_s'])} + {g(r['first_call_s'])}) "
            f"| {restart} | {g(r['text_encoder_s'])} | {g(r['unet_step_median_s'])} [{g(r['unet_step_min_s'])}–"
            f"{g(r['unet_step_max_s'])}] | {g(r['glue_per_step_ms'])} | {g(r['vae_decode_s'])} "
            f"| {g(r['end_to_end_s'])} | {r['peak_rss_gb']:.2f} | {r['max_pixel_diff_vs_diffrt']} |"
        )
    return "\n".join(lines)


def headline(report: dict[str, Any]) -> str:
    """The ratios in words: the end-to-end headline, then plainly every place where diffrt is behind."""
    r, size = report["ratios"], report["ratios"]["headline_size"]
    peer = f"diffusers_torch_over_{REFERENCE}"
    if r.get(peer) is None:
        return "No end-to-end ratio: diffrt or diffusers did not run at the headline size."
    parts = [
        f"**End-to-end at {size}: diffusers (torch fp32) takes {r[peer]}× diffrt's (ONNX Runtime CPU) time**"
        + (f" (by size: {_pairs(r[peer + '_by_size'])})" if len(r[peer + "_by_size"]) > 1 else "")
        + ". Ratios are peer / diffrt: above 1, diffrt is faster or smaller.",
        "",
        f"- diffusers / diffrt: end-to-end {_pairs(r[peer + '_by_size'])}, cold start "
        f"{_pairs(r['cold_start_' + peer])} (against diffrt restarting with its graph cache: "
        f"{_pairs(r.get('restart_' + peer, {}))}), peak RSS {_pairs(r['peak_rss_' + peer])}, "
        f"UNet step {_pairs(r['unet_step_' + peer])}.",
    ]
    ov = f"openvino_cpu_over_{REFERENCE}"
    if r.get(ov + "_by_size"):
        parts.append(
            f"- OpenVINO / diffrt (the same ONNX graphs): end-to-end {_pairs(r[ov + '_by_size'])}, cold start "
            f"{_pairs(r['cold_start_' + ov])} (restart: {_pairs(r.get('restart_' + ov, {}))}), "
            f"peak RSS {_pairs(r['peak_rss_' + ov])}, UNet step {_pairs(r['unet_step_' + ov])}."
        )
    else:
        skipped = [row["reason"] for row in report["rows"] if row["backend"] == "openvino_cpu" and row.get("reason")]
        parts.append(f"- OpenVINO: not measured ({skipped[0] if skipped else 'not requested'}).")
    if r[peer] < 1.5:
        parts.append(f"- The end-to-end ratio diffusers / diffrt is below 1.5 (it is {r[peer]}).")
    behind = [
        f"{who} {what} {value}× at {at}"
        for who, name in (("diffusers", peer), ("OpenVINO", ov))
        for what, prefix in (
            ("end-to-end", ""),
            ("cold start", "cold_start_"),
            ("restart", "restart_"),
            ("peak RSS", "peak_rss_"),
        )
        for at, value in r.get(prefix + name + ("_by_size" if not prefix else ""), {}).items()
        if value < 1
    ]
    if behind:
        parts.append(f"- Where diffrt is behind (ratio below 1): {'; '.join(behind)}.")
    disturbed = [
        f"{row['backend']} at {row['size']} ({100 * share:.0f} %)"
        for row in report["rows"]
        if row["status"] == "ok"
        and (share := max(row["other_processes_cpu_share"], row.get("restart_other_processes_cpu_share", 0))) > 0.1
    ]
    if disturbed:
        parts.append(
            f"- **Disturbed**: other processes took over 10 % of the machine's CPU while {', '.join(disturbed)} ran; "
            "those rows are slower than a quiet machine gives."
        )
    return "\n".join(parts)


def _pairs(by_size: dict[str, float]) -> str:
    if not by_size:
        return "not measured"
    return (
        ", ".join(f"{v}× at {k}" for k, v in by_size.items())
        if len(by_size) > 1
        else f"{next(iter(by_size.values()))}×"
    )


def history_section(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    v = {k: val for k, val in m["versions"].items() if val}
    mode = "quick run" if report["quick"] else "tiny model" if s["tiny"] else "full run"
    return "\n".join(
        [
            f"## {report['date']} — {mode}: {', '.join(s['sizes'])}, {s['steps']} steps, commit {report['commit']}"
            + (f" with uncommitted changes to {', '.join(report['uncommitted'])}" if report["uncommitted"] else "")
            + (
                f" (HEAD was {report['commit_at_end']} at the end)"
                if report["commit_at_end"] != report["commit"]
                else ""
            ),
            "",
            f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores ({m['usable_cores']} usable), "
            f"{m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}; "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + f". Load average {m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after.",
            "",
            headline(report),
            "",
            table(report["rows"]),
            "",
            "Fast modes (ratios per repetition, the lower reported; quality against diffrt's exact image, same noise):",
            "",
            fast_table(report),
            "",
            f"{s['warm']} warm call(s) after the cold one per backend and size; UNet steps pooled over the warm calls "
            f"({s['scheduler']}, guidance {s['guidance_scale']}, UNet batch {s['unet_batch']}). "
            f"Raw rows: `results/latest.json` as of this run. CPU share other processes took while each child ran: "
            + ", ".join(
                f"{r['backend']} {r['size']} {100 * r['other_processes_cpu_share']:.0f} %"
                + (f" (restart {100 * r['restart_other_processes_cpu_share']:.0f} %)" if "restart_load_s" in r else "")
                for r in report["rows"]
                if r["status"] == "ok"
            )
            + ".",
            "",
        ]
    )


def record_history(path: Path, section: str) -> None:
    """Insert ``section`` above the previous runs; the file's introduction stays on top."""
    text = path.read_text() if path.is_file() else INTRO
    if HISTORY_MARK not in text:
        text = text.rstrip("\n") + "\n\n" + HISTORY_MARK + "\n"
    head, tail = text.split(HISTORY_MARK, 1)
    path.write_text(head + HISTORY_MARK + "\n\n" + section + tail.lstrip("\n"))


INTRO = f"""# Text-to-image latency: diffrt against diffusers (and OpenVINO)

`benchmarks/bench_pipeline.py` (`make bench`, `make bench QUICK=1`). Each section below is one run, written by the
harness; the newest comes first. How the numbers are made:

- **Model**: the Stable Diffusion 1.5 architecture with deterministic random weights (`benchmarks/sd15.py`: the
  real configs, 860 M-parameter UNet, ViT-L text encoder; no download), fp32. diffusers runs the diffusers folder;
  diffrt and OpenVINO run the package `diffrt export` made from it. Same weights everywhere.
- **Call**: "{PROMPT}", classifier-free guidance {GUIDANCE}
  (UNet batch 2, empty negative prompt), DPM-Solver++ multistep on both sides, the same seeded initial latents
  handed to every backend, PIL output. "max pixel diff" is the largest 8-bit difference of the image from diffrt's:
  it shows the backends computed the same thing.
- **Processes**: every backend x size runs in a fresh Python process. Before the first one the harness reads every
  weight file once, so each cold start finds its files in the page cache (a warm disk, a cold process).
- **cold start** = process start (the parent's clock just before it spawns the child) -> first image ready; **load**
  covers interpreter start, imports and building the pipeline (ONNX Runtime sessions, OpenVINO compilation, torch
  weights); **first call** is the first image. diffrt's ONNX Runtime engines keep each graph, optimized for this
  machine, in a graph cache (`SessionSettings.cache_dir`): its cold start is a first start with that cache empty
  (the harness points `DIFFRT_CACHE` at its own folder and empties it), and **restart** is a second process that
  finds the cache, timed to its first image. diffusers and OpenVINO (run without its `CACHE_DIR`) cache nothing
  between processes: their restart is their cold start.
- **Stages** (median over the warm calls): diffrt/OpenVINO by wrapping each engine's `run`, diffusers by forward
  hooks on `text_encoder` and `unet` and a wrapper on `vae.decode`. **text encoder** = prompt + negative prompt.
  **scheduler + glue** = the denoising loop's time not spent in the UNet, per step (scheduler step, CFG arithmetic,
  concatenation, feeding the engine). **end-to-end** = the whole warm call.
- **peak RSS** = the child's `ru_maxrss` at its end (load and all calls).
- Ratios are peer / diffrt: above 1, diffrt is faster or smaller.
- The machine is shared. Around each child the harness reads `/proc/stat` and records the share of the machine's
  CPU that other processes took meanwhile; rows over 10 % are called out as disturbed.

{HISTORY_MARK}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256x256, 8 steps, 2 warm calls")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (diffrt.export.tiny) at 64x64, 2 steps")
    parser.add_argument("--source", help="diffusers folder to benchmark (default: the SD 1.5-architecture build)")
    parser.add_argument("--package", help="engine package of --source (default: exported from it under --work)")
    parser.add_argument("--work", help="cache folder for the model, package and raw results (default build/bench)")
    parser.add_argument("--sizes", help="comma-separated image sizes in pixels, e.g. 256,512")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warm", type=int, help="warm calls measured after the first")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/latest.json)")
    parser.add_argument("--history", help='markdown history to prepend to (default benchmarks/RESULTS.md; "" = none)')
    # The child process (one backend x size); not for direct use.
    parser.add_argument("--child", choices=list(BACKENDS), help=argparse.SUPPRESS)
    for hidden in ("--model", "--result", "--image", "--call"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.model = Path(args.model)
        child(args)
        return 0

    # What runs is the tree as the run starts; others may commit meanwhile on a shared checkout.
    loadavg, commit, changed = os.getloadavg(), git("rev-parse", "--short", "HEAD"), uncommitted()
    sizes, steps, warm = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else sizes
    steps, warm = args.steps or steps, args.warm or warm
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or REFERENCE not in backends:
        raise SystemExit(f"--backends {args.backends!r}: accepted a subset of {', '.join(BACKENDS)} with {REFERENCE}.")
    work = Path(args.work) if args.work else ROOT / "build" / "bench" / ("tiny" if args.tiny else "")
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (work if args.tiny else BENCH / "results") / "latest.json"
    history = args.history if args.history is not None else ("" if args.tiny else str(BENCH / "RESULTS.md"))
    source, package, notes = prepare(args, work)
    packages = prepare_fast(source, package, backends, notes, tiny=args.tiny)
    if "diffusers_torch" in backends and source is None:
        raise SystemExit("diffusers_torch needs the diffusers folder: give --source with --package.")
    for folder in (*packages.values(), source):
        if folder is not None:
            warm_page_cache(folder)
    rows = []
    for size in sizes:
        for backend in backends:
            kind = FAST.get(backend, ("plain",))[0]
            if backend != "diffusers_torch" and kind not in packages:
                reason = "fast modes are exported from the diffusers folder: give --source"
                rows.append({"backend": backend, "size": f"{size}x{size}", "status": "skipped", "reason": reason})
                continue
            model = source if backend == "diffusers_torch" else packages[kind]
            rows.append(run_backend(backend, model, size, steps, warm, work))
    image_differences(rows)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(loadavg),
        "commit": commit,
        "commit_at_end": git("rev-parse", "--short", "HEAD"),
        # tracked files that differed from the commit as the run started: then the commit alone does not say what ran
        "uncommitted": changed,
        "quick": bool(args.quick),
        "settings": {
            "tiny": bool(args.tiny),
            "source": str(source),
            "package": str(package),
            "sizes": [f"{s}x{s}" for s in sizes],
            "steps": steps,
            "warm": warm,
            "prompt": PROMPT,
            "guidance_scale": GUIDANCE,
            "unet_batch": 2,
            "scheduler": "DPMSolverMultistepScheduler",
            "threads": usable_cores(),
            **notes,
        },
        "rows": rows,
        "ratios": ratios(rows, sizes),
        "fast_ratios": fast_ratios(rows, sizes),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + table(rows) + "\n\n" + fast_table(report) + "\n\n" + headline(report) + f"\n\n({out})")
    if history:
        record_history(Path(history), history_section(report))
        print(f"(history: {history})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
