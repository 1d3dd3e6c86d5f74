"""Peak memory of one 512 x 512 text-to-image call: diffrt with a shared CPU arena, with one arena per session,
and diffusers on torch, each in a fresh process, one after the other, on the same SD 1.5-architecture weights.

diffrt runs with its graph cache warm (a restart: the first process fills it and is not counted), so the rows
compare steady-state servers. Two steps are enough: peak memory does not grow with the step count.

    python benchmarks/bench_memory.py [PACKAGE SOURCE]     # default: build/bench/sd15-package, build/bench/sd15-source
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from children import json_child  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DIFFRT = """
import json, resource, sys
from diffrt.runtime import SessionSettings, StableDiffusionPipeline
settings = SessionSettings(cache_dir=sys.argv[2], shared_arena=sys.argv[3] == "shared")
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], provider="cpu", session_settings=settings)
pipe.set_progress_bar_config(disable=True)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
pipe("a cat", num_inference_steps=2, height=512, width=512, generator=0, output_type="np")
print(json.dumps({"after_load_gb": loaded, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""
DIFFUSERS = """
import json, resource, sys, torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
with torch.no_grad():
    pipe("a cat", num_inference_steps=2, height=512, width=512, generator=torch.Generator().manual_seed(0))
print(json.dumps({"after_load_gb": loaded, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main() -> int:
    package = Path(sys.argv[1]) if len(sys.argv) > 2 else ROOT / "build" / "bench" / "sd15-package"
    source = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "build" / "bench" / "sd15-source"
    with tempfile.TemporaryDirectory(prefix="diffrt-mem-") as cache:
        json_child(DIFFRT, str(package), cache, "shared")  # fills the graph cache
        rows = {
            "diffrt, shared arena (default)": json_child(DIFFRT, str(package), cache, "shared"),
            "diffrt, one arena per session": json_child(DIFFRT, str(package), cache, "own"),
            "diffusers (torch fp32)": json_child(DIFFUSERS, str(source)),
        }
    base = rows["diffrt, shared arena (default)"]["peak_gb"]
    result = {
        "size": "512x512",
        "rows": rows,
        "diffusers_over_diffrt_peak": round(rows["diffusers (torch fp32)"]["peak_gb"] / base, 2),
    }
    (ROOT / "benchmarks" / "results" / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| process | RSS after load GB | peak RSS GB |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['after_load_gb']} | {row['peak_gb']} |")
    print(f"diffusers / diffrt peak: {result['diffusers_over_diffrt_peak']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
