"""The `diffrt` command and `python -m diffrt`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffrt", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert all(name in result.stdout for name in ("info", "schedulers", "tokenize"))


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "diffrt"
    assert script.exists() or shutil.which("diffrt")
    result = subprocess.run([str(script) if script.exists() else "diffrt", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "diffrt 0.1.0" in result.stdout


def test_info_reports_json():
    result = run("info", "--json")
    report = json.loads(result.stdout)
    assert report["diffrt"] == "0.1.0" and "CPUExecutionProvider" in report["onnxruntime providers"]


def test_tokenize_prints_ids(tiny_models):
    result = run("tokenize", str(tiny_models["sd1"]), "a photograph of an astronaut riding a horse")
    assert json.loads(result.stdout)["ids"] == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]


def test_schedulers_shows_a_packages_schedule_like_diffusers(tiny_models):
    result = run("schedulers", str(tiny_models["sd1"]), "--use", "EulerDiscreteScheduler", "--steps", "5")
    assert result.returncode == 0, result.stderr
    reference = diffusers.EulerDiscreteScheduler.from_pretrained(tiny_models["sd1"], subfolder="scheduler")
    reference.set_timesteps(5)
    printed = json.loads(result.stdout.split("timesteps (5): ")[1])
    np.testing.assert_array_equal(printed, reference.timesteps.numpy())


def test_bad_input_is_one_sentence_and_exit_1(tmp_path):
    result = run("tokenize", str(tmp_path / "missing"), "a cat")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("diffrt tokenize: tokenizer folder") and "Traceback" not in result.stderr


def test_schedulers_lists_every_scheduler_with_what_it_swaps_with():
    from diffrt.runtime.schedulers import SCHEDULERS

    listed = {entry["name"]: entry for entry in json.loads(run("schedulers", "--json").stdout)}
    assert set(listed) == set(SCHEDULERS)
    for name, entry in listed.items():
        assert entry["order"] == SCHEDULERS[name].order and entry["summary"]
        assert entry["compatibles"] == sorted(
            c.__name__ for c in SCHEDULERS[name].compatible_classes() if c.__name__ != name
        )
    assert "EulerDiscreteScheduler" in listed["DDIMScheduler"]["compatibles"]
    table = run("schedulers").stdout.splitlines()
    assert table[-1].startswith(f"{len(SCHEDULERS)} schedulers")
