"""The bundled video model (models/digits-video) end to end: exported, run by the torch-free runtime, judged.

No training happens here: the committed weights are exported once, then CogVideoXPipeline makes a clip for every
digit x direction ("a handwritten digit 3 moving left", "a handwritten seven moving up", ...). A classifier trained
on scikit-learn's digits must recognise the prompted digit in the frames, and the ink's motion must go the prompted
way, for at least 80 % of the clips each. `make demo-video`'s script writes its .gif, .mp4 and frame strip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.digits import train_classifier
from fixtures.video_digits import clip_prompts, judge_clips

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits-video"
STEPS, GUIDANCE, BATCH = 20, 5.0, 10


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    out = tmp_path_factory.mktemp("digits-video") / "package"
    return export_package(load_source(MODEL), out, ExportOptions(batch=BATCH, check=False)).path


def test_committed_weights_are_small():
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20e6
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"


def test_clips_show_the_prompted_digit_moving_the_prompted_way(package):
    from diffrt.runtime.demo_video import generate
    from diffrt.runtime.pipelines import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(package, provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts, digits, directions = clip_prompts()
    length = pipe.transformer_config["max_text_seq_length"]
    clips = generate(pipe, prompts, STEPS, GUIDANCE, seed=0, batch=BATCH, max_sequence_length=length)
    assert clips.shape[:2] == (len(prompts), 9)
    judged_digits, judged_directions = judge_clips(clips, train_classifier())
    digit_accuracy = float(np.mean(judged_digits == digits))
    direction_accuracy = float(np.mean([a == b for a, b in zip(judged_directions, directions)]))
    print(f"digits {digit_accuracy:.3f}, directions {direction_accuracy:.3f} over {len(prompts)} clips")
    assert digit_accuracy >= 0.8
    assert direction_accuracy >= 0.8


def test_the_demo_script_writes_gif_mp4_and_strip(package, tmp_path):
    from diffrt.runtime import load_video

    result = subprocess.run(
        [sys.executable, "-m", "diffrt.runtime.demo_video", str(package), "--steps", "4", "--provider", "cpu",
         "--out", str(tmp_path / "demo.gif"), "--mp4", str(tmp_path / "demo.mp4"), "--strip", str(tmp_path / "s.png")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    gif, mp4 = load_video(tmp_path / "demo.gif"), load_video(tmp_path / "demo.mp4")
    assert len(gif) == len(mp4) == 9
    assert (tmp_path / "s.png").stat().st_size > 0
