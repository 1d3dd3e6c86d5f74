"""Behaviour of the runtime pipelines beyond parity: argument errors, engine reuse, AutoPipeline's choices,
callbacks, schedulers swapped in, and concurrent calls."""

from __future__ import annotations

import shutil

import numpy as np
import PIL.Image
import pytest
from concurrency import assert_concurrent_calls_match_calls_alone

from diffrt.runtime import PackageError
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.pipelines import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DDPMPipeline,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffrt.runtime.schedulers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

PROMPT = "a red cube"


@pytest.fixture(scope="module")
def t2i(packages):
    pipe = StableDiffusionPipeline.from_pretrained(packages["sd1"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inpaint(packages):
    pipe = StableDiffusionInpaintPipeline.from_pretrained(packages["inpaint"], provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(width: int = 32, height: int = 32, seed: int = 0) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


# ----- what comes out ------------------------------------------------------------------------------------------
def test_output_types_agree_and_size_follows_the_package_scale_factor(t2i):
    assert t2i.vae_scale_factor == 2  # the tiny VAE has two blocks: never a hard-coded 8
    common = dict(prompt=PROMPT, num_inference_steps=2, height=24, width=40)
    as_np = t2i(**common, generator=1, output_type="np").images
    as_pil = t2i(**common, generator=1).images
    latents = t2i(**common, generator=1, output_type="latent").images
    assert as_np.shape == (1, 24, 40, 3) and as_np.dtype == np.float32
    assert 0.0 <= as_np.min() and as_np.max() <= 1.0
    assert as_pil[0].size == (40, 24) and as_pil[0].mode == "RGB"
    assert np.array_equal(np.asarray(as_pil[0]), (as_np[0] * 255).round().astype(np.uint8))
    assert latents.shape == (1, 4, 12, 20)


def test_default_size_is_the_unet_sample_size_times_the_scale_factor(t2i):
    images = t2i(PROMPT, num_inference_steps=1, generator=0, output_type="np").images
    assert images.shape == (1, 32, 32, 3)  # sample_size 16 x factor 2


def test_same_seed_same_image_and_generator_objects_continue_their_stream(t2i):
    a = t2i(PROMPT, num_inference_steps=2, generator=5, output_type="np").images
    b = t2i(PROMPT, num_inference_steps=2, generator=np.random.default_rng(5), output_type="np").images
    c = t2i(PROMPT, num_inference_steps=2, generator=6, output_type="np").images
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


# ----- arguments: diffusers' names, the first few also by position ---------------------------------------------
def test_the_first_arguments_go_by_position_as_in_diffusers_and_the_rest_by_name(t2i):
    by_position = t2i(PROMPT, 24, 40, num_inference_steps=1, generator=3, output_type="latent").images
    by_name = t2i(prompt=PROMPT, height=24, width=40, num_inference_steps=1, generator=3, output_type="latent").images
    assert by_position.shape == (1, 4, 12, 20) and np.array_equal(by_position, by_name)
    with pytest.raises(TypeError, match="too many positional arguments"):
        t2i(PROMPT, 24, 40, 1)
    with pytest.raises(TypeError, match="guidance"):
        t2i(PROMPT, guidance=3.0)  # a misspelt name is refused, never ignored


def test_generate_takes_the_typed_arguments_a_call_binds(t2i):
    from diffrt.runtime.pipelines.arguments import Text2ImageArguments

    common = dict(prompt=PROMPT, negative_prompt="grey", guidance_scale=3.0, num_inference_steps=2, output_type="np")
    assert np.array_equal(
        t2i.generate(Text2ImageArguments(**common, generator=4)).images, t2i(**common, generator=4).images
    )
    with pytest.raises(ConfigError, match="guidance_rescale=2"):
        Text2ImageArguments(prompt=PROMPT, guidance_rescale=2)  # checked when made, before any work


def test_the_signature_shows_diffusers_arguments(t2i, inpaint):
    import inspect

    text = inspect.signature(t2i)
    assert list(text.parameters)[:3] == ["prompt", "height", "width"]
    assert text.parameters["guidance_scale"].default == 7.5
    assert text.parameters["num_inference_steps"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(inpaint).parameters)[:3] == ["prompt", "image", "mask_image"]


# ----- bad input: one clear error naming the argument ------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,names",
    [
        (dict(prompt=PROMPT, height=33, width=32), ["height=33", "multiple of 2"]),
        (dict(prompt=PROMPT, height=32, width=31), ["width=31", "multiple of 2"]),
        (dict(prompt=[]), ["prompt", "empty"]),
        (dict(prompt=None), ["prompt"]),
        (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ["negative_prompt", "3", "2"]),
        (dict(prompt=PROMPT, latents=np.zeros((1, 4, 8, 8), np.float32)), ["latents", "(1, 4, 16, 16)"]),
        (dict(prompt=PROMPT, output_type="tensor"), ["output_type", "'pil'"]),
        (dict(prompt=PROMPT, clip_skip=3), ["clip_skip", "1 to 2"]),
        (dict(prompt=PROMPT, num_inference_steps=0), ["num_inference_steps"]),
        (dict(prompt=PROMPT, callback_on_step_end_tensor_inputs=["noise"]), ["callback_on_step_end_tensor_inputs"]),
    ],
)
def test_text_to_image_refuses_bad_arguments_naming_them(t2i, kwargs, names):
    kwargs = {"num_inference_steps": 1, **kwargs}
    with pytest.raises(ConfigError) as error:
        t2i(**kwargs)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "0.5"])
