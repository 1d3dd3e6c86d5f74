"""``diffrt generate``: the command line runs the same pipelines as Python and says clearly what it refuses."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from diffrt.cli import main
from diffrt.runtime.pipelines import (
    DDPMPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffrt.runtime.schedulers import EulerAncestralDiscreteScheduler


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_generate_writes_the_text_to_image_result_of_the_same_settings(packages, tmp_path, capsys):
    out = tmp_path / "cube.png"
    args = [str(packages["sd1"]), "a red cube", "--negative", "blue", "--steps", "3", "--guidance", "5"]
    assert main(["generate", *args, "--seed", "7", "--size", "24x40", "--out", str(out)]) == 0
    expected = quiet(StableDiffusionPipeline.from_pretrained(packages["sd1"]))(
        "a red cube",
        negative_prompt="blue",
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=7,
        height=24,
        width=40,
    ).images[0]
    assert np.array_equal(pixels(out), np.asarray(expected))
    captured = capsys.readouterr()
    assert str(out) in captured.out and "StableDiffusionPipeline" in captured.out
    assert "3/3" in captured.err  # the progress bar over steps


def test_generate_with_image_and_scheduler_runs_image_to_image(packages, tmp_path):
    source = tmp_path / "in.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(source)
    out = tmp_path / "out.png"
    argv = ["generate", str(packages["sd1"]), "a cat", "--image", str(source), "--strength", "0.5", "--steps", "4"]
    assert main([*argv, "--scheduler", "EulerAncestralDiscreteScheduler", "--seed", "1", "--out", str(out)]) == 0
    pipe = quiet(StableDiffusionImg2ImgPipeline.from_pretrained(packages["sd1"]))
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(
        "a cat", image=PIL.Image.open(source).convert("RGB"), strength=0.5, num_inference_steps=4, generator=1
    ).images[0]
    assert np.array_equal(pixels(out), np.asarray(expected))


def test_generate_with_mask_inpaints_and_numbers_several_outputs(packages, tmp_path):
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    PIL.Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(image)
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    PIL.Image.fromarray(m).save(mask)
    out = tmp_path / "fill.png"
    argv = ["generate", str(packages["inpaint"]), "a hole", "--image", str(image), "--mask", str(mask)]
    assert main([*argv, "--steps", "2", "--seed", "3", "--num-images", "2", "--out", str(out)]) == 0
    expected = quiet(StableDiffusionInpaintPipeline.from_pretrained(packages["inpaint"]))(
        "a hole",
        image=PIL.Image.open(image).convert("RGB"),
        mask_image=PIL.Image.open(mask),
        num_inference_steps=2,
        generator=3,
        num_images_per_prompt=2,
    ).images
    for i in range(2):
        assert np.array_equal(pixels(tmp_path / f"fill-{i}.png"), np.asarray(expected[i]))


def test_generate_runs_a_ddpm_package_without_a_prompt(packages, tmp_path):
    out = tmp_path / "ddpm.png"
    assert main(["generate", str(packages["ddpm"]), "--steps", "2", "--seed", "0", "--out", str(out)]) == 0
    expected = quiet(DDPMPipeline.from_pretrained(packages["ddpm"]))(num_inference_steps=2, generator=0).images[0]
    assert np.array_equal(pixels(out), np.asarray(expected))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--mask", "m.png"], "--mask needs --image"),
        (["--scheduler", "Nope"], "--scheduler 'Nope' is unknown"),
        (["--scheduler", "DDIMInverseScheduler"], "runs image to noise (inversion)"),
        (["--size", "33x32"], "height=33 is not a multiple of 2"),
        (["--image", "missing.png"], "--image 'missing.png' is not a readable image"),
    ],
)
def test_generate_refuses_bad_arguments_in_one_line(packages, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", str(packages["sd1"]), "a cat", "--steps", "1", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffrt generate: ") and message in err
    assert not (tmp_path / "out.png").exists()


def test_generate_opens_an_sdxl_package_and_passes_the_second_prompts(sdxl_packages, tmp_path):
    from diffrt.runtime.pipelines import StableDiffusionXLPipeline

    out = tmp_path / "xl.png"
    argv = ["generate", str(sdxl_packages["sdxl"]), "a red cube", "--prompt-2", "oil painting", "--negative", "blue"]
    assert main([*argv, "--negative-prompt-2", "dark", "--steps", "2", "--seed", "5", "--out", str(out)]) == 0
    expected = quiet(StableDiffusionXLPipeline.from_pretrained(sdxl_packages["sdxl"]))(
        "a red cube",
        prompt_2="oil painting",
        negative_prompt="blue",
        negative_prompt_2="dark",
        num_inference_steps=2,
        generator=5,
    ).images[0]
    assert np.array_equal(pixels(out), np.asarray(expected))
    other = quiet(StableDiffusionXLPipeline.from_pretrained(sdxl_packages["sdxl"]))(
        "a red cube", negative_prompt="blue", num_inference_steps=2, generator=5
    ).images[0]
    assert not np.array_equal(pixels(out), np.asarray(other))  # the second prompts reached the second encoder


def test_generate_refuses_second_prompts_for_a_single_encoder_package(packages, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", str(packages["sd1"]), "a cat", "--steps", "1", "--prompt-2", "a dog"]) == 1
    err = capsys.readouterr().err
    assert "--prompt-2 apply only to SDXL, SD3 and Flux packages" in err and "StableDiffusionPipeline" in err
    assert not (tmp_path / "out.png").exists()
