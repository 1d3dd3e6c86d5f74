"""Text-to-video side by side: CogVideoX-2b on diffrt (ONNX Runtime CPU) and on diffusers (torch), in one run.

The model is CogVideoX-2b's transformer and VAE at their real sizes with deterministic random weights and a reduced
T5 (``cogvideox2b.py``: the real configs, no download), built once as a diffusers folder and exported once with
``diffrt export --no-check``; both are cached under build/bench-video/. Each backend runs in a fresh process, so its
load time and peak RSS are its own:

- ``diffrt_ort_cpu``: ``diffrt.runtime.CogVideoXPipeline.from_pretrained(package, provider="cpu")``, every session
  kept (``stage_memory="high"``, the default);
- ``diffrt_ort_cpu_low``: ``stage_memory="low"``: each graph's session is created when its stage starts and
  released when it ends, so the peak is the largest stage, not the sum;
- ``diffrt_ort_cpu_low_tiled``: ``stage_memory="low"`` plus ``pipe.vae.enable_tiling(...)`` and ``enable_slicing()``;
- ``diffusers_torch``: ``diffusers.CogVideoXPipeline`` in fp32 on the folder (the same weights),
  ``torch.set_num_threads`` = usable cores;
- ``diffusers_torch_tiled``: the same with ``pipe.vae.enable_tiling(...)`` and ``enable_slicing()``, the memory
  options diffusers has on a CPU. ``enable_model_cpu_offload`` and ``enable_sequential_cpu_offload`` move modules to
  an accelerator; the child tries both and records what diffusers answers (on a CPU-only host: not applicable).

Every call: the same prompt, guidance 6 (transformer batch 2), CogVideoX's DDIM scheduler from the folder's config,
the same initial latents (seeded NumPy noise handed to both as ``latents=``), frames as floats (``output_type="np"``),
fp32 throughout. Measured per backend: load (process start -> pipeline ready, every session created for
``stage_memory="high"``), text encoder, transformer per step (median), VAE decode, end-to-end, peak RSS (the child's
``ru_maxrss``), and the largest frame difference from diffrt's (same weights and noise: the same video). diffrt is
timed through ``pipe.stage_hooks`` (:class:`~diffrt.runtime.timing.StageTimings`), diffusers by forward hooks on the
text encoder and transformer and a wrapper on ``vae.decode``.

    python benchmarks/bench_video.py            # `make bench-video`: 160x240, 9 frames, 2 steps
    python benchmarks/bench_video.py --tiny --work /tmp/v --out /tmp/v/video.json --markdown ""   # seconds

Writes benchmarks/results/video.json and benchmarks/VIDEO.md. Ratios are diffusers / diffrt: above 1, diffrt is
faster (or smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from bench_pipeline import (  # noqa: E402  (the benchmarks folder is not a package)
    git,
    machine,
    machine_cpu_seconds,
    own_cpu_seconds,
    uncommitted,
    usable_cores,
    warm_page_cache,
)

PROMPT = "a panda playing an acoustic guitar in a bamboo forest, cinematic"
GUIDANCE = 6.0
SEED = 0
REFERENCE = "diffrt_ort_cpu"
TILED_REFERENCE = "diffrt_ort_cpu_low_tiled"
BACKENDS: dict[str, dict[str, Any]] = {
    "diffrt_ort_cpu": dict(
        kind="diffrt", stage_memory="high", tiled=False, what="diffrt, ONNX Runtime CPU, every session kept"
    ),
    "diffusers_torch": dict(kind="diffusers", tiled=False, what="diffusers on torch, fp32"),
    "diffrt_ort_cpu_low": dict(
        kind="diffrt", stage_memory="low", tiled=False, what='diffrt, stage_memory="low" (a session per stage)'
    ),
    "diffrt_ort_cpu_low_tiled": dict(
        kind="diffrt",
        stage_memory="low",
        tiled=True,
        what='diffrt, stage_memory="low", VAE tiling + slicing',
    ),
    "diffusers_torch_tiled": dict(
        kind="diffusers", tiled=True, what="diffusers on torch, fp32, VAE tiling + slicing (offload: see notes)"
    ),
}
# Each mode: the video, the steps, the backends that get a warm-up call before the measured one, and the VAE tile
# size for the tiled rows. diffusers' default tile at 480x720 is 240x360 pixels (9 overlapping tiles); at 160x240
# that would be one tile, so the tiled rows use tiles of 96x120 (6 tiles). A tile size must keep diffusers' stride
# (overlap in latents x 8) equal to the part of a tile it keeps (tile - blend), or the video comes out larger: with
# the default overlap factors (1/6, 1/5) that means 48k pixels high and 40k wide.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(
        height=160,
        width=240,
        frames=9,
        steps=2,
        warmup=["diffrt_ort_cpu", "diffusers_torch"],
        tiles=dict(tile_sample_min_height=96, tile_sample_min_width=120),
    ),
    "tiny": dict(
        height=32,
        width=48,
        frames=9,
        steps=2,
        warmup=["diffrt_ort_cpu", "diffusers_torch"],
        tiles=dict(tile_sample_min_height=48, tile_sample_min_width=40),
    ),
}
# Disk the build and the export need (GB), as (the rest, the transformer's 30 layers): the fp16 folder, then the fp32
# package plus the traced transformer that torch writes to a temporary folder before diffrt gathers it into the
# package (6.8 GB each at the real size). A margin is included.
DISK_GB = {"full": {"build": (1.1, 3.4), "export": (2.5, 13.6)}, "tiny": {"build": (0.1, 0), "export": (0.1, 0)}}


# ======================================================================================================== child ====
class Clock:
    """(stage, seconds) of every network call of the call being measured."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.imported = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.events.append((stage, seconds))

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - start)

        return timed

    def hook(self, stage: str, module: Any) -> None:
        """Time a torch module's forward with hooks (diffusers calls the module, not a wrapper)."""
        starts: list[float] = []
        module.register_forward_pre_hook(lambda _m, _a: starts.append(time.perf_counter()))
        module.register_forward_hook(lambda _m, _a, _o: self.add(stage, time.perf_counter() - starts.pop()))

    def call(self, seconds: float) -> dict[str, Any]:
        text = [s for stage, s in self.events if stage == "text_encoder"]
        steps = [s for stage, s in self.events if stage == "transformer"]
        vae = [s for stage, s in self.events if stage == "vae_decoder"]
        if not (text and steps and len(vae) == 1):
            raise RuntimeError(f"unexpected network calls: {[stage for stage, _ in self.events]}")
        return {
            "end_to_end_s": seconds,
            "text_encoder_s": sum(text),
            "transformer_steps_s": steps,
            "vae_decode_s": vae[0],
            # scheduler, guidance, tokenizing, postprocessing, and for stage_memory="low" creating the sessions
            "other_s": seconds - sum(text) - sum(steps) - vae[0],
        }


