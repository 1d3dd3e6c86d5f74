"""`make bench`'s harness (benchmarks/bench_pipeline.py) runs end to end on the tiny model and writes its report.

Speed is not asserted: only that every documented field is there with sane values, so that the SD 1.5 run the
harness exists for cannot break unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_pipeline.py"
TIMES = ("load_s", "first_call_s", "cold_start_s", "text_encoder_s", "unet_step_median_s", "vae_decode_s")


def load_harness():
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("bench")
    out, history = work / "latest.json", work / "RESULTS.md"
    command = [sys.executable, str(SCRIPT), "--tiny", "--work", str(work), "--out", str(out), "--history", str(history)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), history


def test_report_names_the_machine_commit_and_settings(tiny_run):
    report, _ = tiny_run
    assert {"machine", "commit", "commit_at_end", "uncommitted", "quick", "rows", "ratios", "settings"} <= report.keys()
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["ram_gib"] > 0 and machine["python"]
    assert machine["versions"]["onnxruntime"] and machine["versions"]["diffusers"]
    assert report["quick"] is False and report["settings"]["sizes"] == ["64x64"] and report["settings"]["steps"] == 2


def test_diffrt_and_diffusers_rows_hold_every_stage_with_positive_times(tiny_run):
    report, _ = tiny_run
    rows = {row["backend"]: row for row in report["rows"]}
    for backend in ("diffrt_ort_cpu", "diffusers_torch"):
        row = rows[backend]
        assert row["status"] == "ok" and row["size"] == "64x64"
        for key in TIMES:
            assert row[key] > 0, (backend, key)
        assert row["unet_step_min_s"] <= row["unet_step_median_s"] <= row["unet_step_max_s"]
        assert row["cold_start_s"] == pytest.approx(row["load_s"] + row["first_call_s"], abs=2e-3)
        assert row["end_to_end_s"] >= row["text_encoder_s"] + 2 * row["unet_step_min_s"] + row["vae_decode_s"]
        assert row["glue_per_step_ms"] >= 0 and 0 < row["peak_rss_gb"] < 64
        assert 0 <= row["other_processes_cpu_share"] <= 1
        assert row["max_pixel_diff_vs_diffrt"] <= 2  # same weights, same noise: the same image
    # diffrt also restarts once with the graph cache its first start wrote.
    diffrt = rows["diffrt_ort_cpu"]
    assert diffrt["restart_cold_start_s"] > 0 and diffrt["restart_load_s"] > 0 and diffrt["graph_cache_gb"] > 0
    # OpenVINO is optional: measured, or skipped with the reason.
    assert rows["openvino_cpu"]["status"] == "ok" or rows["openvino_cpu"]["reason"]


def test_ratios_are_peer_over_diffrt(tiny_run):
    report, _ = tiny_run
    ratios, rows = report["ratios"], {row["backend"]: row for row in report["rows"]}
    expected = rows["diffusers_torch"]["end_to_end_s"] / rows["diffrt_ort_cpu"]["end_to_end_s"]
    assert ratios["diffusers_torch_over_diffrt_ort_cpu"] == pytest.approx(expected, rel=0.05)
    assert ratios["headline_size"] == "64x64"
    for key in ("cold_start_", "restart_", "peak_rss_", "unet_step_"):
        assert ratios[f"{key}diffusers_torch_over_diffrt_ort_cpu"]["64x64"] > 0


def test_history_gets_a_dated_section_with_the_table(tiny_run):
    _, history = tiny_run
    text = history.read_text()
    assert text.startswith("# Text-to-image latency")
    assert "## " in text and "| diffrt_ort_cpu | 64x64 |" in text and "| diffusers_torch | 64x64 |" in text


def test_history_keeps_older_runs_below_the_newest(tmp_path):
    harness = load_harness()
    path = tmp_path / "RESULTS.md"
    harness.record_history(path, "## first run\n")
    harness.record_history(path, "## second run\n")
    text = path.read_text()
    assert text.index("## second run") < text.index("## first run")
    assert text.index(harness.HISTORY_MARK) < text.index("## second run")