def test_image_to_image_refuses_strength_outside_zero_to_one(packages, strength):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(packages["sd1"])
    with pytest.raises(ConfigError, match="strength"):
        pipe(PROMPT, image=picture(), strength=strength, num_inference_steps=2)


def test_strength_too_small_for_the_step_count_is_refused(packages):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(packages["sd1"])
    with pytest.raises(ConfigError, match="no denoising step"):
        pipe(PROMPT, image=picture(), strength=0.1, num_inference_steps=4)


def test_image_count_that_does_not_divide_the_batch_is_refused(packages):
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(packages["sd1"])
    with pytest.raises(ConfigError, match="image holds 2 images"):
        pipe(["a", "b", "c"], image=[picture(), picture(seed=1)], num_inference_steps=2)


def test_inpainting_refuses_a_mask_of_another_size(inpaint):
    with pytest.raises(ConfigError, match="mask_image is 24x32 pixels but image is 32x32"):
        inpaint(PROMPT, image=picture(32, 32), mask_image=picture(24, 32).convert("L"), num_inference_steps=2)


def test_inpainting_needs_both_image_and_mask(inpaint):
    with pytest.raises(ConfigError, match="mask_image is missing"):
        inpaint(PROMPT, image=picture(), num_inference_steps=2)


def test_a_package_missing_a_network_is_refused_naming_it(packages, tmp_path):
    partial = tmp_path / "no_encoder"
    shutil.copytree(packages["sd1"], partial)
    shutil.rmtree(partial / "vae_encoder")
    with pytest.raises(PackageError) as error:
        StableDiffusionImg2ImgPipeline.from_pretrained(partial)
    assert "vae_encoder/model.onnx" in str(error.value) and "StableDiffusionImg2ImgPipeline" in str(error.value)
    text_only = StableDiffusionPipeline.from_pretrained(partial)  # text-to-image does not need the encoder
    assert text_only(PROMPT, num_inference_steps=1, output_type="latent").images.shape == (1, 4, 16, 16)


def test_a_folder_that_is_not_a_package_is_refused(tmp_path):
    with pytest.raises(PackageError, match="model_index.json"):
        StableDiffusionPipeline.from_pretrained(tmp_path)


def test_a_pipeline_refuses_a_unet_of_another_kind(packages):
    with pytest.raises(ConfigError, match="9 input channels.*StableDiffusionInpaintPipeline"):
        StableDiffusionPipeline.from_pretrained(packages["inpaint"])
    with pytest.raises(ConfigError, match="5 input channels.*StableDiffusionDepth2ImgPipeline"):
        StableDiffusionImg2ImgPipeline.from_pretrained(packages["depth"])


def test_depth_without_estimator_needs_a_depth_map(packages, tmp_path):
    partial = tmp_path / "no_dpt"
    shutil.copytree(packages["depth"], partial)
    shutil.rmtree(partial / "depth_estimator")
    pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(partial)
    with pytest.raises(ConfigError, match="depth_map is missing"):
        pipe(PROMPT, image=picture(), num_inference_steps=2)
    depth = np.ones((1, 8, 8), np.float32) * np.linspace(0, 1, 8, dtype=np.float32)
    out = pipe(PROMPT, image=picture(), depth_map=depth, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3)


