"""ONNX Runtime's CUDA provider on a real GPU: fp16 images against fp32, I/O binding, CUDA graphs, the auto choice.

Runs only where onnxruntime-gpu is installed and a CUDA device answers (``pytest -m gpu``); skipped elsewhere,
with the reason. The tiny test packages are exported here as everywhere (session fixtures in conftest.py).
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest

onnxruntime = pytest.importorskip("onnxruntime")

from diffrt.runtime.engines import SessionSettings, load_engine, ort_cuda  # noqa: E402

WHY_NOT = ort_cuda.cuda_unavailable(0)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(WHY_NOT is not None, reason=f"no ONNX Runtime CUDA: {WHY_NOT}")]

from diffrt.runtime.pipelines import (  # noqa: E402
    DDPMPipeline,
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

PROMPT = "a red cube on a table"
FP32 = SessionSettings(precision="fp32")
AUTO = SessionSettings()  # fp16 on CUDA, the depth estimator excepted


def picture(seed: int, size: int = 32) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def mask(size: int = 32) -> PIL.Image.Image:
    pixels = np.zeros((size, size), np.uint8)
    pixels[8:24, 8:24] = 255
    return PIL.Image.fromarray(pixels)


CASES = {
    "text2img": ("sd1", StableDiffusionPipeline, {}),
    "text2img_sd2": ("sd2", StableDiffusionPipeline, {}),
    "img2img": ("sd1", StableDiffusionImg2ImgPipeline, {"image": picture(1), "strength": 0.7}),
    "inpaint": ("inpaint", StableDiffusionInpaintPipeline, {"image": picture(2), "mask_image": mask()}),
    "depth2img": ("depth", StableDiffusionDepth2ImgPipeline, {"image": picture(3), "strength": 0.8}),
}


def generate(cls, package, settings, provider="cuda", **kwargs):
    pipe = cls.from_pretrained(package, provider=provider, session_settings=settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe(PROMPT, num_inference_steps=6, generator=0, output_type="np", **kwargs).images


@pytest.mark.parametrize("case", list(CASES))
def test_fp16_images_match_fp32_and_have_no_nan(packages, case):
    kind, cls, kwargs = CASES[case]
    fp32_pipe, fp32 = generate(cls, packages[kind], FP32, **kwargs)
    fp16_pipe, fp16 = generate(cls, packages[kind], AUTO, **kwargs)
    assert fp16_pipe.unet.provider == "CUDAExecutionProvider" and fp16_pipe.unet.precision == "fp16"
    assert fp16_pipe.vae_decoder.precision == "fp16" and fp32_pipe.unet.precision == "fp32"
    if kind == "depth":
        assert fp16_pipe.depth_estimator.precision == "fp32"
    assert not np.isnan(fp16).any() and not np.isnan(fp32).any()
    assert fp16.std() > 0.01  # an image, not a flat (black) field
    error = np.abs(fp16 - fp32).max()
    assert error <= 2e-2, f"{case}: fp16 differs from fp32 by {error}"


SDXL_CASES = {
    "sdxl_text2img": ("sdxl", StableDiffusionXLPipeline, {}),
    "sdxl_refiner_img2img": ("sdxl_refiner", StableDiffusionXLImg2ImgPipeline, {"image": picture(4, 64)}),
    "sdxl_inpaint": (
        "sdxl_inpaint",
        StableDiffusionXLInpaintPipeline,
        {"image": picture(5, 64), "mask_image": mask(64)},
    ),
}


@pytest.mark.parametrize("case", list(SDXL_CASES))
def test_sdxl_fp16_images_match_fp32_with_the_vae_kept_fp32(sdxl_packages, case):
    """SDXL's UNet and both text encoders run fp16; its VAE (force_upcast) stays fp32 under precision auto."""
    kind, cls, kwargs = SDXL_CASES[case]
    _, fp32 = generate(cls, sdxl_packages[kind], FP32, **kwargs)
    fp16_pipe, fp16 = generate(cls, sdxl_packages[kind], AUTO, **kwargs)
    assert fp16_pipe.unet.provider == "CUDAExecutionProvider" and fp16_pipe.unet.precision == "fp16"
    assert fp16_pipe.text_encoder_2.precision == "fp16"
    assert fp16_pipe.vae_decoder.precision == "fp32"
    assert not np.isnan(fp16).any() and fp16.std() > 0.01
    error = np.abs(fp16 - fp32).max()
    assert error <= 2e-2, f"{case}: fp16 differs from fp32 by {error}"


