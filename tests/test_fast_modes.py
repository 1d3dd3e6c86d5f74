"""The fast CPU modes keep the bundled digits model's pictures: int8, DeepCache caching, both, and the tiny VAE each
draw the 80 prompted digits (the demo test's prompts, seeds and judge) with accuracy within 2 points of the exact
mode. The measurement is benchmarks/quality.py's, whose numbers benchmarks/QUALITY.md reports; int8 is calibrated on
other wordings than the judged prompts."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"
MODES = ("exact fp32", "int8", "cached, interval 3, branch 0", "tiny VAE decode", "int8 + cached (3, 0) + tiny VAE")


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(quality, tmp_path_factory):
    modes = {name: quality.DIGIT_MODES[name] for name in MODES}
    return quality.measure_digits(tmp_path_factory.mktemp("quality"), modes)


def test_every_fast_mode_keeps_digits_accuracy_within_two_points(measured):
    exact = measured["exact fp32"]["accuracy"]
    assert exact >= 0.9
    for name in MODES[1:]:
        assert measured[name]["accuracy"] >= exact - 0.02, (name, measured[name], exact)


def test_the_fast_modes_really_compute_something_else(measured):
    """Each mode changes pixels (it is not the exact path under another name), yet stays a picture of the same
    digits: mean differences of a few levels out of 255."""
    for name in MODES[1:]:
        assert 0 < measured[name]["mean_pixel_diff"] < 12, (name, measured[name])
