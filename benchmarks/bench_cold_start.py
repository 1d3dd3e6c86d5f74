"""Cold start of a package with and without ONNX Runtime's optimized-graph cache (`SessionSettings.cache_dir`).

Three fresh processes, one after the other, on one package: the cache off; the cache empty (the first start, which
also writes it); the cache filled (every later start). Each times process start -> pipeline loaded -> first image
(256 x 256, one step, guidance on) and reads its peak RSS.

    python benchmarks/bench_cold_start.py [PACKAGE ...]  # default: build/bench/sd15-package (make bench builds it)

With several packages (e.g. the float one and its int8 form, build/bench/sd15-package-int8), each is measured in
turn and benchmarks/results/cold_start.json holds them all.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from children import json_child  # the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from diffrt.runtime import SessionSettings, StableDiffusionPipeline
package, cache = sys.argv[1], sys.argv[2]
settings = SessionSettings(cache_dir=None if cache == "off" else cache)
pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu", session_settings=settings)
pipe.set_progress_bar_config(disable=True)
loaded = time.perf_counter()
pipe("a cat", num_inference_steps=1, height=256, width=256, generator=0, output_type="np")
done = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
row = {"load_s": loaded - start, "first_image_s": done - loaded, "total_s": done - start, "peak_rss_gb": rss}
print(json.dumps(row))
"""


def run(package: Path, cache: str) -> dict:
    return json_child(CHILD, str(package), cache)


def measure(package: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="diffrt-cold-") as cache:
        rows = {"cache off": run(package, "off"), "first start": run(package, cache), "cached": run(package, cache)}
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    result = {"package": str(package), "rows": rows, "cache_gb": round(size / 2**30, 2)}
    result["load_speedup"] = round(rows["cache off"]["load_s"] / rows["cached"]["load_s"], 1)
    print(f"{package}\n| start | load s | first image s | total s | peak RSS GB |\n|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [row[key] for key in ("load_s", "first_image_s", "total_s", "peak_rss_gb")]
        print(f"| {name} | " + " | ".join(f"{value:.2f}" for value in cells) + " |")
    print(f"cache: {result['cache_gb']} GB; load {result['load_speedup']}x faster from the cache", flush=True)
    return result


def main() -> int:
    packages = [Path(p) for p in sys.argv[1:]] or [ROOT / "build" / "bench" / "sd15-package"]
    results = [measure(package) for package in packages]
    out = results[0] if len(results) == 1 else {"packages": results}
    (ROOT / "benchmarks" / "results" / "cold_start.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
