"""The NumPy image processors against diffusers' VaeImageProcessor, torch's interpolate and transformers' DPT processor,
each run in the test on the same input."""

import json
import subprocess
import sys
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor as DiffusersProcessor

from diffrt.runtime.dpt_processor import DPTImageProcessor
from diffrt.runtime.errors import ConfigError
from diffrt.runtime.image_processor import VaeImageProcessor, interpolate_bicubic, interpolate_nearest

RNG = np.random.default_rng(1234)


def pil_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> PIL.Image.Image:
    """Random pixels over a smooth gradient (so resizing filters have something to do besides noise)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / max(width - 1, 1), ys * 255 / max(height - 1, 1), (xs + ys) % 256], axis=-1)
    noise = rng.integers(-40, 40, (height, width, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
    image = PIL.Image.fromarray(np.concatenate([rgb, alpha], axis=-1) if mode == "RGBA" else rgb)
    return image if mode in ("RGB", "RGBA") else image.convert(mode)


def mask_image(width: int, height: int, box: tuple[int, int, int, int]) -> PIL.Image.Image:
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    return PIL.Image.fromarray(mask)


def diffusers_mask_processor(vae_scale_factor: int = 8) -> DiffusersProcessor:
    return DiffusersProcessor(
        vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )


def both(ours, theirs, image, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours.preprocess(image, **kwargs)
        want = theirs.preprocess(image, **kwargs).numpy()
    assert got.dtype == np.float32
    assert got.shape == want.shape
    return got, want.astype(np.float32)


# ------------------------------------------------------------------------------------------------ preprocess (PIL)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("resize_mode", ["default", "fill", "crop"])
@pytest.mark.parametrize("size", [{}, {"height": 64, "width": 40}, {"height": 24, "width": 72}])
def test_preprocess_pil_equals_diffusers(mode, resize_mode, size):
    images = [pil_image(37, 53, mode, seed=1), pil_image(37, 53, mode, seed=2)]  # 37x53 rounds down to 32x48
    got, want = both(VaeImageProcessor(), DiffusersProcessor(), images, resize_mode=resize_mode, **size)
    np.testing.assert_array_equal(got, want)
    got, want = both(VaeImageProcessor(), DiffusersProcessor(), images[0], resize_mode=resize_mode, **size)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resample", ["lanczos", "bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("vae_scale_factor", [2, 8])
def test_preprocess_pil_filters_and_scale_factors(resample, vae_scale_factor):
    image = pil_image(45, 29, seed=3)
    ours = VaeImageProcessor(vae_scale_factor=vae_scale_factor, resample=resample)
    theirs = DiffusersProcessor(vae_scale_factor=vae_scale_factor, resample=resample)
    got, want = both(ours, theirs, image)
    np.testing.assert_array_equal(got, want)
    got, want = both(ours, theirs, image, height=27, width=51)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resize_mode", ["default", "fill", "crop"])
def test_preprocess_pil_crops_coords_and_conversions(resize_mode):
    image = pil_image(64, 48, "RGBA", seed=4)
    crop = (5, 3, 50, 40)
    for kwargs in ({}, {"do_convert_rgb": True}, {"do_convert_grayscale": True}):
        got, want = both(
            VaeImageProcessor(**kwargs),
            DiffusersProcessor(**kwargs),
            image,
            height=32,
            width=48,
            resize_mode=resize_mode,
            crops_coords=crop,
        )
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resize_mode", ["fill", "crop"])
@pytest.mark.parametrize("source", [(40, 60), (60, 40), (64, 64), (33, 77)])
def test_preprocess_fill_and_crop_at_all_aspect_ratios(resize_mode, source):
    image = pil_image(*source, seed=5)
    for height, width in [(32, 48), (48, 32), (40, 40), (64, 96)]:  # includes ratios equal to the source's
        got, want = both(
            VaeImageProcessor(), DiffusersProcessor(), image, height=height, width=width, resize_mode=resize_mode
        )
        np.testing.assert_array_equal(got, want)


def test_preprocess_pil_without_resize():
    images = [pil_image(37, 53, seed=6), pil_image(37, 53, seed=7)]
    got, want = both(VaeImageProcessor(do_resize=False), DiffusersProcessor(do_resize=False), images, height=16)
    assert got.shape == (2, 3, 53, 37)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------- preprocess (NumPy)


@pytest.mark.parametrize("size", [{}, {"height": 64, "width": 16}, {"height": 17, "width": 90}])
def test_preprocess_numpy_equals_diffusers(size):
    batch = RNG.random((2, 37, 53, 3), dtype=np.float32)
    for image in (batch, batch[0], [batch[0], batch[1]], [batch[:1], batch[1:]]):
        got, want = both(VaeImageProcessor(), DiffusersProcessor(), image, **size)
        np.testing.assert_array_equal(got, want)


def test_preprocess_numpy_dtypes_and_ranges():
    image = RNG.random((1, 29, 45, 3))
    cases = [
        image,  # float64: normalised in float64, as diffusers' tensor would be
        image.astype(np.float16),
        image.astype(np.float32) * 2 - 1,  # already in [-1, 1]: diffusers leaves it unnormalised
        (image * 255).astype(np.uint8),
    ]
    for case in cases:
        got, want = both(VaeImageProcessor(), DiffusersProcessor(), case)
        np.testing.assert_array_equal(got, want)


def test_preprocess_numpy_ignores_resize_mode_and_crops_coords_like_diffusers():
    image = RNG.random((1, 40, 56, 3), dtype=np.float32)
    got, want = both(
        VaeImageProcessor(),
        DiffusersProcessor(),
        image,
        height=32,
        width=32,
        resize_mode="fill",
        crops_coords=(0, 0, 9, 9),
    )
    np.testing.assert_array_equal(got, want)


def test_preprocess_passes_latents_through():
    latents = RNG.standard_normal((2, 4, 5, 7)).astype(np.float32)
    got = VaeImageProcessor().preprocess(latents)
    assert got is latents
    want = DiffusersProcessor().preprocess(torch.from_numpy(latents)).numpy()  # diffusers: a 4-channel tensor
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(VaeImageProcessor().preprocess([latents[:1], latents[1:]]), latents)


# ------------------------------------------------------------------------------------------------ mask processor


def test_mask_processor_pil_masks():
    masks = [mask_image(37, 53, (4, 9, 20, 30)), pil_image(37, 53, "L", seed=8), pil_image(37, 53, "RGB", seed=9)]
    for mask in masks:
        for size in ({}, {"height": 64, "width": 24}):
            for resize_mode in ("default", "fill", "crop"):
                got, want = both(
                    VaeImageProcessor.for_masks(8), diffusers_mask_processor(8), mask, resize_mode=resize_mode, **size
                )
                np.testing.assert_array_equal(got, want)
                assert got.shape[1] == 1 and set(np.unique(got)) <= {0.0, 1.0}


def test_mask_processor_numpy_masks():
    masks = RNG.random((2, 37, 53), dtype=np.float32)
    cases = [masks, masks[0], masks[0][..., None], [masks[0], masks[1]], masks[..., None]]
    for mask in cases:
        got, want = both(VaeImageProcessor.for_masks(8), diffusers_mask_processor(8), mask, height=48, width=40)
        np.testing.assert_array_equal(got, want)
        assert set(np.unique(got)) <= {0.0, 1.0}


def test_binarize_does_not_touch_the_input():
    mask = RNG.random((1, 16, 16), dtype=np.float32)
    before = mask.copy()
    VaeImageProcessor.for_masks(8).preprocess(mask)
    np.testing.assert_array_equal(mask, before)
    out = VaeImageProcessor.binarize(np.array([0.2, 0.5, 0.7, np.nan], np.float32))
    np.testing.assert_array_equal(out, [0.0, 1.0, 1.0, np.nan])


# ----------------------------------------------------------------------------------------------------- postprocess


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("do_denormalize", [None, [True, False, True], [False, False, False]])
@pytest.mark.parametrize("do_normalize", [True, False])
def test_postprocess_equals_diffusers(channels, do_denormalize, do_normalize):
    decoded = (RNG.standard_normal((3, channels, 24, 16)) * 0.8).astype(np.float32)
    if not do_normalize and do_denormalize is None:
        decoded = np.clip(decoded * 0.5 + 0.5, 0, 1)  # undenormalised output must already be an image
    ours, theirs = VaeImageProcessor(do_normalize=do_normalize), DiffusersProcessor(do_normalize=do_normalize)
    tensor = torch.from_numpy(decoded)

    got = ours.postprocess(decoded, output_type="np", do_denormalize=do_denormalize)
    want = theirs.postprocess(tensor, output_type="np", do_denormalize=do_denormalize)
    assert got.dtype == np.float32 and got.shape == (3, 24, 16, channels)
    np.testing.assert_array_equal(got, want)

    got = ours.postprocess(decoded, output_type="pil", do_denormalize=do_denormalize)
    want = theirs.postprocess(tensor, output_type="pil", do_denormalize=do_denormalize)
    assert [g.mode for g in got] == [w.mode for w in want] == ["RGB" if channels == 3 else "L"] * 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.array(g), np.array(w))

    assert ours.postprocess(decoded, output_type="latent") is decoded


def test_numpy_pil_helpers_equal_diffusers():
    image = RNG.random((2, 9, 7, 3), dtype=np.float32)
    for g, w in zip(VaeImageProcessor.numpy_to_pil(image), DiffusersProcessor.numpy_to_pil(image)):
        np.testing.assert_array_equal(np.array(g), np.array(w))
    pils = [pil_image(7, 9, seed=10), pil_image(7, 9, seed=11)]
    np.testing.assert_array_equal(VaeImageProcessor.pil_to_numpy(pils), DiffusersProcessor.pil_to_numpy(pils))
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(VaeImageProcessor.normalize(x), DiffusersProcessor.normalize(torch.from_numpy(x)))
    np.testing.assert_array_equal(VaeImageProcessor.denormalize(x), DiffusersProcessor.denormalize(torch.from_numpy(x)))
    nhwc = RNG.random((2, 13, 11, 3), dtype=np.float32)
    np.testing.assert_array_equal(VaeImageProcessor().resize(nhwc, 8, 24), DiffusersProcessor().resize(nhwc, 8, 24))
    for image in (pil_image(37, 53, seed=12), nhwc):
        for height, width in ((None, None), (70, None), (None, 17)):
            assert VaeImageProcessor().get_default_height_width(image, height, width) == (
                DiffusersProcessor().get_default_height_width(image, height, width)
            )


# ---------------------------------------------------------------------------------------------------- inpaint crops


@pytest.mark.parametrize(
    "box", [(10, 12, 30, 20), (0, 0, 5, 64), (40, 2, 64, 10), (20, 30, 21, 31), (0, 0, 64, 48), (50, 40, 64, 48)]
)
@pytest.mark.parametrize("target", [(64, 64), (96, 32), (24, 80)])
@pytest.mark.parametrize("pad", [0, 4, 32])
def test_get_crop_region_equals_diffusers(box, target, pad):
    mask = mask_image(64, 48, box)
    got = VaeImageProcessor.get_crop_region(mask, *target, pad=pad)
    want = DiffusersProcessor.get_crop_region(mask, *target, pad=pad)
    assert got == want
    assert all(isinstance(v, int) for v in got)


@pytest.mark.parametrize("crop", [False, True])
def test_apply_overlay_equals_diffusers(crop):
    init = pil_image(64, 48, seed=13)
    mask = mask_image(64, 48, (10, 12, 30, 28))
    crop_coords = VaeImageProcessor.get_crop_region(mask, 32, 32, pad=4) if crop else None
    generated = pil_image(32, 32, seed=14) if crop else pil_image(64, 48, seed=15)
    got = VaeImageProcessor().apply_overlay(mask, init, generated, crop_coords)
    want = DiffusersProcessor().apply_overlay(mask, init, generated, crop_coords)
    assert got.mode == want.mode == "RGB" and got.size == want.size
    np.testing.assert_array_equal(np.array(got), np.array(want))


# --------------------------------------------------------------------------------------------------- interpolation

SIZES_IN = [(1, 1), (3, 5), (8, 8), (37, 53), (64, 48)]
SIZES_OUT = [(1, 1), (2, 3), (4, 4), (16, 16), (19, 11), (96, 70), (7, 29)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interpolate_nearest_equals_torch(dtype):
    for size_in in SIZES_IN:
        x = RNG.standard_normal((2, 3, *size_in)).astype(dtype)
        for size_out in SIZES_OUT:
            got = interpolate_nearest(x, size_out)
            want = F.interpolate(torch.from_numpy(x), size=size_out, mode="nearest").numpy()
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    x = RNG.standard_normal((1, 1, 6, 6)).astype(dtype)
    np.testing.assert_array_equal(interpolate_nearest(x, 4), F.interpolate(torch.from_numpy(x), size=4).numpy())


def test_interpolate_nearest_indices_over_many_sizes():
    for size_in in range(1, 130, 3):
        x = np.arange(size_in, dtype=np.float32).reshape(1, 1, 1, size_in)
        for size_out in range(1, 260, 5):
            got = interpolate_nearest(x, (1, size_out))
            np.testing.assert_array_equal(got, F.interpolate(torch.from_numpy(x), size=(1, size_out)).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_interpolate_bicubic_equals_torch(dtype):
    for size_in in SIZES_IN:
        x = RNG.standard_normal((2, 3, *size_in)).astype(dtype)
        for size_out in SIZES_OUT:
            got = interpolate_bicubic(x, size_out)
            want = F.interpolate(torch.from_numpy(x), size=size_out, mode="bicubic", align_corners=False).numpy()
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-5, (size_in, size_out)


def test_interpolate_bicubic_depth_map_sizes():
    """The depth pipeline's case: a DPT depth map (B, 1, H, W) to latent size."""
    depth = (RNG.random((2, 1, 384, 384), dtype=np.float32) * 10).astype(np.float32)
    for size_out in [(64, 64), (96, 64), (48, 80)]:
        got = interpolate_bicubic(depth, size_out)
        want = F.interpolate(torch.from_numpy(depth), size=size_out, mode="bicubic", align_corners=False).numpy()
        assert np.abs(got - want).max() <= 1e-5 * 10


