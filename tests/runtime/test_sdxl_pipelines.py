"""Stable Diffusion XL pipelines: each diffrt SDXL pipeline on an exported tiny package against the diffusers
pipeline on the folder it was exported from, same weights and same noise (see pipeline_parity), images as floats
in [0, 1] within 2e-3; then AutoPipeline's SDXL mapping and the errors SDXL calls give."""

from __future__ import annotations

import contextlib

import numpy as np
import PIL.Image
import pytest
from concurrency import assert_concurrent_calls_match_calls_alone
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers, shared_noise

import diffrt.runtime.pipelines as ours
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

PROMPT = "a photograph of an astronaut riding a horse"
STEPS = 3


def make_image(seed: int, width: int = 48, height: int = 32) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 3.0)], axis=-1)
    noise = rng.uniform(-0.15, 0.15, size=base.shape)
    return PIL.Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8))


def make_mask(width: int = 48, height: int = 32) -> PIL.Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 : width - 4] = 255
    return PIL.Image.fromarray(mask, mode="L")


@pytest.fixture(scope="module")
def pipes(sdxl_packages, sdxl_models):
    """(diffrt pipeline, diffusers pipeline) per package and class, each loaded once."""
    import diffusers  # noqa: F401  (imported before shared_noise walks sys.modules)

    cache = {}

    def get(kind: str, class_name: str):
        key = (kind, class_name)
        if key not in cache:
            mine = getattr(ours, class_name).from_pretrained(sdxl_packages[kind], provider="cpu")
            cache[key] = (mine, load_diffusers(class_name, sdxl_models[kind]))
        return cache[key]

    return get


@contextlib.contextmanager
def scheduler(mine, theirs, name: str):
    """Both pipelines on scheduler ``name`` built from their own configs, restored afterwards."""
    import diffusers

    original = (mine.scheduler, theirs.scheduler)
    mine.scheduler = SCHEDULERS[name].from_config(dict(mine.scheduler.config))
    theirs.scheduler = getattr(diffusers, name).from_config(theirs.scheduler.config)
    try:
        yield
    finally:
        mine.scheduler, theirs.scheduler = original


def diffusers_latents(pipe, seed: int, **kwargs) -> np.ndarray:
    import torch

    with shared_noise(seed), torch.no_grad():
        return pipe(**kwargs, output_type="latent").images.numpy()