def test_ddpm_fp16_matches_fp32(packages):
    images = {}
    for name, settings in (("fp32", FP32), ("fp16", AUTO)):
        pipe = DDPMPipeline.from_pretrained(packages["ddpm"], provider="cuda", session_settings=settings)
        pipe.set_progress_bar_config(disable=True)
        images[name] = pipe(num_inference_steps=10, generator=0, output_type="np").images
    assert not np.isnan(images["fp16"]).any()
    assert np.abs(images["fp16"] - images["fp32"]).max() <= 2e-2


def test_cuda_fp32_matches_the_cpu_provider(packages):
    _, gpu = generate(StableDiffusionPipeline, packages["sd1"], FP32)
    _, cpu = generate(StableDiffusionPipeline, packages["sd1"], None, provider="cpu")
    assert np.abs(gpu - cpu).max() <= 5e-3  # TF32 matmuls and cuDNN's convolutions, not a different model


def test_auto_chooses_cuda_in_fp16_and_logs_why_tensorrt_was_skipped(packages, caplog):
    with caplog.at_level(logging.INFO, logger="diffrt.engines"):
        engine = load_engine(packages["sd1"] / "unet")
    assert engine.provider == "CUDAExecutionProvider" and engine.precision == "fp16"
    (record,) = [r for r in caplog.records if "provider 'auto' chose" in r.message]
    assert "chose ONNX Runtime CUDA (CUDAExecutionProvider)" in record.message
    assert "TensorRT:" in record.message


def unet_feeds(engine, batch=2, size=16, seed=0):
    """Random UNet inputs of the widths the graph declares."""
    rng = np.random.default_rng(seed)
    channels = engine.inputs["sample"].shape[1]
    width = engine.inputs["encoder_hidden_states"].shape[-1]
    return {
        "sample": rng.standard_normal((batch, channels, size, size)).astype(np.float32),
        "timestep": np.full((batch,), rng.integers(0, 1000), dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, width)).astype(np.float32),
    }


def test_io_binding_keeps_one_set_of_buffers_per_shape_and_equals_a_plain_run(packages):
    engine = load_engine(packages["sd1"] / "unet", "cuda", FP32)
    for seed in range(3):
        feeds = unet_feeds(engine, seed=seed)
        bound = engine.run(feeds)["out_sample"]
        plain = engine.session.run(["out_sample"], feeds)[0]
        np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-5)
    assert len(engine._device._bindings) == 1 and not engine._device._plain
    engine.run(unet_feeds(engine, batch=1, size=24))
    assert len(engine._device._bindings) == 2


def test_cuda_graph_replays_match_runs_without_it(packages):
    plain = load_engine(packages["sd1"] / "unet", "cuda", FP32)
    graphed = load_engine(packages["sd1"] / "unet", "cuda", SessionSettings(precision="fp32", cuda_graph=True))
    for seed in range(4):  # the first runs warm up and capture; the later ones replay with new inputs
        feeds = unet_feeds(plain, seed=seed)
        np.testing.assert_allclose(
            graphed.run(feeds)["out_sample"], plain.run(feeds)["out_sample"], rtol=1e-4, atol=1e-4
        )


def test_fp16_conversion_is_cached_and_reused(packages):
    first = load_engine(packages["sd2"] / "unet", "cuda", AUTO)
    cached = first._graph_file
    stamp = (first.model_path.parent / "model.onnx").stat().st_mtime_ns
    second = load_engine(packages["sd2"] / "unet", "cuda", SessionSettings(precision="fp16"))
    assert second._graph_file == cached and "fp16" in cached
    assert (first.model_path.parent / "model.onnx").stat().st_mtime_ns == stamp  # the package is never written
    feeds = unet_feeds(first)
    np.testing.assert_array_equal(first.run(feeds)["out_sample"], second.run(feeds)["out_sample"])
