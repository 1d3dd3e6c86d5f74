"""SD3 and Flux pipelines against diffusers' on the tiny fixtures: the same weights, prompts and noise give the
same images (text-to-image, image-to-image, inpainting; SD3.0 and SD3.5 styles, SD3 without T5; Flux dev- and
schnell-style), and the arguments diffusers takes, with its defaults."""

from __future__ import annotations

import inspect

import numpy as np
import PIL.Image
import pytest
from pipeline_parity import assert_images_close, load_diffusers, run_diffrt, run_diffusers

from diffrt.runtime import pipelines as P
from diffrt.runtime.errors import ConfigError

SIZE = 32
PROMPTS = ["a photograph of an astronaut riding a horse", "a red sports car"]


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(7)
    gradient = np.linspace(0, 255, SIZE)[None, :, None] * np.ones((SIZE, 1, 3))
    noise = rng.integers(0, 60, (SIZE, SIZE, 3))
    image = PIL.Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 4:20] = 255
    return image, PIL.Image.fromarray(mask)


def compare(class_name, folder, package, seed=3, **kwargs):
    without_t5 = not (folder / "text_encoder_3").is_dir() and "3" in class_name  # diffusers needs it said
    components = dict(text_encoder_3=None, tokenizer_3=None) if without_t5 else {}
    theirs = run_diffusers(load_diffusers(class_name, folder, **components), seed, **kwargs)
    ours = run_diffrt(getattr(P, class_name).from_pretrained(package), seed, **kwargs)
    assert_images_close(ours, theirs)
    return ours


COMMON = dict(height=SIZE, width=SIZE, num_inference_steps=3, max_sequence_length=24)


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("sd3", dict(prompt=PROMPTS, negative_prompt="blurry", guidance_scale=5.0)),
        ("sd3", dict(prompt=PROMPTS[0], guidance_scale=1.0, num_images_per_prompt=2, clip_skip=1)),
        ("sd35", dict(prompt=PROMPTS[0], prompt_2="a horse", guidance_scale=4.0)),
        (
            "sd35",
            dict(
                prompt=PROMPTS[0],
                guidance_scale=4.0,
                skip_guidance_layers=[1],
                skip_layer_guidance_start=0.0,
                skip_layer_guidance_stop=1.0,
                num_inference_steps=4,
            ),
        ),
    ],
)
def test_sd3_text_to_image_equals_diffusers(mmdit_models, mmdit_packages, kind, kwargs):
    compare("StableDiffusion3Pipeline", mmdit_models[kind], mmdit_packages[kind], **{**COMMON, **kwargs})


@pytest.mark.parametrize("kind", ["flux_dev", "flux_schnell"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt=PROMPTS, guidance_scale=4.0),
        dict(prompt=PROMPTS[0], negative_prompt="ugly", true_cfg_scale=2.5, num_images_per_prompt=2),
    ],
)
def test_flux_text_to_image_equals_diffusers(mmdit_models, mmdit_packages, kind, kwargs):
    compare("FluxPipeline", mmdit_models[kind], mmdit_packages[kind], **{**COMMON, **kwargs})


def test_flux_guidance_scale_is_embedded_only_by_dev_models(mmdit_packages):
    def image(kind, guidance):
        pipe = P.FluxPipeline.from_pretrained(mmdit_packages[kind])
        return run_diffrt(pipe, 1, prompt=PROMPTS[0], guidance_scale=guidance, **COMMON)

    assert np.abs(image("flux_dev", 2.0) - image("flux_dev", 6.0)).max() > 1e-3
    np.testing.assert_array_equal(image("flux_schnell", 2.0), image("flux_schnell", 6.0))


@pytest.mark.parametrize(
    "class_name, kind, kwargs",
    [
        ("StableDiffusion3Img2ImgPipeline", "sd3", dict(strength=0.6, guidance_scale=5.0)),
        ("StableDiffusion3Img2ImgPipeline", "sd35", dict(strength=1.0, guidance_scale=1.0)),
        ("FluxImg2ImgPipeline", "flux_dev", dict(strength=0.7)),
        ("FluxImg2ImgPipeline", "flux_schnell", dict(strength=0.5, num_inference_steps=4)),
    ],
)
def test_image_to_image_equals_diffusers(mmdit_models, mmdit_packages, picture, class_name, kind, kwargs):
    compare(class_name, mmdit_models[kind], mmdit_packages[kind], **{**COMMON, "prompt": PROMPTS[0], **kwargs},
            image=picture[0])  # fmt: skip