# ------------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "image",
    [
        "picture.png",
        None,
        torch.zeros(1, 3, 8, 8),
        np.zeros((8,)),
        np.zeros((1, 2, 3, 4, 5)),
        [],
        [pil_image(8, 8), np.zeros((8, 8, 3))],
        [np.zeros((8, 8, 3)), "x"],
    ],
    ids=["str", "none", "tensor", "1d", "5d", "empty", "mixed", "mixed-str"],
)
def test_preprocess_rejects_bad_images(image):
    with pytest.raises(ConfigError, match="image"):
        VaeImageProcessor().preprocess(image)


def test_bad_arguments_are_config_errors():
    decoded = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="output_type.*'pil', 'np', 'latent'"):
        VaeImageProcessor().postprocess(decoded, output_type="pt")
    with pytest.raises(ConfigError, match="image"):
        VaeImageProcessor().postprocess(decoded[0])
    with pytest.raises(ConfigError, match="do_denormalize"):
        VaeImageProcessor().postprocess(decoded, do_denormalize=[True, False])
    with pytest.raises(ConfigError, match="resize_mode"):
        VaeImageProcessor().preprocess(pil_image(8, 8), resize_mode="stretch")
    with pytest.raises(ConfigError, match="resize_mode"):
        VaeImageProcessor().resize(np.zeros((1, 8, 8, 3)), 8, 8, resize_mode="fill")
    with pytest.raises(ConfigError, match="do_convert_rgb"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ConfigError, match="resample"):
        VaeImageProcessor(resample="cubic")
    with pytest.raises(ConfigError, match="image"):
        VaeImageProcessor(do_resize=False).preprocess([pil_image(8, 8), pil_image(16, 8)])


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys; import diffrt.runtime.image_processor, diffrt.runtime.dpt_processor; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules and 'diffusers' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------------------------- DPT