# ----- AutoPipeline and from_pipe ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "auto,kind,expected",
    [
        (AutoPipelineForText2Image, "sd1", StableDiffusionPipeline),
        (AutoPipelineForImage2Image, "sd1", StableDiffusionImg2ImgPipeline),
        (AutoPipelineForInpainting, "sd1", StableDiffusionInpaintPipeline),
        (AutoPipelineForInpainting, "inpaint", StableDiffusionInpaintPipeline),
        (AutoPipelineForImage2Image, "depth", StableDiffusionDepth2ImgPipeline),
    ],
)
def test_auto_pipeline_picks_the_class_from_model_index(packages, auto, kind, expected):
    assert type(auto.from_pretrained(packages[kind])) is expected


@pytest.mark.parametrize(
    "auto,kind,message",
    [
        (AutoPipelineForText2Image, "depth", "no text-to-image pipeline for a package of StableDiffusionDepth2Img"),
        (AutoPipelineForInpainting, "depth", "no inpainting pipeline"),
        (AutoPipelineForText2Image, "ddpm", "DDPMPipeline"),
        (AutoPipelineForText2Image, "inpaint", "9 input channels"),
    ],
)
def test_auto_pipeline_refuses_packages_it_cannot_serve(packages, auto, kind, message):
    with pytest.raises(ConfigError, match=message):
        auto.from_pretrained(packages[kind])


def test_from_pipe_reuses_the_loaded_engines(t2i):
    img2img = AutoPipelineForImage2Image.from_pipe(t2i)
    inpaint = AutoPipelineForInpainting.from_pipe(img2img)
    back = StableDiffusionPipeline.from_pipe(inpaint)
    assert type(img2img) is StableDiffusionImg2ImgPipeline and type(inpaint) is StableDiffusionInpaintPipeline
    for pipe in (img2img, inpaint, back):
        assert pipe.unet is t2i.unet and pipe.text_encoder is t2i.text_encoder and pipe.vae_decoder is t2i.vae_decoder
        assert pipe.tokenizer is t2i.tokenizer  # built once per package, like the sessions
    assert img2img.vae_encoder is inpaint.vae_encoder
    assert AutoPipelineForText2Image.from_pipe(t2i) is t2i


# ----- schedulers and callbacks --------------------------------------------------------------------------------
def test_a_swapped_in_scheduler_is_used(t2i):
    original = t2i.scheduler
    try:
        base = t2i(PROMPT, num_inference_steps=3, generator=2, output_type="np").images
        t2i.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
        swapped = t2i(PROMPT, num_inference_steps=3, generator=2, output_type="np").images
        t2i.scheduler = DPMSolverMultistepScheduler.from_config(original.config)
        again = t2i(PROMPT, num_inference_steps=3, generator=2, output_type="np").images
    finally:
        t2i.scheduler = original
    assert not np.allclose(base, swapped)
    assert np.array_equal(swapped, again)


def test_callback_on_step_end_sees_every_step_and_can_replace_latents(t2i):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, float(t), sorted(tensors)))
        if i == pipe.num_timesteps - 1:
            return {"latents": np.zeros_like(tensors["latents"])}
        return {}

    out = t2i(
        PROMPT,
        num_inference_steps=3,
        generator=0,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    ).images
    assert t2i.num_timesteps == 4  # PNDM's PLMS start repeats one timestep: 3 steps, 4 UNet calls, as diffusers
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert all(s[2] == ["latents", "prompt_embeds"] for s in seen)
    assert not np.any(out)


def test_ddpm_output_has_the_unet_sample_size(packages):
    pipe = DDPMPipeline.from_pretrained(packages["ddpm"])
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet_config["sample_size"]
    images = pipe(batch_size=3, num_inference_steps=2, generator=0).images
    assert len(images) == 3 and images[0].size == (size, size)


# ----- servers: one pipeline, several threads --------------------------------------------------------------------
@pytest.fixture
def ancestral(packages):
    """A fresh pipeline of each kind whose scheduler draws noise at every step (so seeds matter to each step)."""

    def make(cls, kind: str = "sd1"):
        pipe = cls.from_pretrained(packages[kind], provider="cpu")
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


def test_concurrent_text_to_image_calls_with_different_settings_each_match_the_call_alone(ancestral):
    jobs = [
        dict(prompt="a red cube", guidance_scale=1.5, num_inference_steps=3, generator=1),
        dict(
            prompt="a blue ball",
            negative_prompt="blurry",
            guidance_scale=9.0,
            guidance_rescale=0.7,
            num_inference_steps=5,
            height=24,
            width=40,
            generator=2,
        ),
        dict(prompt="a green tree", guidance_scale=1.0, num_inference_steps=4, height=40, width=24, generator=3),
        dict(prompt=["a cat", "a dog"], guidance_scale=4.0, clip_skip=1, num_inference_steps=2, generator=4),
    ]
    assert_concurrent_calls_match_calls_alone(ancestral(StableDiffusionPipeline), jobs)


