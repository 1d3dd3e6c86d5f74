"""GPU latency and image error side by side: diffrt on ONNX Runtime's CUDA provider against diffusers on torch CUDA.

One model, the SD 1.5 architecture with deterministic random weights (``sd15.py``), built and exported once under
``--work``. Each variant runs in a fresh process (its load time and GPU memory are its own), one after the other on
the same GPU, with the same prompt, guidance 7.5, DPM-Solver++ multistep and the same initial latents (seeded NumPy
noise handed to both libraries):

- ``diffrt_cuda_fp16``: ``StableDiffusionPipeline.from_pretrained(package, provider="cuda")`` (the default: fp16
  graphs from ``diffrt.kernels.fp16``, attention fused into MultiHeadAttention, I/O binding);
- ``diffrt_cuda_fp16_graph``: the same with ``SessionSettings(cuda_graph=True)``;
- ``diffrt_cuda_fp32``: ``SessionSettings(precision="fp32")``;
- ``diffrt_cuda_fp16_unfused``: ``SessionSettings(fuse_attention=False)`` (attention as exported: MatMul, Softmax);
- ``diffusers_fp16`` / ``diffusers_fp32``: ``diffusers.StableDiffusionPipeline`` in that dtype on ``cuda``
  (PyTorch's scaled-dot-product attention, diffusers' default).

Per variant: load seconds (the first load of a fp16 variant also converts the graphs, the second finds them in the
cache), a warm-up call, then ``--runs`` timed calls: end to end, and per stage (text encoder, UNet per step,
scheduler per step, VAE decode) from diffrt's stage hooks and, for diffusers, forward hooks with a CUDA
synchronise. Images are kept as arrays so fp16 can be compared with fp32 and diffrt with diffusers.

    python benchmarks/bench_gpu.py prepare  --work build/gpu             # model + package (torch, any device)
    python benchmarks/bench_gpu.py run      --work build/gpu VARIANT...  # one fresh process per variant
    python benchmarks/bench_gpu.py report   --work build/gpu --out benchmarks/results/gpu.json

``run`` with ``--tiny`` uses the tiny test model and accepts ``--provider cpu`` (a dry run of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
SEED = 0
VARIANTS = {
    "diffrt_cuda_fp16": "diffrt, ONNX Runtime CUDA, fp16 (default settings)",
    "diffrt_cuda_fp16_graph": "diffrt, ONNX Runtime CUDA, fp16, CUDA graphs",
    "diffrt_cuda_fp32": "diffrt, ONNX Runtime CUDA, fp32",
    "diffrt_cuda_fp16_unfused": "diffrt, ONNX Runtime CUDA, fp16, attention not fused",
    "diffusers_fp16": "diffusers on torch CUDA, fp16",
    "diffusers_fp32": "diffusers on torch CUDA, fp32",
}


def model_folders(work: Path, tiny: bool) -> tuple[Path, Path]:
    """(diffusers folder, engine package) of the benchmark model under ``work``."""
    name = "tiny" if tiny else "sd15"
    return work / f"{name}-source", work / f"{name}-package"


def prepare(work: Path, tiny: bool) -> dict[str, Any]:
    """Build the model (diffusers folder) and export it, each only when not there yet."""
    notes: dict[str, Any] = {}
    source, package = (
        work / ("tiny-source" if tiny else "sd15-source"),
        work / ("tiny-package" if tiny else "sd15-package"),
    )
    if not (source / "model_index.json").is_file():
        builder = ["-m", "diffrt.export.tiny"] if tiny else [str(BENCH / "sd15.py")]
        start = time.perf_counter()
        subprocess.run([sys.executable, *builder, str(source)], check=True)
        notes["build_source_s"] = round(time.perf_counter() - start, 1)
    if not (package / "model_index.json").is_file():
        start = time.perf_counter()
        # --no-check: the export's own comparison with torch (at two sizes, on the CPU) is the CPU benchmark's and the
        # test suite's business; here it would only cost GPU-machine time.
        export = [sys.executable, "-m", "diffrt", "export", str(source), str(package), "--force", "--no-check"]
        subprocess.run(export, check=True)
        notes["export_s"] = round(time.perf_counter() - start, 1)
    (work / "prepare.json").write_text(json.dumps(notes, indent=2) + "\n")
    return notes


def latents_for(size: int, scale: int = 8) -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((1, 4, size // scale, size // scale)).astype(np.float32)


def gpu_memory_mib() -> float | None:
    """GPU memory this process holds, as nvidia-smi reports it (None where it cannot be read)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def diffrt_variant(variant: str, package: Path, steps: int, provider: str) -> tuple[Callable, Callable, Any]:
    """(load, generate, stage timings) for a diffrt variant."""
    from diffrt.runtime import SessionSettings, StableDiffusionPipeline, StageTimings
    from diffrt.runtime.schedulers import DPMSolverMultistepScheduler

    settings = {
        "diffrt_cuda_fp16": SessionSettings(),
        "diffrt_cuda_fp16_graph": SessionSettings(cuda_graph=True),
        "diffrt_cuda_fp32": SessionSettings(precision="fp32"),
        "diffrt_cuda_fp16_unfused": SessionSettings(fuse_attention=False),
    }[variant]
    if provider == "cpu":  # the dry run: same code path, CPU provider, fp32
        settings = SessionSettings(precision="fp32")
    timings = StageTimings()
    state: dict[str, Any] = {}

    def load() -> None:
        pipe = StableDiffusionPipeline.from_pretrained(package, provider=provider, session_settings=settings)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.stage_hooks.append(timings)
        state["pipe"] = pipe
        state["providers"] = {name: getattr(pipe, name).provider for name in ("text_encoder", "unet", "vae_decoder")}

    def generate(latents: np.ndarray) -> np.ndarray:
        pipe = state["pipe"]
        size = latents.shape[-1] * pipe.vae_scale_factor
        call = {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "output_type": "np"}
        return pipe(PROMPT, height=size, width=size, latents=latents, **call).images[0]

    return load, generate, (timings, state)


