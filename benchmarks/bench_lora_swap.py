"""Changing LoRA adapters on an SD 1.5-size package: `diffrt lora apply` against a full re-export.

Builds a Stable Diffusion 1.5-architecture diffusers folder with random weights (the real configs: 860 M-parameter
UNet, ViT-L text encoder) and a rank-8 PEFT adapter on the UNet's and text encoder's attention projections. Then:
1. exports the folder without adapters (the package a user already has);
2. re-exports it with the adapter (what changing adapters costs without `lora apply`);
3. applies the adapter to the package from step 1 with `diffrt lora apply` (in a child process, for its peak RSS);
4. checks that 2 and 3 hold the same weights, initializer for initializer.

    python benchmarks/bench_lora_swap.py [WORKDIR]     # default build/bench-lora; results in benchmarks/results/
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from sd15 import build_lora, build_source  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent


def timed_child(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter; return (seconds, peak RSS in GB)."""
    wrapper = (
        "import resource, time\nstart = time.perf_counter()\n"
        + code
        + "\nprint('RESULT', time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True).stdout
    seconds, rss_kb = out.strip().splitlines()[-1].split()[1:]
    return float(seconds), float(rss_kb) / 2**20


def export_code(source: Path, out: Path, lora: Path | None) -> str:
    loras = f"loras=({str(lora)!r},), " if lora else ""
    return (
        "from diffrt.export.package import ExportOptions, export_package\n"
        "from diffrt.export.source import load_source\n"
        f"export_package(load_source({str(source)!r}), {str(out)!r}, ExportOptions({loras}force=True))"
    )


def same_weights(a: Path, b: Path) -> tuple[int, float]:
    import onnx
    from onnx import numpy_helper

    compared, worst = 0, 0.0
    for network in ("unet", "text_encoder"):
        left = {i.name: i for i in onnx.load(str(a / network / "model.onnx")).graph.initializer}
        right = {i.name: i for i in onnx.load(str(b / network / "model.onnx")).graph.initializer}
        assert left.keys() == right.keys(), network
        for name in left:
            x, y = numpy_helper.to_array(left[name]), numpy_helper.to_array(right[name])
            worst = max(worst, float(np.abs(x.astype(np.float64) - y).max()) if x.size else 0.0)
            compared += 1
        del left, right
    return compared, worst


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "bench-lora"
    work.mkdir(parents=True, exist_ok=True)
    source = build_source(work / "sd15-random")
    adapter = build_lora(source, work / "adapter")  # rank 8 on the attention projections
    results: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    plain, reexport, applied = work / "plain", work / "reexport", work / "applied"
    results["export_plain_s"], results["export_plain_rss_gb"] = timed_child(export_code(source, plain, None))
    results["reexport_with_lora_s"], results["reexport_rss_gb"] = timed_child(export_code(source, reexport, adapter))
    provenance = json.loads((reexport / "diffrt.json").read_text())
    results["reexport_graph_export_only_s"] = round(
        sum(n["export_seconds"] for n in provenance["networks"].values()), 1
    )
    apply = (
        "from diffrt.runtime.lora import LoraSpec\nfrom diffrt.export.lora_package import apply_loras\n"
        f"apply_loras({str(plain)!r}, {str(applied)!r}, (LoraSpec.parse({str(adapter)!r}),), force=True)"
    )
    results["lora_apply_s"], results["lora_apply_rss_gb"] = timed_child(apply)
    results["speedup_vs_reexport"] = round(results["reexport_with_lora_s"] / results["lora_apply_s"], 1)
    results["initializers_compared"], results["max_abs_difference"] = same_weights(applied, reexport)
    results["modules"] = provenance["loras"][0]["modules"]
    out = ROOT / "benchmarks" / "results" / "lora_swap.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
