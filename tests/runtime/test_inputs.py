"""Careless and hostile call inputs: each refused in one sentence naming the argument before any network runs, or
taken as users mean it (uint8 arrays, any PIL mode); a result that turns non-finite stops at the step it did."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from diffrt.cli import main
from diffrt.runtime.errors import ConfigError, NonFiniteError
from diffrt.runtime.pipelines import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffrt.runtime.pipelines.inputs import Limits

PROMPT = "a red cube"


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def t2i(packages):
    return quiet(StableDiffusionPipeline.from_pretrained(packages["sd1"], provider="cpu"))


@pytest.fixture(scope="module")
def i2i(t2i):
    return quiet(StableDiffusionImg2ImgPipeline.from_pipe(t2i))


@pytest.fixture(scope="module")
def inpaint(packages):
    return quiet(StableDiffusionInpaintPipeline.from_pretrained(packages["inpaint"], provider="cpu"))


def rgb(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def square_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 8:24] = 255
    return mask


# ----- finite or refused ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(guidance_scale=float("inf")), ["guidance_scale=inf", "finite"]),
        (dict(guidance_scale=float("nan")), ["guidance_scale=nan"]),
        (dict(guidance_rescale=float("nan")), ["guidance_rescale=nan"]),
        (dict(eta=float("nan")), ["eta=nan", "0 to 1"]),
        (dict(eta=1e9), ["eta=1000000000.0", "0 to 1"]),
        (dict(latents=np.full((1, 4, 16, 16), np.nan, np.float32)), ["latents", "non-finite"]),
        (dict(prompt=None, prompt_embeds=np.full((1, 77, 32), np.inf, np.float32)), ["prompt_embeds", "non-finite"]),
    ],
)
def test_non_finite_arguments_are_refused_naming_them(t2i, kwargs, names):
    with pytest.raises(ConfigError) as error:
        t2i(**{"prompt": PROMPT, "num_inference_steps": 1, **kwargs})
    assert all(name in str(error.value) for name in names), str(error.value)


def test_non_finite_image_and_mask_pixels_are_refused(i2i, inpaint):
    image = rgb().astype(np.float32) / 255
    image[3, 4, 1] = np.nan
    with pytest.raises(ConfigError, match="image holds 1 non-finite pixels"):
        i2i(PROMPT, image=image, num_inference_steps=2)
    mask = np.where(np.eye(32) > 0, np.nan, 0.5).astype(np.float32)
    with pytest.raises(ConfigError, match="mask_image holds 32 non-finite pixels"):
        inpaint(PROMPT, image=rgb(), mask_image=mask, num_inference_steps=2)


def test_latents_turning_non_finite_mid_run_stop_the_call_naming_the_step(t2i, packages):
    # PNDM runs 3 steps as 4 UNet calls (its first step is repeated): the error counts UNet steps. The UNet runs
    # uncached here: where the graph comes from the graph cache (another test made it), the same overflowing
    # activations come out of its GroupNorms as zeros rather than NaN, and the latents stay finite.
    from diffrt.runtime.engines import SessionSettings

    uncached = StableDiffusionPipeline.from_pretrained(
        packages["sd1"], provider="cpu", session_settings=SessionSettings(cache_dir=None)
    )
    with pytest.raises(NonFiniteError, match=r"at step [12] of 4 \(timestep"):
        quiet(uncached)(PROMPT, guidance_scale=1e38, num_inference_steps=3, output_type="latent")  # overflows

    def poison(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] * np.nan} if step == 1 else {}

    with pytest.raises(NonFiniteError, match="at step 2 of 4 .* after callback_on_step_end"):
        t2i(PROMPT, num_inference_steps=3, callback_on_step_end=poison)


# ----- images as users pass them ---------------------------------------------------------------------------------
def test_uint8_arrays_are_read_as_0_to_255(i2i):
    pixels = rgb(1)
    common = dict(prompt=PROMPT, strength=0.6, num_inference_steps=3, output_type="np")
    from_array = i2i(image=pixels, generator=1, **common).images
    from_pil = i2i(image=PIL.Image.fromarray(pixels), generator=1, **common).images
    from_floats = i2i(image=pixels.astype(np.float32) / 255, generator=1, **common).images
    assert np.abs(from_array - from_pil).max() < 1e-5 and np.abs(from_array - from_floats).max() < 1e-5


def test_float_images_outside_0_to_1_are_refused_with_their_range(i2i):
    with pytest.raises(ConfigError, match=r"image holds values from \d+ to 255 .*divide it by 255"):
        i2i(PROMPT, image=rgb().astype(np.float32), num_inference_steps=2)
    with pytest.raises(ConfigError, match="image holds values from -1 to 1"):
        i2i(PROMPT, image=np.linspace(-1, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3), num_inference_steps=2)


def test_images_of_any_pil_mode_are_made_rgb_and_masks_l(i2i, inpaint):
    picture = PIL.Image.fromarray(rgb(2))
    common = dict(prompt=PROMPT, strength=0.7, num_inference_steps=2, output_type="np", generator=2)
    as_rgb = i2i(image=picture, **common).images
    as_rgba = i2i(image=picture.convert("RGBA"), **common).images  # was taken for 4-channel latents
    assert as_rgba.shape == as_rgb.shape == (1, 32, 32, 3) and np.abs(as_rgba - as_rgb).max() < 1e-6
    grey = i2i(image=picture.convert("L"), **common).images
    assert grey.shape == (1, 32, 32, 3)
    mask = PIL.Image.fromarray(square_mask())
    common = dict(prompt=PROMPT, image=picture, num_inference_steps=2, output_type="np", generator=3)
    assert (
        np.abs(
            inpaint(mask_image=mask.convert("RGBA"), **common).images - inpaint(mask_image=mask, **common).images
        ).max()
        < 1e-6
    )


def test_channels_first_arrays_are_refused_with_the_fix(i2i):
    with pytest.raises(ConfigError, match=r"image has shape \(3, 32, 32\) \(channels first.*transpose"):
        i2i(PROMPT, image=rgb().transpose(2, 0, 1), num_inference_steps=2)


# ----- sizes and limits ------------------------------------------------------------------------------------------
def test_a_zero_size_is_refused_not_replaced_by_the_default(t2i):
    with pytest.raises(ConfigError, match="height=0"):
        t2i(PROMPT, height=0, width=32, num_inference_steps=1)
    with pytest.raises(ConfigError, match="width=0"):
        t2i(PROMPT, height=32, width=0, num_inference_steps=1)


def test_sizes_and_batches_beyond_what_the_package_was_exported_for_are_refused(t2i, packages):
    with pytest.raises(ConfigError, match="height=2048 is outside 16 to 64 pixels.*diffrt.json"):
        t2i(PROMPT, height=2048, width=2048, num_inference_steps=1)
    with pytest.raises(ConfigError, match="makes 10000 images.*more than 4"):
        t2i(PROMPT, num_images_per_prompt=10000, num_inference_steps=1)
    wider = quiet(StableDiffusionPipeline.from_pretrained(packages["sd1"], limits=Limits(height=(8, 80), batch=5)))
    images = wider(PROMPT, height=80, width=16, num_images_per_prompt=5, num_inference_steps=1, output_type="latent")
    assert images.images.shape == (5, 4, 40, 8)


def test_input_images_beyond_the_pixel_budget_are_refused_before_decoding(i2i):
    huge = PIL.Image.new("1", (9000, 9000))  # 81 megapixels: 1 GB as float RGB
    with pytest.raises(ConfigError, match="81000000 pixels, more than the 16777216"):
        i2i(PROMPT, image=huge, num_inference_steps=2)


# ----- callbacks -----------------------------------------------------------------------------------------------
def test_a_callback_that_is_not_callable_or_returns_no_dict_is_refused(t2i):
    with pytest.raises(ConfigError, match="callback_on_step_end=5 is not callable"):
        t2i(PROMPT, callback_on_step_end=5, num_inference_steps=1)
    with pytest.raises(ConfigError, match="callback_on_step_end returned list"):
        t2i(PROMPT, callback_on_step_end=lambda pipe, i, t, tensors: [1], num_inference_steps=1)


# ----- the command line: one line, exit 1, before any work ----------------------------------------------------------
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seed", "-1"], "--seed -1 is not accepted; give an integer >= 0"),
        (["--strength", "0.5"], "--strength needs --image"),
        (["--out", "{tmp}/picture.txt"], "has no image file extension"),
        (["--size", "2048x2048"], "height=2048 is outside"),
        (["--size", "0x32"], "height=0"),
    ],
)
def test_generate_refuses_bad_flags_in_one_line(packages, tmp_path, capsys, extra, message):
    extra = [e.format(tmp=tmp_path) for e in extra]
    assert (
        main(["generate", str(packages["sd1"]), PROMPT, "--steps", "1", "--out", str(tmp_path / "x.png"), *extra]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())  # nothing generated, nothing written


def test_generate_refuses_a_decompression_bomb_image(packages, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("1", (9000, 9000)).save(bomb)  # ~20 KB on disk
    assert bomb.stat().st_size < 100_000
    out = tmp_path / "out.png"
    assert main(["generate", str(packages["sd1"]), PROMPT, "--image", str(bomb), "--out", str(out)]) == 1
    assert "9000x9000 pixels, more than the 16777216" in capsys.readouterr().err
    assert not out.exists()
