"""`make bench-video`'s harness (benchmarks/bench_video.py) runs end to end on its tiny model and writes its report.

Speed is not asserted: only that every backend's row is there with finite, positive numbers and that diffrt and
diffusers made the same video, so that the CogVideoX-2b run the harness exists for cannot break unnoticed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_video.py"
BACKENDS = (
    "diffrt_ort_cpu",
    "diffusers_torch",
    "diffrt_ort_cpu_low",
    "diffrt_ort_cpu_low_tiled",
    "diffusers_torch_tiled",
)
TIMES = ("load_s", "first_call_s", "text_encoder_s", "transformer_step_median_s", "vae_decode_s", "end_to_end_s")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("bench-video")
    out, markdown = work / "video.json", work / "VIDEO.md"
    command = [sys.executable, str(SCRIPT), "--tiny", "--work", str(work), "--out", str(out)]
    done = subprocess.run([*command, "--markdown", str(markdown)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), markdown


def test_report_names_the_machine_commit_model_and_settings(tiny_run):
    report, _ = tiny_run
    assert {"machine", "commit", "uncommitted", "settings", "preparation", "model", "rows", "ratios"} <= report.keys()
    assert report["machine"]["versions"]["onnxruntime"] and report["machine"]["versions"]["diffusers"]
    settings = report["settings"]
    assert settings["tiny"] is True and (settings["height"], settings["width"]) == (32, 48)
    assert settings["num_frames"] == 9 and settings["latent_frames"] == 3 and settings["steps"] == 2
    # The model was built and exported by the run, each step timed with its own peak RSS.
    for step in ("build", "export"):
        assert report["preparation"][step]["seconds"] > 0 and report["preparation"][step]["peak_rss_gb"] > 0
    assert report["model"]["transformer"]["num_layers"] == 2


def test_every_backend_has_finite_positive_numbers(tiny_run):
    report, _ = tiny_run
    rows = {row["backend"]: row for row in report["rows"]}
    assert set(rows) == set(BACKENDS)
    for backend, row in rows.items():
        for key in (*TIMES, "peak_rss_gb", "peak_rss_after_load_gb"):
            assert math.isfinite(row[key]) and row[key] > 0, (backend, key)
        assert len(row["transformer_steps_s"]) == 2 and row["frames_finite"], backend
        assert row["peak_rss_after_load_gb"] <= row["peak_rss_gb"] < 64
        assert row["end_to_end_s"] >= row["text_encoder_s"] + sum(row["transformer_steps_s"]) + row["vae_decode_s"]
        assert 0 <= row["other_processes_cpu_share"] <= 1
        assert row["frames_shape"] == [9, 32, 48, 3]
    # The warm-up is run where the settings say, and the measured call is the one after it.
    assert (
        rows["diffrt_ort_cpu"]["warm_up_end_to_end_s"] > 0
        and rows["diffrt_ort_cpu_low"]["warm_up_end_to_end_s"] is None
    )


def test_diffrt_and_diffusers_made_the_same_video(tiny_run):
    report, _ = tiny_run
    rows = {row["backend"]: row for row in report["rows"]}
    # Same weights, same latents: frames (floats in [0, 1]) agree, untiled with untiled and tiled with tiled.
    assert rows["diffusers_torch"]["frame_diff_vs"] == "diffrt_ort_cpu"
    assert rows["diffusers_torch"]["max_frame_diff"] <= 2e-3
    assert rows["diffusers_torch_tiled"]["frame_diff_vs"] == "diffrt_ort_cpu_low_tiled"
    assert rows["diffusers_torch_tiled"]["max_frame_diff"] <= 2e-3
    # Sessions per stage change memory, not results.
    assert rows["diffrt_ort_cpu_low"]["max_frame_diff"] <= 1e-6


def test_ratios_are_diffusers_over_diffrt(tiny_run):
    report, _ = tiny_run
    ratios, rows = report["ratios"], {row["backend"]: row for row in report["rows"]}
    plain = ratios["diffusers_torch_over_diffrt_ort_cpu"]
    expected = rows["diffusers_torch"]["end_to_end_s"] / rows["diffrt_ort_cpu"]["end_to_end_s"]
    assert plain["end_to_end"] == pytest.approx(expected, rel=0.05)
    assert set(plain) == {"transformer_step", "vae_decode", "end_to_end", "load", "peak_rss"}
    assert ratios["diffusers_torch_tiled_over_diffrt_ort_cpu_low_tiled"]["peak_rss"] > 0
    assert ratios["lowest_peak_rss"]["diffusers_over_diffrt"] > 0


def test_markdown_has_the_table_and_what_was_reduced(tiny_run):
    report, markdown = tiny_run
    text = markdown.read_text()
    assert text.startswith("# Text-to-video") and "tiny model" in text
    for backend in BACKENDS:
        assert f"| {backend} |" in text
    assert "Reduced: the text encoder" in text and "Reduced: the video" in text
    # On a host without an accelerator, diffusers' offload options are recorded as not applicable, with the reason.
    notes = report["rows_notes"]
    assert set(notes) == {"enable_model_cpu_offload", "enable_sequential_cpu_offload"}
    assert all(value == "enabled" or value.startswith("not applicable") for value in notes.values())