TINY = {"size": {"height": 32, "width": 32}, "keep_aspect_ratio": False, "do_resize": True, "do_rescale": True}
PRODUCTION = {
    "size": {"height": 384, "width": 384},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 32,
    "resample": 3,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
}
PADDED = {
    "size": {"height": 64, "width": 48},
    "keep_aspect_ratio": True,
    "ensure_multiple_of": 7,
    "resample": 2,
    "do_pad": True,
    "size_divisor": 32,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


@pytest.fixture(scope="module", params=["tiny", "production", "padded"])
def dpt_pair(request, tmp_path_factory):
    """Ours loaded from the preprocessor_config.json transformers saves, and transformers' processor loaded back
    from it the way diffusers loads the depth pipeline's feature_extractor."""
    import transformers

    config = {"tiny": TINY, "production": PRODUCTION, "padded": PADDED}[request.param]
    folder = tmp_path_factory.mktemp(f"dpt_{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.DPTImageProcessor(**config).save_pretrained(folder)
        theirs = transformers.DPTImageProcessor.from_pretrained(folder)
    return DPTImageProcessor.from_pretrained(folder), theirs


def dpt_inputs():
    return [
        pil_image(37, 53, seed=20),
        pil_image(640, 480, seed=21),
        [pil_image(300, 200, seed=22), pil_image(300, 200, seed=23)],
        RNG.random((2, 48, 40, 3), dtype=np.float32),  # diffusers' depth pipeline: a batch of floats in [0, 1]
        list(RNG.random((2, 33, 65, 3))),
        RNG.integers(0, 256, (33, 65, 3), dtype=np.uint8),
        RNG.random((3, 20, 30), dtype=np.float32),  # channels first
    ]


def test_dpt_equals_transformers(dpt_pair):
    ours, theirs = dpt_pair
    assert type(theirs).__name__ in ("DPTImageProcessorPil", "DPTImageProcessor")
    for images in dpt_inputs():
        got = ours(images)
        want = theirs(images=images, return_tensors="pt").pixel_values.numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dpt_matches_the_class_transformers_instantiates():
    """Without torchvision transformers 5 gives its PIL backend for "DPTImageProcessor"; that is the one we match."""
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processor = transformers.DPTImageProcessor(**TINY)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert type(processor).__name__ == "DPTImageProcessorPil"


def test_dpt_from_config_ignores_unknown_fields_and_takes_defaults(tmp_path):
    config = {"feature_extractor_type": "DPTFeatureExtractor", "size": 64, "do_pad": None, "crop_size": {"x": 1}}
    ours = DPTImageProcessor.from_config(config)
    assert ours.size == (64, 64) and ours.resample == 3 and ours.do_rescale and ours.do_pad is False
    file = tmp_path / "preprocessor_config.json"
    file.write_text(json.dumps(config))
    image = pil_image(40, 30, seed=24)
    np.testing.assert_array_equal(DPTImageProcessor.from_pretrained(file)(image), ours(image))
    assert ours.output_size(30, 40) == (64, 64)


def test_dpt_errors_name_images():
    ours = DPTImageProcessor.from_config(TINY)
    for bad in ("x.png", np.zeros((8, 8)), np.zeros((8, 8, 5)), [], [np.zeros((8, 8, 3)), 3]):
        with pytest.raises(ConfigError, match="image"):
            ours(bad)
    with pytest.raises(ConfigError, match="image"):
        ours(pil_image(8, 8, "RGBA"))  # 4 channels against a 3-entry image_mean, as transformers refuses it
    with pytest.raises(ConfigError, match="image"):
        ours(np.full((8, 8, 3), 2.5, np.float32))  # neither [0, 1] floats nor whole numbers
    with pytest.raises(ConfigError, match="size"):
        DPTImageProcessor.from_config({"size": {"shortest_edge": 384}})