def load_diffrt(spec: dict[str, Any], package: Path, settings: dict[str, Any], clock: Clock):
    import onnxruntime  # noqa: F401  (imported before the mark, so that the import counts as such)

    from diffrt.runtime import CogVideoXPipeline, SessionSettings, StageTimings

    clock.imported = time.time()
    # The graph cache is off: see the report's notes.
    pipe = CogVideoXPipeline.from_pretrained(
        package, provider="cpu", session_settings=SessionSettings(cache_dir=None), stage_memory=spec["stage_memory"]
    )
    pipe.set_progress_bar_config(disable=True)
    if spec["stage_memory"] == "high":
        for network in pipe.video_networks:  # sessions are made on first use: make them part of the load
            pipe.package.engine(network)
    if spec["tiled"]:
        pipe.vae.enable_tiling(**settings["tiles"])
        pipe.vae.enable_slicing()
    timings = StageTimings()
    pipe.stage_hooks.append(timings)

    def generate(latents: np.ndarray) -> np.ndarray:
        timings.clear()
        out = pipe(PROMPT, latents=latents, output_type="np", **call_arguments(settings))
        for event in timings.events:
            clock.add(event.stage, event.seconds)
        return np.asarray(out.frames[0], dtype=np.float32)

    return generate, {}


def load_diffusers(spec: dict[str, Any], source: Path, settings: dict[str, Any], clock: Clock):
    import diffusers
    import torch

    clock.imported = time.time()
    torch.set_num_threads(usable_cores())
    diffusers.utils.logging.set_verbosity_error()
    pipe = diffusers.CogVideoXPipeline.from_pretrained(source, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    notes = {}
    if spec["tiled"]:
        # diffusers' offload options need an accelerator: try them, record the answer (on a CPU host, a refusal).
        for option in ("enable_model_cpu_offload", "enable_sequential_cpu_offload"):
            try:
                getattr(pipe, option)()
                notes[option] = "enabled"
            except Exception as error:  # noqa: BLE001  (whatever diffusers raises is the answer recorded)
                notes[option] = f"not applicable: {type(error).__name__}: {str(error).strip()[:200]}"
        pipe.vae.enable_tiling(**settings["tiles"])
        pipe.vae.enable_slicing()
    clock.hook("text_encoder", pipe.text_encoder)
    clock.hook("transformer", pipe.transformer)
    pipe.vae.decode = clock.wrap("vae_decoder", pipe.vae.decode)  # decode is a method, not the module's forward

    def generate(latents: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = pipe(PROMPT, latents=torch.from_numpy(latents), output_type="np", **call_arguments(settings))
        return np.asarray(out.frames[0], dtype=np.float32)

    return generate, notes


def call_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_frames": settings["frames"],
        "height": settings["height"],
        "width": settings["width"],
        "num_inference_steps": settings["steps"],
        "guidance_scale": GUIDANCE,
    }


def child(args: argparse.Namespace) -> None:
    """Load one backend, run the warm-up call (when asked) and the measured one; write the measurements."""
    entered = time.time()
    spec, settings = BACKENDS[args.child], json.loads(args.settings)
    clock = Clock()
    load = load_diffrt if spec["kind"] == "diffrt" else load_diffusers
    generate, notes = load(spec, Path(args.model), settings, clock)
    loaded = time.time()
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    latents = np.load(args.latents)
    calls, first_call_s = [], None
    for _ in range(2 if args.warmup else 1):
        clock.events.clear()
        start = time.perf_counter()
        frames = generate(latents)
        calls.append(clock.call(time.perf_counter() - start))
        first_call_s = first_call_s or calls[-1]["end_to_end_s"]
    np.save(args.frames, frames)
    result = {
        "interpreter_start_s": entered - args.t0,
        "imports_s": clock.imported - entered,
        "build_pipeline_s": loaded - clock.imported,
        "load_s": loaded - args.t0,
        "first_call_s": first_call_s,
        "peak_rss_after_load_gb": rss_after_load / 2**20,  # ru_maxrss is in KiB on Linux
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "measured_call": calls[-1],
        "warm_up_call": calls[0] if args.warmup else None,
        "notes": notes,
    }
    Path(args.result).write_text(json.dumps(result) + "\n")


# ======================================================================================================= parent ====
def waited(command: list[str], what: str) -> dict[str, float]:
    """Run a preparation step (output passed through); its seconds and its own peak RSS (wait4's rusage)."""
    print(f"[bench-video] {what}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{what} failed (exit {process.returncode})")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}


