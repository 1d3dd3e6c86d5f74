"""Scheduler overhead per denoising step: diffrt (NumPy) against diffusers (torch), side by side in one process.

Two numbers per scheduler and side: setup (from_config + set_timesteps, what a server pays per request when it
builds a scheduler) and step (scale_model_input + step, per timestep, averaged over the loop), on SD 1.5's
512 x 512 latent shape with classifier-free guidance (batch 2 x 4 x 64 x 64), fed a fixed model output so that
only the scheduler is timed. diffrt and diffusers runs alternate; the median of the repeats is kept.

    .venv/bin/python benchmarks/bench_schedulers.py [--steps 25] [--repeats 5]

Writes benchmarks/results/schedulers.json and prints a markdown table; the headline is the ratio
diffusers time / diffrt time (above 1: diffrt is faster).
"""

from __future__ import annotations

import argparse
import inspect
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


# Per scheduler: config changes (SD's betas do not suit every scheduler), set_timesteps arguments, and the
# timesteps a pipeline runs (Wuerstchen's and SANA-Sprint's pipelines stop one short of the schedule's end).
CONFIG_CHANGES = {"UnCLIPScheduler": {"beta_schedule": "squaredcos_cap_v2"}}
SET_TIMESTEPS_KWARGS = {"SCMScheduler": {"intermediate_timesteps": None}}
STOP_SHORT = {"DDPMWuerstchenScheduler", "SCMScheduler"}
PER_ITEM_TIMESTEPS = {"DDPMWuerstchenScheduler"}


def drive(scheduler, name: str, steps: int, x, eps, generator) -> tuple[float, float]:
    """Set up ``scheduler`` for ``steps`` and run its loop as its pipeline does: (setup seconds, loop seconds)."""
    start = time.perf_counter()
    scheduler.set_timesteps(steps, **SET_TIMESTEPS_KWARGS.get(name, {}))
    ready = time.perf_counter()
    timesteps = scheduler.timesteps[:-1] if name in STOP_SHORT else scheduler.timesteps
    step = scheduler.step_pred if name == "ScoreSdeVeScheduler" else scheduler.step
    kwargs = {"generator": generator} if "generator" in inspect.signature(step).parameters else {}
    previous_x0 = None
    for i, t in enumerate(timesteps):
        if hasattr(scheduler, "scale_model_input"):  # flow-matching schedulers have none in diffusers
            scheduler.scale_model_input(x, t)
        if name == "CogVideoXDPMScheduler":  # its pipeline hands back the previous x0 and timestep
            as_tuple = {"return_dict": False} if isinstance(x, torch.Tensor) else {}  # diffusers' outputs unpack so
            x, previous_x0 = scheduler.step(
                eps, previous_x0, t, timesteps[i - 1] if i else None, x, **kwargs, **as_tuple
            )
        elif name in PER_ITEM_TIMESTEPS:  # Wuerstchen's pipelines pass one timestep per batch item
            per_item = t.expand(x.shape[0]) if isinstance(x, torch.Tensor) else np.full(x.shape[0], t)
            x = scheduler.step(eps, per_item, x, **kwargs).prev_sample
        elif name == "ScoreSdeVeScheduler":  # the predictor half of its predictor-corrector loop
            x = scheduler.step_pred(eps, t, x, **kwargs).prev_sample
        else:
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return ready - start, time.perf_counter() - ready


def loop_diffrt(name: str, steps: int, x: np.ndarray, eps: np.ndarray) -> tuple[float, float]:
    """(setup seconds, loop seconds); setup includes from_config."""
    start = time.perf_counter()
    scheduler = SCHEDULERS[name].from_config({**SD_CONFIG, **CONFIG_CHANGES.get(name, {})})
    built = time.perf_counter() - start
    setup, loop = drive(scheduler, name, steps, x, eps, np.random.default_rng(0))
    return built + setup, loop


def loop_diffusers(name: str, steps: int, x: torch.Tensor, eps: torch.Tensor) -> tuple[float, float]:
    """(setup seconds, loop seconds); setup includes from_config."""
    start = time.perf_counter()
    scheduler = getattr(diffusers, name).from_config({**SD_CONFIG, **CONFIG_CHANGES.get(name, {})})
    built = time.perf_counter() - start
    setup, loop = drive(scheduler, name, steps, x, eps, torch.Generator().manual_seed(0))
    return built + setup, loop


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
        ours = [loop_diffrt(name, args.steps, x, eps) for _ in range(args.repeats)]
        theirs = [loop_diffusers(name, args.steps, x_t, eps_t) for _ in range(args.repeats)]
        o_setup, o_loop = (1e3 * statistics.median(v) for v in zip(*ours))
        t_setup, t_loop = (1e3 * statistics.median(v) for v in zip(*theirs))
        rows.append(
            {
                "scheduler": name,
                "diffrt_setup_ms": round(o_setup, 2),
                "diffusers_setup_ms": round(t_setup, 2),
                "setup_diffusers_over_diffrt": round(t_setup / o_setup, 2),
                "diffrt_ms_per_step": round(o_loop / args.steps, 3),
                "diffusers_ms_per_step": round(t_loop / args.steps, 3),
                "step_diffusers_over_diffrt": round(t_loop / o_loop, 2),
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
        "ratios": {
            "median_step_diffusers_over_diffrt": round(
                statistics.median(r["step_diffusers_over_diffrt"] for r in rows), 2
            ),
            "median_setup_diffusers_over_diffrt": round(
                statistics.median(r["setup_diffusers_over_diffrt"] for r in rows), 2
            ),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| scheduler | setup ms: diffrt | diffusers | ratio | step ms: diffrt | diffusers | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scheduler']} | {r['diffrt_setup_ms']} | {r['diffusers_setup_ms']} | "
            f"{r['setup_diffusers_over_diffrt']} | {r['diffrt_ms_per_step']} | {r['diffusers_ms_per_step']} | "
            f"{r['step_diffusers_over_diffrt']} |"
        )
    ratios = report["ratios"]
    print(
        f"\nmedian ratio diffusers / diffrt: setup {ratios['median_setup_diffusers_over_diffrt']}, "
        f"step {ratios['median_step_diffusers_over_diffrt']}  ({args.out})"
    )


if __name__ == "__main__":
    main()