def test_concurrent_image_to_image_calls_with_different_settings_each_match_the_call_alone(ancestral):
    jobs = [
        dict(prompt="a red cube", image=picture(seed=1), strength=0.5, guidance_scale=1.5, num_inference_steps=4),
        dict(
            prompt="a blue ball",
            image=picture(40, 24, seed=2),
            negative_prompt="blurry",
            strength=0.9,
            guidance_scale=8.0,
            guidance_rescale=0.5,
            num_inference_steps=3,
        ),
        dict(prompt="a green tree", image=picture(24, 40, seed=3), strength=0.7, guidance_scale=1.0),
    ]
    jobs = [
        {**job, "generator": seed, "num_inference_steps": job.get("num_inference_steps", 5)}
        for seed, job in enumerate(jobs, start=10)
    ]
    assert_concurrent_calls_match_calls_alone(ancestral(StableDiffusionImg2ImgPipeline), jobs)


@pytest.mark.parametrize("kind", ["inpaint", "sd1"])  # a 9-channel inpainting UNet, and a plain one
def test_concurrent_inpainting_calls_with_different_settings_each_match_the_call_alone(ancestral, kind):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 4:20] = 255
    wide_mask = np.zeros((24, 40), np.uint8)
    wide_mask[4:20, 10:40] = 255
    jobs = [
        dict(prompt="a red cube", image=picture(), mask_image=PIL.Image.fromarray(mask), guidance_scale=2.0),
        dict(
            prompt="a blue ball",
            image=picture(40, 24, seed=5),
            mask_image=PIL.Image.fromarray(wide_mask),
            height=24,
            width=40,
            negative_prompt="blurry",
            strength=0.6,
            guidance_scale=7.0,
            guidance_rescale=0.3,
            num_inference_steps=5,
        ),
        dict(
            prompt="a green tree",
            image=picture(seed=6),
            mask_image=PIL.Image.fromarray(255 - mask),
            guidance_scale=1.0,
            num_inference_steps=2,
        ),
    ]
    jobs = [{"num_inference_steps": 3, **job, "generator": seed} for seed, job in enumerate(jobs, start=20)]
    assert_concurrent_calls_match_calls_alone(ancestral(StableDiffusionInpaintPipeline, kind), jobs)


# ----- backends -------------------------------------------------------------------------------------------------
def test_auto_provider_generates_on_the_cpu_here_and_logs_why_not_on_a_gpu(packages, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="diffrt.engines"):
        pipe = StableDiffusionPipeline.from_pretrained(packages["sd1"])  # provider="auto"
        pipe.set_progress_bar_config(disable=True)
        image = pipe(PROMPT, num_inference_steps=2, generator=0, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and not np.isnan(image).any()
    choices = [r.message for r in caplog.records if "provider 'auto' chose" in r.message]
    assert {m.split(":")[0] for m in choices} == {"text_encoder", "unet", "vae_decoder"}
    for message in choices:
        assert "chose ONNX Runtime CPUExecutionProvider" in message
        assert "TensorRT: provider='tensorrt'" in message and "ONNX Runtime CUDA: provider='cuda'" in message


def test_the_depth_estimator_stays_fp32_under_auto_precision_only(packages):
    from diffrt.runtime.engines import SessionSettings
    from diffrt.runtime.package import EnginePackage

    auto = EnginePackage(packages["depth"], provider="cpu")
    assert auto.settings_for("depth_estimator").precision == "fp32"
    assert auto.settings_for("unet") is auto.session_settings
    forced = EnginePackage(packages["depth"], provider="cpu", session_settings=SessionSettings(precision="fp16"))
    assert forced.settings_for("depth_estimator").precision == "fp16"  # asked for by name: honoured


def test_cuda_graphs_are_asked_of_the_unet_only(packages):
    from diffrt.runtime.engines import SessionSettings
    from diffrt.runtime.package import EnginePackage

    package = EnginePackage(packages["sd1"], provider="cuda", session_settings=SessionSettings(cuda_graph=True))
    assert package.settings_for("unet").cuda_graph
    assert not any(package.settings_for(n).cuda_graph for n in ("text_encoder", "vae_encoder", "vae_decoder"))