def need_disk(folder: Path, gigabytes: float, what: str) -> None:
    free = shutil.disk_usage(folder).free / 2**30
    if free < gigabytes:
        raise SystemExit(
            f"{what} needs about {gigabytes:.1f} GB free under {folder}; {free:.1f} GB are. Free some space (or point "
            "--work at another disk) and run again: what is already built is kept. Where no more can be had, "
            "--transformer-layers N builds the transformer with N of its 30 layers (each at its real width)."
        )


def folder_gb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30, 2)


def prepare(
    mode: str, work: Path, settings: dict[str, Any], layers: int | None = None
) -> tuple[Path, Path, dict[str, Any], list[str]]:
    """(diffusers folder, engine package, how they were made, whether this run made either): each made only when not
    there yet."""
    built_now: list[str] = []
    record = work / "preparation.json"  # how the cached model was made, kept for later runs' reports
    notes: dict[str, Any] = json.loads(record.read_text()) if record.is_file() else {}
    source, package = work / "source", work / "package"
    tiny = ["--tiny"] if mode == "tiny" else []
    if not (source / "model_index.json").is_file():
        rest, transformer = DISK_GB[mode]["build"]
        need_disk(work, rest + transformer * (layers or 30) / 30, "building the model")
        report = work / "build-report.json"
        build = [sys.executable, str(BENCH / "cogvideox2b.py"), str(source), *tiny, "--report", str(report)]
        build += ["--transformer-layers", str(layers)] if layers else []
        notes = {"build": waited(build, "building the model")}
        notes["parameters"] = json.loads(report.read_text())["parameters"]
        record.write_text(json.dumps(notes, indent=2) + "\n")
        built_now.append("building")
    if not (package / "model_index.json").is_file():
        rest, transformer = DISK_GB[mode]["export"]
        need_disk(work, rest + transformer * (layers or 30) / 30, "exporting the model")
        # diffrt export --no-check, its shape range centred on the run's size (cogvideox2b.export_around: traced at
        # the default 480x720, the VAE encoder ran this 24 GB machine out of memory).
        around = f"{settings['height']}x{settings['width']}"
        export = [sys.executable, str(BENCH / "cogvideox2b.py"), str(source), "--export", str(package)]
        notes["export"] = waited([*export, "--around", around], "exporting with diffrt export --no-check")
        notes["export"]["around"] = around
        record.write_text(json.dumps(notes, indent=2) + "\n")
        built_now.append("the export")
    notes["source_gb"], notes["package_gb"] = folder_gb(source), folder_gb(package)
    notes["package_graphs_gb"] = {
        part.name: folder_gb(part) for part in sorted(package.iterdir()) if (part / "model.onnx").is_file()
    }
    return source, package, notes, built_now