# ----- text-to-image -------------------------------------------------------------------------------------------
TEXT_CASES = {
    "defaults-zero-negative": dict(prompt=PROMPT),
    "empty-negative-encoded": dict(prompt=PROMPT, negative_prompt=""),
    "prompt-2-and-negatives": dict(
        prompt=PROMPT, prompt_2="a red cube", negative_prompt="blurry", negative_prompt_2="low quality"
    ),
    "negative-prompt-2-only": dict(prompt=PROMPT, negative_prompt="dark", negative_prompt_2=None),
    "size-conditioning": dict(
        prompt=PROMPT, original_size=(128, 96), crops_coords_top_left=(8, 4), target_size=(48, 64)
    ),
    "negative-size-conditioning": dict(
        prompt=PROMPT,
        negative_original_size=(32, 32),
        negative_crops_coords_top_left=(2, 6),
        negative_target_size=(80, 40),
    ),
    "negative-size-conditioning-two-images": dict(
        prompt=["a cat", "a dog"],
        num_images_per_prompt=2,
        negative_original_size=(32, 32),
        negative_target_size=(80, 40),
    ),
    "clip-skip": dict(prompt=PROMPT, clip_skip=1),
    "images-per-prompt": dict(prompt=["a cat", "a dog"], prompt_2=["snow", "rain"], num_images_per_prompt=2),
    "guidance-rescale": dict(prompt=PROMPT, negative_prompt="grey", guidance_rescale=0.7),
    "no-guidance": dict(prompt=PROMPT, guidance_scale=1.0),
    "non-square": dict(prompt=PROMPT, height=48, width=64),
    "denoising-end": dict(prompt=PROMPT, denoising_end=0.5, num_inference_steps=4),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_to_image_matches_diffusers(pipes, case):
    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    kwargs = {"num_inference_steps": STEPS, **TEXT_CASES[case]}
    assert_images_close(run_diffrt(mine, 11, **kwargs), run_diffusers(theirs, 11, **kwargs))


@pytest.mark.parametrize(
    "name", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler"]
)
def test_text_to_image_matches_diffusers_with_scheduler(pipes, name):
    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    kwargs = dict(prompt=PROMPT, negative_prompt="grey", num_inference_steps=4, denoising_end=0.9)
    with scheduler(mine, theirs, name):
        assert_images_close(run_diffrt(mine, 13, **kwargs), run_diffusers(theirs, 13, **kwargs))


@pytest.mark.parametrize(
    "custom", [dict(timesteps=[999, 700, 420, 150, 15]), dict(sigmas=[14.6, 4.0, 1.2, 0.3, 0.0])], ids=["t", "s"]
)
def test_text_to_image_with_a_custom_schedule_matches_diffusers(pipes, custom):
    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    kwargs = dict(prompt=PROMPT, negative_prompt="grey", **custom)
    with scheduler(mine, theirs, "EulerDiscreteScheduler"):
        assert_images_close(run_diffrt(mine, 14, **kwargs), run_diffusers(theirs, 14, **kwargs))


def test_image_to_image_with_custom_timesteps_and_denoising_start_matches_diffusers(pipes):
    mine, theirs = pipes("sdxl_refiner", "StableDiffusionXLImg2ImgPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(2), denoising_start=0.5, timesteps=[999, 800, 600, 400, 200, 10])
    with scheduler(mine, theirs, "EulerDiscreteScheduler"):
        assert_images_close(run_diffrt(mine, 15, **kwargs), run_diffusers(theirs, 15, **kwargs))


def test_text_to_image_with_given_embeddings_and_latents_matches_diffusers(pipes):
    import torch

    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    rng = np.random.default_rng(5)
    tensors = dict(
        prompt_embeds=rng.standard_normal((1, 77, 64), dtype=np.float32),
        negative_prompt_embeds=rng.standard_normal((1, 77, 64), dtype=np.float32),
        pooled_prompt_embeds=rng.standard_normal((1, 32), dtype=np.float32),
        negative_pooled_prompt_embeds=rng.standard_normal((1, 32), dtype=np.float32),
        latents=rng.standard_normal((1, 4, 32, 32), dtype=np.float32),
    )
    theirs_images = run_diffusers(
        theirs, 0, num_inference_steps=STEPS, **{k: torch.from_numpy(v) for k, v in tensors.items()}
    )
    assert_images_close(run_diffrt(mine, 0, num_inference_steps=STEPS, **tensors), theirs_images)


def test_step_callback_sees_and_replaces_sdxl_tensors_as_in_diffusers(pipes):
    mine, theirs = pipes("sdxl", "StableDiffusionXLPipeline")
    seen = {"mine": [], "theirs": []}

    def callback(side):
        def on_step(pipe, i, t, tensors):
            seen[side].append({k: np.asarray(v).shape for k, v in tensors.items()})
            return {"add_time_ids": tensors["add_time_ids"] * 2} if i == 0 else {}  # new sizes from step 2 on

        return on_step

    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, callback_on_step_end_tensor_inputs=names)
    ours_images = run_diffrt(mine, 2, callback_on_step_end=callback("mine"), **kwargs)
    theirs_images = run_diffusers(theirs, 2, callback_on_step_end=callback("theirs"), **kwargs)
    assert seen["mine"] == seen["theirs"] and len(seen["mine"]) == STEPS
    assert seen["mine"][0]["add_time_ids"] == (2, 6) and seen["mine"][0]["add_text_embeds"] == (2, 32)
    assert_images_close(ours_images, theirs_images)


# ----- image-to-image ------------------------------------------------------------------------------------------
IMG2IMG_CASES = {
    "base-strength-0.6": ("sdxl", dict(prompt=PROMPT, image=make_image(0), strength=0.6)),
    "base-negative-sizes": (
        "sdxl",
        dict(
            prompt=PROMPT,
            image=make_image(4),
            negative_original_size=(20, 24),
            negative_crops_coords_top_left=(3, 1),  # diffusers' negative ids take the positive crop corner here
            negative_target_size=(40, 40),
        ),
    ),
    "base-denoising-end": ("sdxl", dict(prompt=PROMPT, image=make_image(5), strength=0.9, denoising_end=0.6)),
    "base-batch": ("sdxl", dict(prompt=["a cat", "a dog"], image=make_image(1), num_images_per_prompt=2)),
    "refiner-aesthetic-scores": (
        "sdxl_refiner",
        dict(prompt=PROMPT, image=make_image(2), strength=0.7, aesthetic_score=7.5, negative_aesthetic_score=1.5),
    ),
    "refiner-negative-sizes": (
        "sdxl_refiner",
        dict(
            prompt=PROMPT,
            negative_prompt="blurry",
            image=make_image(3),
            strength=0.8,
            negative_original_size=(20, 20),
            negative_crops_coords_top_left=(3, 1),
        ),
    ),
}


@pytest.mark.parametrize("case", list(IMG2IMG_CASES))
def test_image_to_image_matches_diffusers(pipes, case):
    kind, kwargs = IMG2IMG_CASES[case]
    mine, theirs = pipes(kind, "StableDiffusionXLImg2ImgPipeline")
    kwargs = {"num_inference_steps": 4, **kwargs}
    assert_images_close(run_diffrt(mine, 21, **kwargs), run_diffusers(theirs, 21, **kwargs))


def test_base_to_refiner_hand_off_matches_diffusers(pipes):
    """The base stops at denoising_end=0.8 and returns latents; the refiner continues from denoising_start=0.8
    without adding noise: both halves and the final images match diffusers."""
    import torch

    base, theirs_base = pipes("sdxl", "StableDiffusionXLPipeline")
    refiner, theirs_refiner = pipes("sdxl_refiner", "StableDiffusionXLImg2ImgPipeline")
    steps = 10
    base.set_progress_bar_config(disable=True)
    latents = base(PROMPT, num_inference_steps=steps, denoising_end=0.8, output_type="latent", generator=4).images
    theirs_latents = diffusers_latents(theirs_base, 4, prompt=PROMPT, num_inference_steps=steps, denoising_end=0.8)
    assert latents.shape == theirs_latents.shape == (1, 4, 32, 32)
    assert np.abs(latents - theirs_latents).max() < 1e-3 * max(1.0, np.abs(theirs_latents).max())
    kwargs = dict(prompt=PROMPT, num_inference_steps=steps, denoising_start=0.8)
    assert_images_close(
        run_diffrt(refiner, 5, image=latents, **kwargs),
        run_diffusers(theirs_refiner, 5, image=torch.from_numpy(theirs_latents), **kwargs),
    )


def test_inpainting_hand_off_from_base_to_refiner_matches_diffusers(pipes):
    """Inpainting split in two: the base package inpaints to denoising_end=0.7 and returns latents, the refiner
    package (4-channel, aesthetic scores) continues them from denoising_start=0.7 under the same mask."""
    import torch

    base, theirs_base = pipes("sdxl", "StableDiffusionXLInpaintPipeline")
    refiner, theirs_refiner = pipes("sdxl_refiner", "StableDiffusionXLInpaintPipeline")
    kwargs = dict(prompt=PROMPT, mask_image=make_mask(), height=32, width=48, num_inference_steps=6)
    base.set_progress_bar_config(disable=True)
    first = dict(image=make_image(9), denoising_end=0.7, **kwargs)
    latents = base(**first, output_type="latent", generator=6).images
    theirs_latents = diffusers_latents(theirs_base, 6, **first)
    assert np.abs(latents - theirs_latents).max() < 1e-3 * max(1.0, np.abs(theirs_latents).max())
    assert_images_close(
        run_diffrt(refiner, 7, image=latents, denoising_start=0.7, **kwargs),
        run_diffusers(theirs_refiner, 7, image=torch.from_numpy(theirs_latents), denoising_start=0.7, **kwargs),
    )


@pytest.mark.parametrize("start", [0.5, 0.62])
def test_refiner_denoising_start_with_a_second_order_scheduler_matches_diffusers(pipes, start):
    """Heun repeats timesteps: a cut-off that would split a step's two halves starts one timestep earlier."""
    import torch

    mine, theirs = pipes("sdxl_refiner", "StableDiffusionXLImg2ImgPipeline")
    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 24), dtype=np.float32)
    kwargs = dict(prompt=PROMPT, num_inference_steps=5, denoising_start=start)
    with scheduler(mine, theirs, "HeunDiscreteScheduler"):
        assert_images_close(
            run_diffrt(mine, 1, image=latents, **kwargs),
            run_diffusers(theirs, 1, image=torch.from_numpy(latents), **kwargs),
        )