def diffusers_variant(variant: str, source: Path, steps: int) -> tuple[Callable, Callable, Any]:
    import diffusers
    import torch

    dtype = torch.float16 if variant == "diffusers_fp16" else torch.float32
    events: list[tuple[str, float]] = []
    state: dict[str, Any] = {}

    def hook(stage: str, module: Any) -> None:
        def before(*_: Any, **__: Any) -> None:
            torch.cuda.synchronize()
            state[stage] = time.perf_counter()

        def after(*_: Any, **__: Any) -> None:
            torch.cuda.synchronize()
            events.append((stage, time.perf_counter() - state[stage]))

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def load() -> None:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        ).to("cuda")
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        hook("text_encoder", pipe.text_encoder)
        hook("unet", pipe.unet)
        decode = pipe.vae.decode

        def timed_decode(*args: Any, **kwargs: Any) -> Any:
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = decode(*args, **kwargs)
            torch.cuda.synchronize()
            events.append(("vae_decoder", time.perf_counter() - start))
            return out

        pipe.vae.decode = timed_decode
        state["pipe"] = pipe
        torch.cuda.synchronize()

    def generate(latents: np.ndarray) -> np.ndarray:
        pipe = state["pipe"]
        size = latents.shape[-1] * pipe.vae_scale_factor
        call = {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "output_type": "np"}
        with torch.inference_mode():
            image = pipe(PROMPT, height=size, width=size, latents=torch.from_numpy(latents).to("cuda", dtype), **call)
        torch.cuda.synchronize()
        return np.asarray(image.images[0], dtype=np.float32)

    return load, generate, (events, state)