@pytest.mark.parametrize(
    "class_name, kind, kwargs",
    [
        ("StableDiffusion3InpaintPipeline", "sd3", dict(strength=0.8, guidance_scale=5.0)),
        ("StableDiffusion3InpaintPipeline", "sd35", dict(strength=1.0, guidance_scale=4.0)),
        ("FluxInpaintPipeline", "flux_dev", dict(strength=0.8)),
        ("FluxInpaintPipeline", "flux_schnell", dict(strength=1.0, num_images_per_prompt=2)),
    ],
)
def test_inpainting_equals_diffusers(mmdit_models, mmdit_packages, picture, class_name, kind, kwargs):
    image, mask = picture
    args = {**COMMON, "prompt": PROMPTS[0], "num_inference_steps": 4, **kwargs}
    ours = compare(class_name, mmdit_models[kind], mmdit_packages[kind], image=image, mask_image=mask, **args)
    assert ours.shape[0] == kwargs.get("num_images_per_prompt", 1)


@pytest.mark.parametrize(
    "ours, theirs",
    [(getattr(P, name), name) for name in ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
     "StableDiffusion3InpaintPipeline", "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")],
)  # fmt: skip
def test_arguments_and_defaults_are_diffusers(ours, theirs):
    import diffusers

    mine = inspect.signature(ours.__call__).parameters
    reference = inspect.signature(getattr(diffusers, theirs).__call__).parameters
    positional = [n for n, p in mine.items() if p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"]
    assert positional == [n for n in reference if n != "self"][: len(positional)]
    skipped = {"generator", "self", "output_type", "return_dict", "joint_attention_kwargs", "ip_adapter_image",
               "ip_adapter_image_embeds", "negative_ip_adapter_image", "negative_ip_adapter_image_embeds",
               "callback_on_step_end_tensor_inputs", "adapters"}  # fmt: skip
    # diffrt's own: SD3.5's skip-layer guidance on image-to-image and inpainting too (diffusers has it for
    # text-to-image only)
    additions = {"skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start",
                 "skip_layer_guidance_stop"}  # fmt: skip
    for name, parameter in mine.items():
        if name in skipped or (name in additions and name not in reference):
            continue
        assert name in reference, f"{name} is not an argument of diffusers' {theirs}"
        assert parameter.default == reference[name].default, f"{name}: {parameter.default} vs {reference[name].default}"


def test_auto_pipelines_map_each_family(mmdit_packages):
    sd3 = P.AutoPipelineForText2Image.from_pretrained(mmdit_packages["sd3"])
    assert type(sd3) is P.StableDiffusion3Pipeline
    assert type(P.AutoPipelineForImage2Image.from_pipe(sd3)) is P.StableDiffusion3Img2ImgPipeline
    assert type(P.AutoPipelineForInpainting.from_pipe(sd3)) is P.StableDiffusion3InpaintPipeline
    flux = P.AutoPipelineForInpainting.from_pretrained(mmdit_packages["flux_dev"])
    assert type(flux) is P.FluxInpaintPipeline
    assert type(P.AutoPipelineForText2Image.from_pipe(flux)) is P.FluxPipeline


def test_latents_round_trip_and_callbacks(mmdit_packages):
    pipe = P.FluxPipeline.from_pretrained(mmdit_packages["flux_schnell"])
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=PROMPTS[0], generator=5, **COMMON)
    latents = pipe(**kwargs, output_type="latent").images
    assert latents.shape == (1, (SIZE // 4) ** 2, 16)  # packed 2x2 tokens of 4 latent channels
    seen = []

    def stop(p, i, t, tensors):
        seen.append((i, sorted(tensors)))
        p._interrupt = True
        return tensors

    pipe(**kwargs, callback_on_step_end=stop, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert seen == [(0, ["latents", "prompt_embeds"])]


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(height=30), ["height=30", "multiple of 4"]),
        (dict(height=8), ["height=8", "outside"]),
        (dict(skip_guidance_layers=[9], guidance_scale=5.0), ["skip_guidance_layers", "0 to 2"]),
        (dict(skip_guidance_layers="1"), ["skip_guidance_layers"]),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), ["noise"]),
        (dict(prompt=None), ["prompt is missing"]),
    ],
)
def test_bad_arguments_are_named(mmdit_packages, kwargs, names):
    pipe = P.StableDiffusion3Pipeline.from_pretrained(mmdit_packages["sd35"])
    call = {"prompt": PROMPTS[0], "num_inference_steps": 4, "height": SIZE, "width": SIZE,
            "skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0, **kwargs}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        pipe(**call)
    for name in names:
        assert name in str(error.value)


def test_a_pipeline_refuses_the_other_family(mmdit_packages):
    with pytest.raises(ConfigError, match="FluxPipeline"):
        P.StableDiffusion3Pipeline.from_pretrained(mmdit_packages["flux_dev"])
    with pytest.raises(ConfigError, match="StableDiffusion3Pipeline"):
        P.FluxImg2ImgPipeline.from_pretrained(mmdit_packages["sd3"])