# ----- inpainting ----------------------------------------------------------------------------------------------
INPAINT_CASES = {
    "strength-1": dict(strength=1.0),
    "strength-0.7": dict(strength=0.7),
    "default-strength": dict(),
    "batch": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, strength=0.8),
}


@pytest.mark.parametrize("kind", ["sdxl_inpaint", "sdxl"], ids=["9-channel", "4-channel"])
@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_inpainting_matches_diffusers(pipes, kind, case):
    mine, theirs = pipes(kind, "StableDiffusionXLInpaintPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(6), mask_image=make_mask(), height=32, width=48)
    kwargs.update(num_inference_steps=4, **INPAINT_CASES[case])
    assert_images_close(run_diffrt(mine, 8, **kwargs), run_diffusers(theirs, 8, **kwargs))


def test_inpainting_with_padding_mask_crop_matches_diffusers(pipes):
    mine, theirs = pipes("sdxl_inpaint", "StableDiffusionXLInpaintPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(7), mask_image=make_mask(), height=32, width=48)
    kwargs.update(num_inference_steps=3, padding_mask_crop=4)
    mine.set_progress_bar_config(disable=True)
    mine_images = np.stack([np.asarray(i) for i in mine(**kwargs, generator=3).images]) / 255.0
    with shared_noise(3):
        theirs_images = np.stack([np.asarray(i) for i in theirs(**kwargs).images]) / 255.0
    assert np.abs(mine_images - theirs_images).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("class_name", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"])
def test_vae_latent_statistics_match_diffusers(sdxl_packages, sdxl_models, tmp_path, class_name):
    """A VAE config with latents_mean / latents_std: image-to-image standardises the encoded image with them and
    every pipeline un-standardises before decoding (inpainting encodes with the scaling factor alone, as diffusers)."""
    import json
    import shutil

    stats = {"latents_mean": [0.1, -0.2, 0.3, 0.05], "latents_std": [1.5, 0.8, 1.2, 0.9]}
    package, folder = tmp_path / "package", tmp_path / "folder"
    shutil.copytree(sdxl_packages["sdxl"], package)
    shutil.copytree(sdxl_models["sdxl"], folder)
    for config in (
        package / "vae_encoder" / "config.json",
        package / "vae_decoder" / "config.json",
        folder / "vae" / "config.json",
    ):
        config.write_text(json.dumps({**json.loads(config.read_text()), **stats}))
    mine = getattr(ours, class_name).from_pretrained(package, provider="cpu")
    theirs = load_diffusers(class_name, folder)
    kwargs = dict(prompt=PROMPT, image=make_image(10), strength=0.7, num_inference_steps=4)
    if class_name == "StableDiffusionXLInpaintPipeline":
        kwargs.update(mask_image=make_mask(), height=32, width=48)
    assert_images_close(run_diffrt(mine, 9, **kwargs), run_diffusers(theirs, 9, **kwargs))


# ----- AutoPipeline --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sdxl", "sdxl_inpaint", "sdxl_refiner"])
def test_auto_pipelines_open_any_sdxl_package_as_the_tasks_sdxl_class(sdxl_packages, kind):
    expected = {
        ours.AutoPipelineForText2Image: ours.StableDiffusionXLPipeline,
        ours.AutoPipelineForImage2Image: ours.StableDiffusionXLImg2ImgPipeline,
        ours.AutoPipelineForInpainting: ours.StableDiffusionXLInpaintPipeline,
    }
    for auto, cls in expected.items():
        if kind == "sdxl_inpaint" and cls is not ours.StableDiffusionXLInpaintPipeline:
            with pytest.raises(ConfigError, match="StableDiffusionXLInpaintPipeline"):
                auto.from_pretrained(sdxl_packages[kind], provider="cpu")  # a 9-channel UNet only inpaints
            continue
        assert type(auto.from_pretrained(sdxl_packages[kind], provider="cpu")) is cls


def test_from_pipe_moves_between_sdxl_tasks_reusing_engines(sdxl_packages):
    text = ours.AutoPipelineForText2Image.from_pretrained(sdxl_packages["sdxl"], provider="cpu")
    image = ours.AutoPipelineForImage2Image.from_pipe(text)
    inpaint = ours.AutoPipelineForInpainting.from_pipe(image)
    assert type(image) is ours.StableDiffusionXLImg2ImgPipeline
    assert type(inpaint) is ours.StableDiffusionXLInpaintPipeline
    for name in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
        assert getattr(text, name) is getattr(image, name) is getattr(inpaint, name)
    assert image.vae_encoder is inpaint.vae_encoder
    assert text.tokenizer_2 is inpaint.tokenizer_2
    assert ours.AutoPipelineForText2Image.from_pipe(inpaint).unet is text.unet


def test_a_refiner_package_opens_without_the_first_text_encoder(sdxl_packages):
    refiner = ours.StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_packages["sdxl_refiner"], provider="cpu")
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.requires_aesthetics_score and not refiner.force_zeros_for_empty_prompt
    assert set(refiner.components) >= {"text_encoder_2", "tokenizer_2", "unet", "vae_encoder", "vae_decoder"}


# ----- errors --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(sdxl_packages):
    pipe = ours.StableDiffusionXLPipeline.from_pretrained(sdxl_packages["sdxl"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(prompt_embeds=np.zeros((1, 77, 64), np.float32)), "prompt_embeds was given without pooled_prompt_embeds"),
        (
            dict(
                prompt=PROMPT,
                negative_prompt_embeds=np.zeros((1, 77, 64), np.float32),
            ),
            "negative_prompt_embeds was given without negative_pooled_prompt_embeds",
        ),
        (
            dict(
                prompt_embeds=np.zeros((1, 77, 64), np.float32),
                pooled_prompt_embeds=np.zeros((1, 32), np.float32),
                prompt_2="x",
            ),
            "prompt_2 and prompt_embeds were both given",
        ),
        (
            dict(prompt_embeds=np.zeros((1, 77, 64), np.float32), pooled_prompt_embeds=np.zeros((1, 16), np.float32)),
            r"pooled_prompt_embeds has shape \(1, 16\); accepted: \(1, 32\)",
        ),
        (dict(prompt=["a", "b"], prompt_2=["c"]), "prompt_2 has 1 prompts but prompt has 2"),
        (dict(prompt=PROMPT, clip_skip=5), r"clip_skip=5 is not supported .* from 0 to 4"),
        (dict(prompt=PROMPT, denoising_end=1.5), r"denoising_end=1.5 is not supported"),
        (dict(prompt=PROMPT, original_size=(64,)), r"original_size=\(64,\) is not supported"),
        (dict(prompt=PROMPT, callback_on_step_end_tensor_inputs=["mask"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_text_to_image_refuses_bad_arguments(base, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        base(num_inference_steps=1, **kwargs)


def test_image_to_image_refuses_denoising_start_not_below_denoising_end(sdxl_packages):
    pipe = ours.StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl_packages["sdxl"], provider="cpu")
    with pytest.raises(ConfigError, match="denoising_start=0.8 is not below denoising_end=0.5"):
        pipe(PROMPT, image=make_image(0), denoising_start=0.8, denoising_end=0.5, num_inference_steps=2)


def test_a_refiner_refuses_text_to_image_naming_the_aesthetic_score(sdxl_packages):
    pipe = ours.AutoPipelineForText2Image.from_pretrained(sdxl_packages["sdxl_refiner"], provider="cpu")
    with pytest.raises(ConfigError, match="expects 5 time ids .* makes 6; this UNet takes an aesthetic score"):
        pipe(PROMPT, num_inference_steps=1)


def test_sd_and_sdxl_pipelines_refuse_each_others_packages(sdxl_packages, packages):
    with pytest.raises(ConfigError, match="SDXL UNet .* use StableDiffusionXLPipeline"):
        ours.StableDiffusionPipeline.from_pretrained(sdxl_packages["sdxl"], provider="cpu")
    with pytest.raises(ConfigError, match="no SDXL conditioning .* use StableDiffusionPipeline"):
        ours.StableDiffusionXLPipeline.from_pretrained(packages["sd1"], provider="cpu")


# ----- one pipeline, several threads ---------------------------------------------------------------------------
def ancestral_pipe(sdxl_packages, class_name: str, kind: str = "sdxl"):
    pipe = getattr(ours, class_name).from_pretrained(sdxl_packages[kind], provider="cpu")
    pipe.scheduler = SCHEDULERS["EulerAncestralDiscreteScheduler"].from_config(dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_concurrent_sdxl_text_to_image_calls_with_different_settings_each_match_the_call_alone(sdxl_packages):
    jobs = [
        dict(prompt=PROMPT, guidance_scale=1.5, num_inference_steps=3, generator=1),
        dict(
            prompt="a red cube",
            prompt_2="in the snow",
            negative_prompt="blurry",
            guidance_scale=9.0,
            guidance_rescale=0.7,
            num_inference_steps=5,
            denoising_end=0.6,
            height=48,
            width=64,
            generator=2,
        ),
        dict(prompt="a green tree", guidance_scale=1.0, num_inference_steps=4, height=64, width=48, generator=3),
        dict(
            prompt=["a cat", "a dog"],
            guidance_scale=4.0,
            clip_skip=1,
            original_size=(64, 48),
            generator=4,
            num_inference_steps=2,
        ),
    ]
    assert_concurrent_calls_match_calls_alone(ancestral_pipe(sdxl_packages, "StableDiffusionXLPipeline"), jobs)


def test_concurrent_sdxl_refiner_calls_with_different_settings_each_match_the_call_alone(sdxl_packages):
    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 24), dtype=np.float32)
    jobs = [
        dict(prompt=PROMPT, image=latents, denoising_start=0.5, guidance_scale=3.0, num_inference_steps=4),
        dict(
            prompt=PROMPT,
            image=latents,
            denoising_start=0.8,
            guidance_scale=8.0,
            num_inference_steps=6,
            negative_prompt="blurry",
            aesthetic_score=7.5,
        ),
        dict(prompt="a red cube", image=make_image(2), strength=0.7, guidance_scale=1.0, num_inference_steps=3),
        dict(
            prompt="a red cube", image=make_image(3, 40, 24), strength=0.9, guidance_rescale=0.5, num_inference_steps=4
        ),
    ]
    jobs = [{**job, "generator": seed} for seed, job in enumerate(jobs, start=30)]
    pipe = ancestral_pipe(sdxl_packages, "StableDiffusionXLImg2ImgPipeline", "sdxl_refiner")
    assert_concurrent_calls_match_calls_alone(pipe, jobs)


@pytest.mark.parametrize("kind", ["sdxl_inpaint", "sdxl"], ids=["9-channel", "4-channel"])
def test_concurrent_sdxl_inpainting_calls_with_different_settings_each_match_the_call_alone(sdxl_packages, kind):
    common = dict(image=make_image(6), mask_image=make_mask(), height=32, width=48)
    jobs = [
        dict(prompt=PROMPT, strength=1.0, guidance_scale=2.0, num_inference_steps=3, **common),
        dict(
            prompt="a red cube",
            negative_prompt="grey",
            strength=0.7,
            guidance_scale=8.0,
            guidance_rescale=0.4,
            num_inference_steps=5,
            denoising_end=0.8,
            **common,
        ),
        dict(
            prompt="a green tree",
            image=make_image(7, 32, 32),
            mask_image=make_mask(32, 32),
            strength=0.8,
            guidance_scale=1.0,
            num_inference_steps=4,
        ),
    ]
    jobs = [{**job, "generator": seed} for seed, job in enumerate(jobs, start=40)]
    pipe = ancestral_pipe(sdxl_packages, "StableDiffusionXLInpaintPipeline", kind)
    assert_concurrent_calls_match_calls_alone(pipe, jobs)