def spawn(backend: str, model: Path, settings: dict[str, Any], warmup: bool, work: Path) -> dict[str, Any]:
    """One backend in a fresh process; its measurements, or SystemExit with the end of its stderr."""
    result, frames = work / "rows" / f"{backend}.json", work / "frames" / f"{backend}.npy"
    for path in (result, frames):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", backend, "--model", str(model)]
    command += ["--settings", json.dumps(settings), "--latents", str(work / "latents.npy")]
    command += ["--result", str(result), "--frames-out", str(frames)] + (["--warmup"] if warmup else [])
    warm_page_cache(model)  # every backend finds its weights in the page cache alike
    calls = "a warm-up call and a measured one" if warmup else "one call (its first)"
    print(f"[bench-video] {backend}: {calls}", flush=True)
    busy, ours = machine_cpu_seconds(), own_cpu_seconds()
    t0 = time.time()
    done = subprocess.run([*command, "--t0", repr(t0)], capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode:
        raise SystemExit(f"{backend} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    others = (machine_cpu_seconds() - busy) - (own_cpu_seconds() - ours)
    share = max(0.0, others) / (wall * (os.cpu_count() or 1))
    print(f"[bench-video] {backend}: done in {wall:.0f} s", flush=True)
    return {
        **json.loads(result.read_text()),
        "frames": str(frames),
        "wall_s": round(wall, 1),
        "other_processes_cpu_share": round(share, 3),
    }


def row_of(backend: str, measured: dict[str, Any]) -> dict[str, Any]:
    call = measured.pop("measured_call")
    warm_up = measured.pop("warm_up_call")
    steps = call["transformer_steps_s"]
    r3 = lambda v: round(v, 3)  # noqa: E731
    return {
        "backend": backend,
        "what": BACKENDS[backend]["what"],
        "call_measured": "warm (after a warm-up call)" if warm_up else "first call",
        **{k: r3(v) if isinstance(v, float) else v for k, v in measured.items()},
        "text_encoder_s": r3(call["text_encoder_s"]),
        "transformer_step_median_s": r3(statistics.median(steps)),
        "transformer_steps_s": [r3(s) for s in steps],
        "vae_decode_s": r3(call["vae_decode_s"]),
        "other_s": r3(call["other_s"]),
        "end_to_end_s": r3(call["end_to_end_s"]),
        "warm_up_end_to_end_s": r3(warm_up["end_to_end_s"]) if warm_up else None,
    }


def frame_differences(rows: list[dict[str, Any]]) -> None:
    """Same weights, same noise: each row's frames against diffrt's (tiled rows against diffrt's tiled frames, since
    tiles are blended: a tiled decode is not the untiled one)."""
    frames = {row["backend"]: np.load(row["frames"]) for row in rows}
    for row in rows:
        reference = TILED_REFERENCE if BACKENDS[row["backend"]]["tiled"] else REFERENCE
        mine = frames[row["backend"]]
        row["frames_shape"] = list(mine.shape)
        row["frames_finite"] = bool(np.isfinite(mine).all())
        row["frame_diff_vs"] = reference
        if reference in frames:
            diff = np.abs(mine - frames[reference])
            row["max_frame_diff"] = round(float(diff.max()), 6)
            row["mean_frame_diff"] = round(float(diff.mean()), 7)
        row.pop("frames")
    if REFERENCE in frames and TILED_REFERENCE in frames:
        tiled_vs_untiled = float(np.abs(frames[TILED_REFERENCE] - frames[REFERENCE]).max())
        rows[0]["tiled_vs_untiled_max_frame_diff"] = round(tiled_vs_untiled, 6)


RATIO_KEYS = {
    "transformer_step": "transformer_step_median_s",
    "vae_decode": "vae_decode_s",
    "end_to_end": "end_to_end_s",
    "load": "load_s",
    "peak_rss": "peak_rss_gb",
}
PAIRS = [
    ("diffusers_torch", "diffrt_ort_cpu"),  # both as they come
    ("diffusers_torch_tiled", "diffrt_ort_cpu_low_tiled"),  # both with their memory options
    ("diffusers_torch", "diffrt_ort_cpu_low"),
]


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """diffusers / diffrt per pair and measure, and the lowest peak RSS of each side over its rows."""
    found = {row["backend"]: row for row in rows}
    out: dict[str, Any] = {}
    for theirs, ours in PAIRS:
        if theirs in found and ours in found:
            # stage_memory="low" creates its sessions in the call, not at load: no load ratio against it.
            skip = {"load"} if BACKENDS[ours].get("stage_memory") == "low" else set()
            out[f"{theirs}_over_{ours}"] = {
                name: round(found[theirs][key] / found[ours][key], 2)
                for name, key in RATIO_KEYS.items()
                if name not in skip
            }
    peaks = {
        side: min((r["peak_rss_gb"], r["backend"]) for r in rows if BACKENDS[r["backend"]]["kind"] == side)
        for side in ("diffrt", "diffusers")
        if any(BACKENDS[r["backend"]]["kind"] == side for r in rows)
    }
    if len(peaks) == 2:
        out["lowest_peak_rss"] = {
            "diffrt": {"backend": peaks["diffrt"][1], "gb": round(peaks["diffrt"][0], 2)},
            "diffusers": {"backend": peaks["diffusers"][1], "gb": round(peaks["diffusers"][0], 2)},
            "diffusers_over_diffrt": round(peaks["diffusers"][0] / peaks["diffrt"][0], 2),
        }
    return out


# ====================================================================================================== reports ====
def table(rows: list[dict[str, Any]]) -> str:
    g = lambda x: "—" if x is None else f"{x:.3g}"  # noqa: E731
    lines = [
        "| backend | load s | text encoder s | transformer s/step (median) | VAE decode s | other s | end-to-end s "
        "| call measured | peak RSS GB | RSS after load GB | max frame diff (vs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{r['max_frame_diff']:.2g} ({r['frame_diff_vs']})" if "max_frame_diff" in r else "—"
        if r["backend"] == r.get("frame_diff_vs"):
            diff = "reference"
        lines.append(
            f"| {r['backend']} | {g(r['load_s'])} | {g(r['text_encoder_s'])} | {g(r['transformer_step_median_s'])} "
            f"| {g(r['vae_decode_s'])} | {g(r['other_s'])} | {g(r['end_to_end_s'])} | {r['call_measured']} "
            f"| {r['peak_rss_gb']:.2f} | {r['peak_rss_after_load_gb']:.2f} | {diff} |"
        )
    return "\n".join(lines)


def ratio_lines(report: dict[str, Any]) -> list[str]:
    r = report["ratios"]
    lines = []
    names = {
        "diffusers_torch_over_diffrt_ort_cpu": "diffusers / diffrt, both as they come",
        "diffusers_torch_tiled_over_diffrt_ort_cpu_low_tiled": "diffusers (VAE tiling + slicing) / diffrt "
        '(stage_memory="low", VAE tiling + slicing), both with their memory options',
        "diffusers_torch_over_diffrt_ort_cpu_low": 'diffusers / diffrt with stage_memory="low"',
    }
    for key, words in names.items():
        if key in r:
            v = r[key]
            load = f", load {v['load']}×" if "load" in v else ""
            lines.append(
                f"- {words}: transformer step **{v['transformer_step']}×**, VAE decode **{v['vae_decode']}×**, "
                f"end-to-end **{v['end_to_end']}×**{load}, peak RSS **{v['peak_rss']}×**."
            )
    if "lowest_peak_rss" in r:
        low = r["lowest_peak_rss"]
        lines.append(
            f"- Lowest peak RSS of each side: diffrt {low['diffrt']['gb']} GB ({low['diffrt']['backend']}), diffusers "
            f"{low['diffusers']['gb']} GB ({low['diffusers']['backend']}): diffusers / diffrt "
            f"**{low['diffusers_over_diffrt']}×**."
        )
    behind = [
        f"{key.split('_over_')[0]} / {key.split('_over_')[1]} {name} {value}×"
        for key, values in r.items()
        if "_over_" in key and isinstance(values, dict)
        for name, value in values.items()
        if value < 1
    ]
    if behind:
        lines.append(f"- Where diffrt is behind (ratio below 1): {'; '.join(behind)}.")
    disturbed = [
        f"{row['backend']} ({100 * row['other_processes_cpu_share']:.0f} %)"
        for row in report["rows"]
        if row["other_processes_cpu_share"] > 0.1
    ]
    if disturbed:
        lines.append(
            f"- **Disturbed**: other processes took over 10 % of the machine's CPU while {', '.join(disturbed)} ran; "
            "those rows are slower than a quiet machine gives."
        )
    return lines


def model_description(package: Path) -> dict[str, Any]:
    """What the package holds, from its configs: the markdown describes what ran, not what was meant to."""
    read = lambda part: json.loads((package / part / "config.json").read_text())  # noqa: E731
    t, v, e = read("transformer"), read("vae_decoder"), read("text_encoder")
    return {
        "transformer": {
            k: t.get(k)
            for k in (
                "num_layers",
                "num_attention_heads",
                "attention_head_dim",
                "text_embed_dim",
                "time_embed_dim",
                "patch_size",
                "sample_frames",
                "sample_height",
                "sample_width",
                "use_rotary_positional_embeddings",
            )
        },
        "vae": {
            k: v.get(k)
            for k in (
                "block_out_channels",
                "layers_per_block",
                "latent_channels",
                "temporal_compression_ratio",
                "scaling_factor",
            )
        },
        "text_encoder": {
            k: e.get(k)
            for k in ("d_model", "num_layers", "num_heads", "d_kv", "d_ff", "vocab_size", "feed_forward_proj")
        },
        "shape_range": json.loads((package / "diffrt.json").read_text()).get("shape_range"),
    }


def markdown(report: dict[str, Any]) -> str:
    m, s, p, d = report["machine"], report["settings"], report["preparation"], report["model"]
    t, v, e = d["transformer"], d["vae"], d["text_encoder"]
    versions = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    params = p.get("parameters", {})
    count = lambda n: f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"  # noqa: E731
    offload = "; ".join(f"`{k}`: {val}" for k, val in report["rows_notes"].items()) or "not tried"
    sr = d["shape_range"] or {}
    tokens = s["latent_frames"] * (s["height"] // (8 * t["patch_size"])) * (s["width"] // (8 * t["patch_size"]))
    real = t["num_layers"] == 30 and t["num_attention_heads"] == 30 and v["block_out_channels"] == [128, 256, 256, 512]
    if s["tiny"]:
        caveat = " — **tiny model** (toy sizes, for testing the harness; the timings mean nothing)"
    elif not real:
        caveat = f" — **transformer reduced to {t['num_layers']} of its 30 layers** (see below)"
    else:
        caveat = ""
    depth = (
        ""
        if t["num_layers"] == 30 or s["tiny"]
        else f"- **Reduced: the transformer's depth**, {t['num_layers']} of 30 layers (every layer at its real "
        "width): the disk could not hold the full 6.8 GB fp32 graph plus the copy export writes first. The "
        "transformer's time and weights scale with its layers; the VAE is at its real size.\n"
    )
    lines = [
        f"# Text-to-video: CogVideoX-2b on diffrt (ONNX Runtime CPU) beside diffusers (torch){caveat}",
        "",
        f"`benchmarks/bench_video.py` (`make bench-video`), run {report['date']}, commit {report['commit']}"
        + (f" with uncommitted changes to {', '.join(report['uncommitted'])}" if report["uncommitted"] else "")
        + f". The run took {report['bench_wall_s'] / 60:.1f} minutes"
        + (
            f", {' and '.join(report['built_now'])} of the model included."
            if report["built_now"]
            else " (the model was built and exported before)."
        )
        + " Ratios are diffusers / diffrt: above 1, diffrt is faster or smaller.",
        "",
        f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['ram_gib']} GiB RAM, {m['os']}, Python {m['python']}; {versions}. Load average "
        f"{m['loadavg_before'][0]} before, {m['loadavg_after'][0]} after.",
        "",
        *ratio_lines(report),
        "",
        table(report["rows"]),
        "",
        "Seconds. *other* is the call's time outside the three networks: scheduler, guidance, tokenizing, "
        'postprocessing, and for stage_memory="low" creating and releasing each session. Frame differences are '
        "of frames as floats in [0, 1]; rows with a tiling VAE are compared with diffrt's tiled frames (blended "
        "tiles are not one decode: diffrt's tiled and untiled frames differ by up to "
        f"{report['rows'][0].get('tiled_vs_untiled_max_frame_diff', '—')}).",
        "",
        "## What ran",
        "",
        f"- **Model**: CogVideoX-2b's transformer ({count(params.get('transformer', 0))} parameters: "
        f"{t['num_layers']} layers of {t['num_attention_heads']} heads x {t['attention_head_dim']}, text_embed_dim "
        f"{t['text_embed_dim']}, time_embed_dim {t['time_embed_dim']}, sin-cos positions, patch {t['patch_size']}, "
        f"sample {t['sample_frames']} x {t['sample_height']} x {t['sample_width']}) and its VAE "
        f"({count(params.get('vae', 0))}: block_out_channels {'/'.join(map(str, v['block_out_channels']))}, "
        f"{v['layers_per_block']} layers per block, {v['latent_channels']} latent channels, 8x spatial and "
        f"{v['temporal_compression_ratio']}x temporal compression, scaling factor {v['scaling_factor']}), configs as "
        "THUDM/CogVideoX-2b's, with seeded random weights (each module's default initialization), stored in fp16 as "
        "the real checkpoint is and run in fp32 by both sides; the real scheduler (CogVideoXDDIMScheduler, "
        f"v-prediction, zero-terminal-SNR, trailing, snr_shift_scale 3). `benchmarks/cogvideox2b.py` builds it into "
        f"`{s['source']}` ({p['source_gb']} GB).",
        depth
        + f"- **Reduced: the text encoder.** T5 v1.1 XXL (24 layers, 64 heads x 64, d_ff 10240: 4.76 B parameters, "
        f"19 GB in fp32) does not fit beside the transformer on this {m['ram_gib']:.0f} GiB machine. The run uses a "
        f"T5 of the same architecture ({e['feed_forward_proj']}, relative position buckets) at d_model "
        f"{e['d_model']} (the transformer's text_embed_dim; 226 tokens) with {e['num_layers']} layers, "
        f"{e['num_heads']} heads x {e['d_kv']}, d_ff {e['d_ff']} and the offline test tokenizer's "
        f"{e['vocab_size']}-piece vocabulary (T5's: 32128): {count(params.get('text_encoder', 0))} parameters. Its "
        "time and memory are not CogVideoX-2b's.",
        f"- **Reduced: the video.** {s['num_frames']} frames ({s['latent_frames']} latent frames) at "
        f"{s['height']}x{s['width']} (CogVideoX-2b's default: 49 frames at 480x720), {s['steps']} steps (default "
        f'50), guidance {s["guidance_scale"]} (transformer batch 2), prompt "{s["prompt"]}". The transformer sees '
        f"226 text + {tokens} video tokens per sample (at 49 x 480 x 720: 226 + 17550).",
        "- **Package**: diffrt export with `--no-check` and defaults otherwise (dynamic height, width and frames, "
        "opset 17, fp32) except one: the package's shape range is centred on the run's size, "
        f"{'-'.join(map(str, sr.get('height', [])[::2]))} x {'-'.join(map(str, sr.get('width', [])[::2]))} pixels, "
        "instead of on the transformer's sample size 480x720, so every graph is traced at the run's size "
        "(`cogvideox2b.export_around`). Traced at 480x720, the VAE encoder's export (8 frames) was killed for "
        "memory on this 24 GB machine at 23.3 GB resident. The graphs are the same dynamic graphs either way. "
        f"Into `{s['package']}` ({p['package_gb']} GB: "
        + ", ".join(f"{k} {val} GB" for k, val in p["package_graphs_gb"].items())
        + ")"
        + (
            f"; the export took {p['export']['seconds']:.0f} s at a peak RSS of {p['export']['peak_rss_gb']} GB"
            if "export" in p
            else ""
        )
        + (
            f", building the folder {p['build']['seconds']:.0f} s at {p['build']['peak_rss_gb']} GB"
            if "build" in p
            else ""
        )
        + ".",
        '- **diffrt**: `CogVideoXPipeline.from_pretrained(package, provider="cpu", stage_memory=...)` with '
        "`SessionSettings(cache_dir=None)`: diffrt's graph cache is off (it would add a second copy of the graphs, "
        "as big as the package, on a disk that has no room for it), so every load optimizes the graphs as a first "
        'start does. stage_memory="high" creates every session during the load (timed in it); "low" creates each '
        "at its stage and releases it after (timed in *other*).",
        "- **diffusers**: `diffusers.CogVideoXPipeline.from_pretrained(source, torch_dtype=torch.float32)`, "
        f"torch threads = {s['threads']}. Offload options, as tried on this host: {offload}. So the diffusers "
        "memory options measured are VAE tiling and slicing.",
        f"- **Tiled rows**: `pipe.vae.enable_tiling({', '.join(f'{k}={val}' for k, val in s['tiles'].items())})` and "
        "`pipe.vae.enable_slicing()` on both sides (diffusers' default tile, half the VAE's sample size: 240x360 "
        "for CogVideoX-2b, would be a single tile at this size).",
        '- **Calls**: the same seeded latents (NumPy, handed to both), `output_type="np"`; '
        + ", ".join(
            f"{b}: {'a warm-up call, then the measured one' if b in s['warmup'] else 'its first call measured'}"
            for b in s["backends"]
        )
        + ". Each backend runs in its own fresh process, one after the other; before each, the harness reads its "
        "weight files once (page cache warm). Peak RSS is the child's own `ru_maxrss` (load and calls).",
        "- CPU share other processes took while each child ran: "
        + ", ".join(f"{r['backend']} {100 * r['other_processes_cpu_share']:.0f} %" for r in report["rows"])
        + f". Raw rows: `{report['out']}`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy model sizes at 32x48: tests the harness in seconds")
    parser.add_argument("--work", help="cache folder for the model, package and raw rows (default build/bench-video)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--frames", type=int, help="video frames (4k + 1)")
    parser.add_argument("--size", help="HxW in pixels, multiples of 16")
    parser.add_argument(
        "--transformer-layers",
        type=int,
        help="build the transformer with this many of its 30 layers (a fallback where the disk cannot hold the "
        "full one; cached under build/bench-video/layers-N)",
    )
    parser.add_argument("--out", help="results JSON (default benchmarks/results/video.json)")
    parser.add_argument("--markdown", help='report to write (default benchmarks/VIDEO.md; "" = none)')
    # The child process (one backend); not for direct use.
    parser.add_argument("--child", choices=list(BACKENDS), help=argparse.SUPPRESS)
    for hidden in ("--model", "--settings", "--latents", "--result", "--frames-out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.frames = args.frames_out
        child(args)
        return 0

    started = time.time()
    loadavg, commit, changed = os.getloadavg(), git("rev-parse", "--short", "HEAD"), uncommitted()
    mode = "tiny" if args.tiny else "full"
    settings = dict(MODES[mode])
    if args.steps:
        settings["steps"] = args.steps
    if args.frames:
        settings["frames"] = args.frames
    if args.size:
        settings["height"], settings["width"] = (int(v) for v in args.size.lower().split("x"))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or REFERENCE not in backends:
        raise SystemExit(f"--backends {args.backends!r}: accepted a subset of {', '.join(BACKENDS)} with {REFERENCE}.")
    layers = args.transformer_layers
    default_work = "tiny" if args.tiny else f"layers-{layers}" if layers else ""
    work = Path(args.work) if args.work else ROOT / "build" / "bench-video" / default_work
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (work if args.tiny else BENCH / "results") / "video.json"
    md = args.markdown if args.markdown is not None else ("" if args.tiny else str(BENCH / "VIDEO.md"))

    source, package, preparation, built_now = prepare(mode, work, settings, layers)
    config = json.loads((package / "transformer" / "config.json").read_text())
    latent_frames = (settings["frames"] - 1) // 4 + 1
    shape = (1, latent_frames, config["in_channels"], settings["height"] // 8, settings["width"] // 8)
    np.save(work / "latents.npy", np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32))
    rows, rows_notes = [], {}
    for backend in backends:
        model = package if BACKENDS[backend]["kind"] == "diffrt" else source
        measured = spawn(backend, model, settings, backend in settings["warmup"], work)
        rows_notes.update(measured.pop("notes"))
        rows.append(row_of(backend, measured))
    frame_differences(rows)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(loadavg),
        "commit": commit,
        "commit_at_end": git("rev-parse", "--short", "HEAD"),
        "uncommitted": changed,
        "settings": {
            "tiny": bool(args.tiny),
            "source": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source),
            "package": str(package.relative_to(ROOT) if package.is_relative_to(ROOT) else package),
            "height": settings["height"],
            "width": settings["width"],
            "num_frames": settings["frames"],
            "latent_frames": latent_frames,
            "steps": settings["steps"],
            "guidance_scale": GUIDANCE,
            "prompt": PROMPT,
            "scheduler": "CogVideoXDDIMScheduler (the folder's config, both sides)",
            "dtype": "fp32 (weights stored fp16)",
            "tiles": settings["tiles"],
            "warmup": [b for b in settings["warmup"] if b in backends],
            "backends": backends,
            "threads": usable_cores(),
            "graph_cache": "off (SessionSettings(cache_dir=None))",
            "transformer_layers": model_description(package)["transformer"]["num_layers"],
        },
        "preparation": preparation,
        "built_now": built_now,
        "model": model_description(package),
        "rows": rows,
        "rows_notes": rows_notes,
        "ratios": ratios(rows),
        "bench_wall_s": round(time.time() - started, 1),
        "out": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + table(rows) + "\n\n" + "\n".join(ratio_lines(report)) + f"\n\n({out})")
    if md:
        Path(md).write_text(markdown(report))
        print(f"(report: {md})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
