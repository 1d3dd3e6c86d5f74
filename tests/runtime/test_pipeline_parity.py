"""End-to-end parity: each diffrt pipeline on an exported tiny package against the diffusers pipeline on the
folder it was exported from, with the same noise (see pipeline_parity). Images as floats in [0, 1] within 2e-3."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

import diffrt.runtime.pipelines as ours
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.schedulers import SCHEDULERS

PROMPT = "a photograph of an astronaut riding a horse"
STEPS = 4


def make_image(seed: int, width: int = 40, height: int = 32) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 3.0)], axis=-1)
    noise = rng.uniform(-0.15, 0.15, size=base.shape)
    return PIL.Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8))


def make_mask(width: int = 40, height: int = 32) -> PIL.Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 3 : width - 4] = 255
    return PIL.Image.fromarray(mask, mode="L")


@pytest.fixture(scope="module")
def pipes(packages, tiny_models):
    """(diffrt pipeline, diffusers pipeline) per task, each loaded once."""
    import diffusers  # noqa: F401  (imported before shared_noise walks sys.modules)

    cache = {}

    def get(kind: str, class_name: str):
        key = (kind, class_name)
        if key not in cache:
            mine = getattr(ours, class_name).from_pretrained(packages[kind], provider="cpu")
            cache[key] = (mine, load_diffusers(class_name, tiny_models[kind]))
        return cache[key]

    return get


def swap_schedulers(mine, theirs, name: str, **config):
    import diffusers

    theirs_scheduler = getattr(diffusers, name).from_config({**theirs.scheduler.config, **config})
    mine_scheduler = SCHEDULERS[name].from_config({**dict(mine.scheduler.config), **config})
    return mine_scheduler, theirs_scheduler


# ----- text-to-image -------------------------------------------------------------------------------------------
SCHEDULER_CASES = [
    ("PNDMScheduler", {}),
    ("DDIMScheduler", {}),
    ("EulerDiscreteScheduler", {}),
    ("EulerAncestralDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {}),
    ("LMSDiscreteScheduler", {}),
    ("HeunDiscreteScheduler", {}),
    ("UniPCMultistepScheduler", {}),
    ("DDPMScheduler", {}),
    ("KDPM2AncestralDiscreteScheduler", {}),
]


@pytest.mark.parametrize("name,config", SCHEDULER_CASES, ids=[c[0] for c in SCHEDULER_CASES])
def test_text_to_image_matches_diffusers_with_scheduler(pipes, name, config):
    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    mine_scheduler, theirs_scheduler = swap_schedulers(mine, theirs, name, **config)
    original = (mine.scheduler, theirs.scheduler)
    mine.scheduler, theirs.scheduler = mine_scheduler, theirs_scheduler
    try:
        kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=6.0)
        assert_images_close(run_diffrt(mine, 3, **kwargs), run_diffusers(theirs, 3, **kwargs))
    finally:
        mine.scheduler, theirs.scheduler = original


CUSTOM_SCHEDULES = [
    ("EulerDiscreteScheduler", dict(timesteps=[999, 800, 550, 300, 120, 10])),
    ("EulerDiscreteScheduler", dict(sigmas=[14.6, 6.0, 2.5, 0.9, 0.3, 0.0])),
    ("DPMSolverMultistepScheduler", dict(timesteps=[999, 700, 400, 150, 20])),
    ("HeunDiscreteScheduler", dict(timesteps=[980, 700, 420, 140])),
]


@pytest.mark.parametrize("name,custom", CUSTOM_SCHEDULES, ids=[f"{n}-{next(iter(c))}" for n, c in CUSTOM_SCHEDULES])
def test_text_to_image_with_a_custom_schedule_matches_diffusers(pipes, name, custom):
    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    mine_scheduler, theirs_scheduler = swap_schedulers(mine, theirs, name)
    original = (mine.scheduler, theirs.scheduler)
    mine.scheduler, theirs.scheduler = mine_scheduler, theirs_scheduler
    try:
        kwargs = dict(prompt=PROMPT, guidance_scale=5.0, **custom)
        assert_images_close(run_diffrt(mine, 4, **kwargs), run_diffusers(theirs, 4, **kwargs))
    finally:
        mine.scheduler, theirs.scheduler = original


def test_image_to_image_with_custom_timesteps_matches_diffusers(pipes):
    mine, theirs = pipes("sd1", "StableDiffusionImg2ImgPipeline")
    mine_scheduler, theirs_scheduler = swap_schedulers(mine, theirs, "EulerDiscreteScheduler")
    original = (mine.scheduler, theirs.scheduler)
    mine.scheduler, theirs.scheduler = mine_scheduler, theirs_scheduler
    try:
        kwargs = dict(prompt=PROMPT, image=make_image(5), strength=0.6, timesteps=[999, 750, 500, 250, 50])
        assert_images_close(run_diffrt(mine, 6, **kwargs), run_diffusers(theirs, 6, **kwargs))
    finally:
        mine.scheduler, theirs.scheduler = original


def test_custom_schedules_are_refused_where_the_scheduler_takes_none(pipes):
    mine, _ = pipes("sd1", "StableDiffusionPipeline")
    with pytest.raises(ConfigError, match="sigmas= is not supported by PNDMScheduler"):
        mine(PROMPT, sigmas=[1.0, 0.5, 0.0], output_type="np")
    with pytest.raises(ConfigError, match="both given"):
        mine(PROMPT, timesteps=[900, 10], sigmas=[1.0, 0.0], output_type="np")
    with pytest.raises(ConfigError, match="timesteps="):
        mine(PROMPT, timesteps=[], output_type="np")


TEXT_CASES = {
    "negative-prompt": dict(prompt=PROMPT, negative_prompt="blurry, low quality"),
    "prompt-batch": dict(prompt=[PROMPT, "a red cube on a table", "snow"], negative_prompt=["a", "b", "c"]),
    "images-per-prompt": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2),
    "guidance-rescale": dict(prompt=PROMPT, guidance_rescale=0.7),
    "clip-skip": dict(prompt=PROMPT, clip_skip=1),
    "no-guidance": dict(prompt=PROMPT, guidance_scale=1.0),
    "non-square": dict(prompt=PROMPT, height=24, width=40),
    "eta-ddim": dict(prompt=PROMPT, eta=0.6),
}


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_to_image_matches_diffusers(pipes, kind, case):
    mine, theirs = pipes(kind, "StableDiffusionPipeline")
    kwargs = dict(num_inference_steps=STEPS, **TEXT_CASES[case])
    assert_images_close(run_diffrt(mine, 11, **kwargs), run_diffusers(theirs, 11, **kwargs))


def test_text_to_image_with_given_latents_and_embeddings_matches_diffusers(pipes):
    import torch

    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    rng = np.random.default_rng(5)
    latents = rng.standard_normal((2, 4, 16, 16), dtype=np.float32)
    embeds = rng.standard_normal((2, 77, 32), dtype=np.float32)
    negative = rng.standard_normal((2, 77, 32), dtype=np.float32)
    theirs_images = run_diffusers(
        theirs,
        0,
        prompt_embeds=torch.from_numpy(embeds),
        negative_prompt_embeds=torch.from_numpy(negative),
        latents=torch.from_numpy(latents),
        num_inference_steps=STEPS,
    )
    mine_images = run_diffrt(
        mine, 0, prompt_embeds=embeds, negative_prompt_embeds=negative, latents=latents, num_inference_steps=STEPS
    )
    assert_images_close(mine_images, theirs_images)


# ----- callbacks that change the call, as diffusers' documentation writes them ----------------------------------
def dynamic_guidance(split):
    """diffusers' recipe: from 40% of the steps on, no guidance (the prompt embeddings' negative half dropped)."""

    def callback(pipe, step, timestep, tensors):
        if step == int(pipe.num_timesteps * 0.4):
            tensors["prompt_embeds"] = split(tensors["prompt_embeds"])
            pipe._guidance_scale = 0.0
        return tensors

    return callback


def interrupt_after(step_count):
    def callback(pipe, step, timestep, tensors):
        if step == step_count - 1:
            pipe._interrupt = True
        return tensors

    return callback


def test_a_callback_turning_guidance_off_midway_matches_diffusers(pipes):
    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    kwargs = dict(
        prompt=PROMPT, num_inference_steps=5, guidance_scale=8.0, callback_on_step_end_tensor_inputs=["prompt_embeds"]
    )
    ours_images = run_diffrt(mine, 4, callback_on_step_end=dynamic_guidance(lambda e: np.split(e, 2)[-1]), **kwargs)
    theirs_images = run_diffusers(theirs, 4, callback_on_step_end=dynamic_guidance(lambda e: e.chunk(2)[-1]), **kwargs)
    assert mine.guidance_scale == 0.0 and not mine.do_classifier_free_guidance  # this thread's last call
    assert_images_close(ours_images, theirs_images)
    plain = run_diffrt(mine, 4, prompt=PROMPT, num_inference_steps=5, guidance_scale=8.0)
    assert np.abs(plain - ours_images).max() > 1e-2  # the change took effect
    assert mine.guidance_scale == 8.0


def test_a_callback_interrupting_the_call_matches_diffusers(pipes):
    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, callback_on_step_end=interrupt_after(2))
    assert_images_close(run_diffrt(mine, 5, **kwargs), run_diffusers(theirs, 5, **kwargs))
    assert mine.interrupt
    mine(PROMPT, num_inference_steps=1, output_type="latent")
    assert not mine.interrupt  # a new call starts uninterrupted


# ----- image-to-image ------------------------------------------------------------------------------------------
IMG2IMG_CASES = {
    "strength-0.6": dict(prompt=PROMPT, image=make_image(0), strength=0.6),
    "strength-1": dict(prompt=PROMPT, image=make_image(0), strength=1.0),
    "batch": dict(prompt=["a cat", "a dog"], image=[make_image(1), make_image(2)], num_images_per_prompt=2),
    "one-image-two-prompts": dict(prompt=["a cat", "a dog"], image=make_image(3), negative_prompt=["dark", "dark"]),
}


@pytest.mark.parametrize("case", list(IMG2IMG_CASES))
def test_image_to_image_matches_diffusers(pipes, case):
    mine, theirs = pipes("sd1", "StableDiffusionImg2ImgPipeline")
    kwargs = dict(num_inference_steps=5, **IMG2IMG_CASES[case])
    assert_images_close(run_diffrt(mine, 21, **kwargs), run_diffusers(theirs, 21, **kwargs))


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_image_to_image_matches_diffusers_with_scheduler(pipes, name):
    mine, theirs = pipes("sd2", "StableDiffusionImg2ImgPipeline")
    mine_scheduler, theirs_scheduler = swap_schedulers(mine, theirs, name)
    kwargs = dict(prompt=PROMPT, image=make_image(4), strength=0.7, num_inference_steps=6)
    original = (mine.scheduler, theirs.scheduler)
    mine.scheduler, theirs.scheduler = mine_scheduler, theirs_scheduler
    try:
        assert_images_close(run_diffrt(mine, 2, **kwargs), run_diffusers(theirs, 2, **kwargs))
    finally:
        mine.scheduler, theirs.scheduler = original


# ----- inpainting ----------------------------------------------------------------------------------------------
INPAINT_CASES = {
    "strength-1": dict(strength=1.0),
    "strength-0.7": dict(strength=0.7),
    "batch": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2),
    "padding-mask-crop": dict(padding_mask_crop=4),
}


@pytest.mark.parametrize("kind", ["inpaint", "sd1"], ids=["9-channel", "4-channel"])
@pytest.mark.parametrize("case", list(INPAINT_CASES))
def test_inpainting_matches_diffusers(pipes, kind, case):
    mine, theirs = pipes(kind, "StableDiffusionInpaintPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(6), mask_image=make_mask(), height=32, width=40)
    kwargs.update(num_inference_steps=5, **INPAINT_CASES[case])
    if case == "padding-mask-crop":  # crops and pastes back: PIL in, PIL out
        with_pil = dict(kwargs)
        mine_images = np.stack([np.asarray(i) for i in mine(**with_pil, generator=8).images]) / 255.0
        from pipeline_parity import shared_noise

        with shared_noise(8):
            theirs_images = np.stack([np.asarray(i) for i in theirs(**with_pil).images]) / 255.0
        assert np.abs(mine_images - theirs_images).max() <= 1 / 255 + 1e-6
        return
    assert_images_close(run_diffrt(mine, 8, **kwargs), run_diffusers(theirs, 8, **kwargs))


# ----- depth-to-image ------------------------------------------------------------------------------------------
def test_depth_to_image_with_estimated_depth_matches_diffusers(pipes):
    mine, theirs = pipes("depth", "StableDiffusionDepth2ImgPipeline")
    kwargs = dict(prompt=PROMPT, image=make_image(7), strength=0.7, num_inference_steps=6, negative_prompt="grey")
    assert_images_close(run_diffrt(mine, 4, **kwargs), run_diffusers(theirs, 4, **kwargs))


def test_depth_to_image_with_given_depth_map_matches_diffusers(pipes):
    import torch

    mine, theirs = pipes("depth", "StableDiffusionDepth2ImgPipeline")
    depth = np.random.default_rng(9).uniform(0.5, 3.0, size=(1, 20, 24)).astype(np.float32)
    kwargs = dict(prompt=["a cat", "a dog"], image=make_image(8), strength=0.8, num_inference_steps=5)
    theirs_images = run_diffusers(theirs, 6, depth_map=torch.from_numpy(depth), **kwargs)
    assert_images_close(run_diffrt(mine, 6, depth_map=depth, **kwargs), theirs_images)


# ----- unconditional -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 10])
def test_ddpm_matches_diffusers(pipes, steps):
    mine, theirs = pipes("ddpm", "DDPMPipeline")
    assert_images_close(
        run_diffrt(mine, 12, batch_size=2, num_inference_steps=steps),
        run_diffusers(theirs, 12, batch_size=2, num_inference_steps=steps),
    )


def test_one_negative_prompt_serves_every_prompt(pipes):
    """diffusers refuses a single negative prompt string beside a list of prompts; diffrt applies it to each."""
    mine, theirs = pipes("sd1", "StableDiffusionPipeline")
    kwargs = dict(prompt=["a cat", "a dog"], num_inference_steps=STEPS)
    assert_images_close(
        run_diffrt(mine, 1, negative_prompt="dark", **kwargs),
        run_diffusers(theirs, 1, negative_prompt=["dark", "dark"], **kwargs),
    )
