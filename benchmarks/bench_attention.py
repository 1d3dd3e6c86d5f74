"""Attention fused into MultiHeadAttention (SessionSettings.fuse_attention) on one UNet: peak memory and time of a
call on ONNX Runtime's CPU provider, fused vs unfused, and how far the outputs differ.

    .venv/bin/python benchmarks/bench_attention.py build/bench-lora/plain --latent 64 32 --batch 2

Each measurement runs in a fresh child process, so ``ru_maxrss`` is that configuration's own peak (session creation
included; the peak after creation is reported apart). Measurements run one at a time, each after other benchmarks
on this machine (``bench_pipeline``, ``bench_lora_swap``) have finished. The graph cache is off, so every child
builds its session from the package as a first start does; the package is only read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OTHER_BENCHMARKS = "bench_pipeline|bench_lora_swap"


def _peak_so_far() -> float:
    """The process's peak resident set so far (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(package: Path, latent: int, batch: int, calls: int, fused: bool, out: Path) -> dict:
    from diffrt.runtime.engines import SessionSettings, load_engine

    start = time.perf_counter()
    engine = load_engine(package / "unet", "cpu", SessionSettings(fuse_attention=fused, cache_dir=None))
    created = time.perf_counter() - start
    peak_created = _peak_so_far()
    rng = np.random.default_rng(0)
    channels = engine.inputs["sample"].shape[1]
    context = engine.inputs["encoder_hidden_states"].shape[2]
    feeds = {
        "sample": rng.standard_normal((batch, channels, latent, latent), dtype=np.float32),
        "timestep": np.full((batch,), 500.0, np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, context), dtype=np.float32),
    }
    seconds, busy = [], []
    for _ in range(calls):
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = engine.run(feeds)["out_sample"]
        seconds.append(time.perf_counter() - start)
        # CPU seconds per wall second: near the thread count when the call had the cores to itself.
        busy.append((_cpu_seconds() - cpu) / seconds[-1])
    np.save(out, result)
    return {
        "fused": fused,
        "latent": latent,
        "batch": batch,
        "session_s": round(created, 2),
        "call_s": [round(s, 2) for s in seconds],
        "first_call_s": round(seconds[0], 2),
        "later_calls_median_s": round(float(np.median(seconds[1:])), 2) if calls > 1 else None,
        "cores_busy": [round(b, 2) for b in busy],
        "peak_rss_after_session_gb": round(peak_created, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
    }


def wait_for_other_benchmarks() -> None:
    while subprocess.run(["pgrep", "-f", OTHER_BENCHMARKS], capture_output=True).returncode == 0:
        time.sleep(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--latent", type=int, nargs="+", default=[64, 32], help="latent sizes (pixels / 8)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calls", type=int, default=4, help="UNet calls per session (the first one is reported apart)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("LATENT", "FUSED", "NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        latent, fused, npy = args.child
        print(json.dumps(child(args.package, int(latent), args.batch, args.calls, fused == "1", Path(npy))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffrt-bench-attention-") as scratch:
        for latent in args.latent:
            outputs = {}
            for fused in (False, True):
                wait_for_other_benchmarks()
                npy = Path(scratch) / f"{latent}-{int(fused)}.npy"
                command = [sys.executable, __file__, str(args.package), "--batch", str(args.batch)]
                command += ["--calls", str(args.calls)]
                done = subprocess.run(
                    [*command, "--child", str(latent), str(int(fused)), str(npy)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": os.getloadavg()[0]}
                outputs[fused] = np.load(npy)
                rows.append(row)
                print(json.dumps(row), flush=True)
            diff = float(np.abs(outputs[True] - outputs[False]).max())
            scale = float(np.abs(outputs[False]).max())
            rows.append({"latent": latent, "max_abs_diff": diff, "max_abs_output": scale})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
