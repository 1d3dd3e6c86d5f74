"""Per-stage timing hooks: every stage a pipeline call runs is reported once, in order, with its step."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest

from diffrt.runtime import StageTimings
from diffrt.runtime.pipelines import (
    DDPMPipeline,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffrt.runtime.schedulers import DDIMScheduler
from diffrt.runtime.timing import StageEvent

PROMPT = "a red cube"


def timed_call(pipe, **kwargs):
    timings = StageTimings()
    pipe.stage_hooks.append(timings)
    try:
        images = pipe(**kwargs).images
    finally:
        pipe.stage_hooks.remove(timings)
    return timings, images


@pytest.fixture(scope="module")
def t2i(packages):
    pipe = StableDiffusionPipeline.from_pretrained(packages["sd1"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    # One UNet run per step (the package's PNDM adds a warm-up step, which would blur what is counted).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def test_text_to_image_reports_each_stage_and_each_step(t2i):
    timings, _ = timed_call(t2i, prompt=PROMPT, num_inference_steps=3, generator=0, output_type="np")
    stages = [event.stage for event in timings.events]
    # Guided: the prompt and the negative prompt are encoded; then per step a UNet run and a scheduler step.
    assert stages == ["text_encoder", "text_encoder", *["unet", "scheduler"] * 3, "vae_decoder"]
    assert [e.step for e in timings.events if e.stage == "unet"] == [0, 1, 2]
    assert [e.step for e in timings.events if e.stage == "scheduler"] == [0, 1, 2]
    assert all(e.step is None for e in timings.events if e.stage in ("text_encoder", "vae_decoder"))
    assert all(e.seconds > 0 for e in timings.events)
    summary = timings.summary()
    assert list(summary) == ["text_encoder", "unet", "scheduler", "vae_decoder"]
    assert summary["unet"]["calls"] == 3
    unet = timings.seconds("unet")
    assert summary["unet"]["total_s"] == pytest.approx(sum(unet))
    assert summary["unet"]["min_s"] == min(unet) and summary["unet"]["max_s"] == max(unet)


def test_latent_output_skips_the_decoder_and_unguided_calls_encode_once(t2i):
    timings, _ = timed_call(t2i, prompt=PROMPT, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    assert [e.stage for e in timings.events] == ["text_encoder", "unet", "scheduler", "unet", "scheduler"]


def test_hooks_do_not_change_the_image_and_every_hook_is_called(t2i):
    plain = t2i(prompt=PROMPT, num_inference_steps=2, generator=3, output_type="np").images
    seen: list[StageEvent] = []
    t2i.stage_hooks.append(seen.append)
    try:
        timings, hooked = timed_call(t2i, prompt=PROMPT, num_inference_steps=2, generator=3, output_type="np")
    finally:
        t2i.stage_hooks.remove(seen.append)
    np.testing.assert_array_equal(plain, hooked)
    assert seen == timings.events and len(seen) == 7


def test_image_to_image_and_depth_report_their_encoders(packages):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(packages["sd1"], provider="cpu")
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = DDIMScheduler.from_config(img2img.scheduler.config)
    timings, _ = timed_call(img2img, prompt=PROMPT, image=image, strength=0.5, num_inference_steps=4)
    assert [e.stage for e in timings.events][:3] == ["text_encoder", "text_encoder", "vae_encoder"]
    assert timings.summary()["unet"]["calls"] == 2  # strength 0.5 of 4 steps
    depth = StableDiffusionDepth2ImgPipeline.from_pretrained(packages["depth"], provider="cpu")
    depth.set_progress_bar_config(disable=True)
    timings, _ = timed_call(depth, prompt=PROMPT, image=image, strength=1.0, num_inference_steps=2)
    assert "depth_estimator" in timings.summary() and timings.summary()["depth_estimator"]["calls"] == 1


def test_ddpm_reports_unet_and_scheduler_per_step(packages):
    pipe = DDPMPipeline.from_pretrained(packages["ddpm"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    timings, _ = timed_call(pipe, num_inference_steps=3, generator=0, output_type="np")
    assert [(e.stage, e.step) for e in timings.events] == [
        (stage, step) for step in range(3) for stage in ("unet", "scheduler")
    ]


def test_from_pipe_starts_with_its_own_hooks(t2i):
    t2i.stage_hooks.append(StageTimings())
    try:
        other = StableDiffusionImg2ImgPipeline.from_pipe(t2i)
        assert other.stage_hooks == [] and other.stage_hooks is not t2i.stage_hooks
    finally:
        t2i.stage_hooks.clear()


def test_pipelines_log_nothing_for_timings(t2i, caplog):
    with caplog.at_level(logging.DEBUG, logger="diffrt"):
        timed_call(t2i, prompt=PROMPT, num_inference_steps=1, output_type="latent")
    assert not [r for r in caplog.records if "timing" in r.getMessage().lower()]
