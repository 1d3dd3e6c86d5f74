"""Scheduler overhead per denoising step: diffrt (NumPy) against diffusers (torch), side by side in one process.

Each scheduler runs its whole loop (set_timesteps, then scale_model_input + step per timestep) on SD 1.5's
512 x 512 latent shape with classifier-free guidance (batch 2 x 4 x 64 x 64), fed a fixed model output so that
only the scheduler is timed. diffrt and diffusers runs alternate; the median of the repeats is kept.

    .venv/bin/python benchmarks/bench_schedulers.py [--steps 25] [--repeats 5]

Writes benchmarks/results/schedulers.json and prints a markdown table; the headline is the ratio
diffusers time / diffrt time (above 1: diffrt is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import diffusers
import numpy as np
import torch

from diffrt.runtime import SCHEDULERS

SD_CONFIG = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
SHAPE = (2, 4, 64, 64)


def loop_diffrt(name: str, steps: int, x: np.ndarray, eps: np.ndarray) -> None:
    scheduler = SCHEDULERS[name].from_config(SD_CONFIG)
    scheduler.set_timesteps(steps)
    rng = np.random.default_rng(0)
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        x = scheduler.step(eps, t, x, generator=rng).prev_sample


def loop_diffusers(name: str, steps: int, x: torch.Tensor, eps: torch.Tensor) -> None:
    scheduler = getattr(diffusers, name).from_config(SD_CONFIG)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "schedulers.json"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE, dtype=np.float32)
    eps = (0.1 * rng.standard_normal(SHAPE)).astype(np.float32)
    x_t, eps_t = torch.from_numpy(x.copy()), torch.from_numpy(eps.copy())
    rows = []
    for name in sorted(SCHEDULERS):
        loop_diffrt(name, args.steps, x, eps)  # warm-up both
        loop_diffusers(name, args.steps, x_t, eps_t)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(timed(loop_diffrt, name, args.steps, x, eps))
            theirs.append(timed(loop_diffusers, name, args.steps, x_t, eps_t))
        ours_ms, theirs_ms = 1e3 * statistics.median(ours), 1e3 * statistics.median(theirs)
        rows.append(
            {
                "scheduler": name,
                "diffrt_ms_per_step": round(ours_ms / args.steps, 3),
                "diffusers_ms_per_step": round(theirs_ms / args.steps, 3),
                "diffusers_over_diffrt": round(theirs_ms / ours_ms, 2),
            }
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.system()} {platform.release()}",
        "commit": commit,
        "shape": list(SHAPE),
        "steps": args.steps,
        "repeats": args.repeats,
        "versions": {"numpy": np.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "rows": rows,
        "ratios": {"median_diffusers_over_diffrt": statistics.median(r["diffusers_over_diffrt"] for r in rows)},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| scheduler | diffrt ms/step | diffusers ms/step | diffusers / diffrt |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scheduler']} | {r['diffrt_ms_per_step']} | {r['diffusers_ms_per_step']} "
            f"| {r['diffusers_over_diffrt']} |"
        )
    print(f"\nmedian ratio diffusers / diffrt: {report['ratios']['median_diffusers_over_diffrt']}  ({args.out})")


if __name__ == "__main__":
    main()