def stage_summary(pairs: list[tuple[str, float]]) -> dict[str, dict[str, float]]:
    stages: dict[str, list[float]] = {}
    for stage, seconds in pairs:
        stages.setdefault(stage, []).append(seconds)
    return {
        stage: {
            "calls": len(values),
            "median_ms": round(1000 * statistics.median(values), 3),
            "min_ms": round(1000 * min(values), 3),
            "max_ms": round(1000 * max(values), 3),
            "total_ms": round(1000 * sum(values), 2),
        }
        for stage, values in stages.items()
    }


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """Measure one variant in this process; write <work>/<variant>.json and its image."""
    work = Path(args.work)
    source, package = (
        work / ("tiny-source" if args.tiny else "sd15-source"),
        work / ("tiny-package" if args.tiny else "sd15-package"),
    )
    row: dict[str, Any] = {"variant": variant, "label": VARIANTS[variant], "size": args.size, "steps": args.steps}
    if variant.startswith("diffrt"):
        load, generate, (timings, state) = diffrt_variant(variant, package, args.steps, args.provider)
    else:
        load, generate, (events, state) = diffusers_variant(variant, source, args.steps)
    start = time.perf_counter()
    load()
    row["load_s"] = round(time.perf_counter() - start, 2)
    if variant.startswith("diffrt"):
        row["providers"] = state["providers"]
    if variant == "diffrt_cuda_fp16":
        # A second load finds the converted graphs in the cache: what every later start of a server costs.
        start = time.perf_counter()
        load()
        row["reload_s"] = round(time.perf_counter() - start, 2)
    latents = latents_for(args.size, 8 if not args.tiny else 2)
    start = time.perf_counter()
    image = generate(latents)
    row["first_call_s"] = round(time.perf_counter() - start, 3)
    calls = []
    if variant.startswith("diffrt"):
        timings.clear()
    else:
        events.clear()
    for _ in range(args.runs):
        start = time.perf_counter()
        image = generate(latents)
        calls.append(time.perf_counter() - start)
    row["end_to_end_ms"] = {
        "median": round(1000 * statistics.median(calls), 2),
        "min": round(1000 * min(calls), 2),
        "runs": [round(1000 * c, 2) for c in calls],
    }
    pairs = [(e.stage, e.seconds) for e in timings.events] if variant.startswith("diffrt") else list(events)
    row["stages"] = stage_summary(pairs)
    row["gpu_memory_mib"] = gpu_memory_mib()
    row["nan"] = bool(np.isnan(image).any())
    np.save(work / f"{variant}.npy", image.astype(np.float32))
    (work / f"{variant}.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def error(work: Path, a: str, b: str) -> dict[str, float] | None:
    pa, pb = work / f"{a}.npy", work / f"{b}.npy"
    if not (pa.is_file() and pb.is_file()):
        return None
    x, y = np.load(pa), np.load(pb)
    diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
    return {"max_abs": float(np.nanmax(diff)), "mean_abs": float(np.nanmean(diff))}


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version()}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        info["gpu"] = out
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    for dist in ("onnxruntime-gpu", "onnxruntime", "torch", "diffusers", "numpy"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def report(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    rows = {}
    for variant in VARIANTS:
        path = work / f"{variant}.json"
        if path.is_file():
            rows[variant] = json.loads(path.read_text())
    failures = {}
    for path in sorted(work.glob("*.failed.txt")):
        failures[path.name.removesuffix(".failed.txt")] = path.read_text()[-2000:]
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": args.command_line,
        "device": device_info(),
        "prepare": json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").is_file() else {},
        "variants": rows,
        "failed": failures,
        "image_error": {
            "diffrt fp16 vs diffrt fp32": error(work, "diffrt_cuda_fp16", "diffrt_cuda_fp32"),
            "diffrt fp16 + CUDA graphs vs diffrt fp16": error(work, "diffrt_cuda_fp16_graph", "diffrt_cuda_fp16"),
            "diffrt fp32 vs diffusers fp32": error(work, "diffrt_cuda_fp32", "diffusers_fp32"),
            "diffrt fp16 vs diffusers fp16": error(work, "diffrt_cuda_fp16", "diffusers_fp16"),
            "diffusers fp16 vs diffusers fp32": error(work, "diffusers_fp16", "diffusers_fp32"),
        },
    }
    ratios = {}
    for ours, peer in (
        ("diffrt_cuda_fp16", "diffusers_fp16"),
        ("diffrt_cuda_fp16_graph", "diffusers_fp16"),
        ("diffrt_cuda_fp16_unfused", "diffusers_fp16"),
        ("diffrt_cuda_fp32", "diffusers_fp32"),
    ):
        if ours in rows and peer in rows:
            a, b = rows[ours], rows[peer]
            entry = {"end_to_end": round(b["end_to_end_ms"]["median"] / a["end_to_end_ms"]["median"], 3)}
            if "unet" in a["stages"] and "unet" in b["stages"]:
                entry["unet_step"] = round(b["stages"]["unet"]["median_ms"] / a["stages"]["unet"]["median_ms"], 3)
            ratios[f"{peer} / {ours}"] = entry
    result["ratios"] = ratios
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | load s (cached) | end-to-end ms | text encoder ms | UNet step ms | scheduler step ms "
        "| VAE decode ms | GPU MiB | NaN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in result["variants"].items():
        stages = row["stages"]
        median = {stage: f"{values['median_ms']:.1f}" for stage, values in stages.items()}

        load = f"{row['load_s']}" + (f" ({row['reload_s']})" if "reload_s" in row else "")
        lines.append(
            f"| {variant} | {load} | {row['end_to_end_ms']['median']:.1f} | {median.get('text_encoder', '-')} "
            f"| {median.get('unet', '-')} | {median.get('scheduler', '-')} | {median.get('vae_decoder', '-')} "
            f"| {row['gpu_memory_mib']} "
            f"| {row['nan']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("prepare", "run", "child", "report"))
    parser.add_argument("variants", nargs="*", default=[])
    parser.add_argument("--work", default=str(ROOT / "build" / "gpu"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (dry runs)")
    parser.add_argument("--provider", default="cuda", help="diffrt's provider (cpu for a dry run)")
    parser.add_argument("--out", default=str(BENCH / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    args.command_line = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.phase == "prepare":
        print(json.dumps(prepare(work, args.tiny)))
    elif args.phase == "child":
        print(json.dumps(run_variant(args, args.variants[0])))
    elif args.phase == "run":
        for variant in args.variants or list(VARIANTS):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
            command = [sys.executable, __file__, "child", variant, *[a for a in sys.argv[2:] if a not in VARIANTS]]
            done = subprocess.run(command, capture_output=True, text=True)
            failed = work / f"{variant}.failed.txt"
            if done.returncode:
                failed.write_text(done.stdout[-4000:] + "\n" + done.stderr[-8000:])
                print(f"{variant}: FAILED (rc {done.returncode}); see {failed}\n{done.stderr[-1500:]}", flush=True)
            else:
                failed.unlink(missing_ok=True)
                print(done.stdout.strip().splitlines()[-1], flush=True)
    else:
        report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
