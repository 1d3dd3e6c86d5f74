"""benchmarks/bench_mmdit.py (SD3 / Flux beside diffusers) runs end to end on toy models and reports both families.

Speed is not asserted: only that each family's rows are there with finite, positive numbers and that diffrt and
diffusers made the same image from the same latents, so the full-size run the harness exists for cannot break
unnoticed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_mmdit.py"


def test_the_harness_runs_both_families_on_toy_models(tmp_path):
    out = tmp_path / "mmdit.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--work", str(tmp_path), "--out", str(out), "--size", "32",
               "--tokens", "16", "--sd3-layers", "2", "--flux-blocks", "1", "1", "--reps", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"sd3", "flux"}
    for family, result in results.items():
        for backend in ("diffusers", "diffrt"):
            row = result["rows"][backend]
            for value in (row["load_s"], row["first_call_s"], *row["calls_s"], row["peak_rss_gb"]):
                assert math.isfinite(value) and value > 0, (family, backend, row)
        assert result["max_pixel_diff"] < 2e-3, family  # the same image from the same latents
        assert all(v > 0 for v in result["ratios"].values())
    assert "| sd3 |" in done.stdout and "| flux |" in done.stdout
