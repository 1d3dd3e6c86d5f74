"""The depth estimator's input processing: transformers' DPT image processor in NumPy and PIL.

The reference is the class transformers 5.17 instantiates for ``"DPTImageProcessor"`` in an environment without
torchvision (the diffrt test and export environments): ``DPTImageProcessorPil``, its PIL backend. diffusers'
StableDiffusionDepth2ImgPipeline calls it as ``feature_extractor(images=image, return_tensors="pt").pixel_values``.
Per image: channels-first array -> optional resize through PIL (floats in [0, 1] are scaled to 0..255 and truncated
to uint8 for PIL, then scaled back) -> rescale (times ``rescale_factor``, in float64, stored as float32) -> normalise
((x - mean) / std in float32) -> optional centre padding to multiples of ``size_divisor``.

Note what this means for float arrays in [0, 1] (the way diffusers passes NumPy images on): they are rescaled by
``rescale_factor`` again after the resize, as transformers does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .errors import ConfigError, PackageError

CONFIG_NAME = "preprocessor_config.json"
_FILTERS = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}
_ACCEPTED_IMAGES = (
    "a PIL image, an array (H, W, C) / (C, H, W) / (B, H, W, C) with C in (1, 3) as uint8 or floats in [0, 1], "
    "or a list of these"
)
_DEFAULTS: dict[str, Any] = {  # transformers' class defaults, taken where a config leaves a field out or null
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": int(PIL.Image.Resampling.BICUBIC),
    "keep_aspect_ratio": False,
    "ensure_multiple_of": 1,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_pad": False,
    "size_divisor": None,
    "do_convert_rgb": None,
}


def _size(size: Any) -> tuple[int, int]:
    """(height, width) from {"height", "width"}, an int (square) or a (height, width) pair, as transformers reads it."""
    if isinstance(size, dict) and size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ConfigError(f"size={size!r} is not supported for DPT; accepted: {{'height': H, 'width': W}} or an int.")


def _resample(resample: Any) -> int:
    if isinstance(resample, str) and resample.lower() in _FILTERS:
        return int(_FILTERS[resample.lower()])
    if isinstance(resample, (int, np.integer)) and int(resample) in {int(f) for f in _FILTERS.values()}:
        return int(resample)
    raise ConfigError(
        f"resample={resample!r} is not supported; accepted: a PIL filter number 0-5 or one of {', '.join(_FILTERS)}."
    )


def _multiple_near(value: float, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value`` (Python's round: halves go to even)."""
    return round(value / multiple) * multiple


def _channels_first(image: Any) -> np.ndarray:
    """One image as an array (C, H, W), read the way transformers' PIL backend reads it."""
    if isinstance(image, PIL.Image.Image):
        pixels = np.array(image)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        shape = f" of shape {image.shape}" if isinstance(image, np.ndarray) else ""
        raise ConfigError(f"images holds a {type(image).__name__}{shape}; accepted: {_ACCEPTED_IMAGES}.")
    if image.shape[0] in (1, 3):  # transformers looks for channels first, so a (3, W, 3) array is taken as (C, H, W)
        return image
    if image.shape[-1] in (1, 3):
        return image.transpose(2, 0, 1)
    raise ConfigError(f"images holds an array of shape {image.shape}; accepted: {_ACCEPTED_IMAGES}.")


def _scaled_for_pil(pixels: np.ndarray) -> bool:
    """Whether transformers multiplies an image by 255 before handing it to PIL: floats that are not all whole
    numbers and lie in [0, 1]. Whole numbers in [0, 255] go as they are; anything else cannot become uint8."""
    if pixels.dtype == np.uint8:
        return False
    if np.allclose(pixels, pixels.astype(int)):
        if pixels.min() >= 0 and pixels.max() <= 255:
            return False
        raise ConfigError(f"images has whole values in [{pixels.min()}, {pixels.max()}]; accepted: 0..255.")
    if pixels.min() >= 0 and pixels.max() <= 1:
        return True
    raise ConfigError(f"images has values in [{pixels.min()}, {pixels.max()}]; accepted: floats in [0, 1] or 0..255.")


class DPTImageProcessor:
    """Preprocesses images for the DPT depth estimator; ``__call__`` returns ``pixel_values`` float32 (B, C, H, W).

    Fields as in transformers' preprocessor_config.json: ``size`` (target height/width), ``keep_aspect_ratio`` (scale
    both sides by the factor closer to 1), ``ensure_multiple_of``, ``resample`` (PIL filter number), ``do_rescale`` /
    ``rescale_factor``, ``do_normalize`` / ``image_mean`` / ``image_std``, ``do_pad`` / ``size_divisor`` (centre
    zero-padding) and ``do_convert_rgb`` (PIL images only).
    """

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | int | Sequence[int] | None = None,
        resample: int | str = int(PIL.Image.Resampling.BICUBIC),
        keep_aspect_ratio: bool = False,
        ensure_multiple_of: int = 1,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = (0.5, 0.5, 0.5),
        image_std: float | Sequence[float] = (0.5, 0.5, 0.5),
        do_pad: bool = False,
        size_divisor: int | None = None,
        do_convert_rgb: bool | None = None,
    ) -> None:
        self.do_resize = bool(do_resize)
        self.size = _size(_DEFAULTS["size"] if size is None else size)
        self.resample = _resample(resample)
        self.keep_aspect_ratio = bool(keep_aspect_ratio)
        if not isinstance(ensure_multiple_of, (int, np.integer)) or ensure_multiple_of < 1:
            raise ConfigError(f"ensure_multiple_of={ensure_multiple_of!r} is not supported; accepted: a positive int.")
        self.ensure_multiple_of = int(ensure_multiple_of)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = self._per_channel("image_mean", image_mean)
        self.image_std = self._per_channel("image_std", image_std)
        if size_divisor is not None and (not isinstance(size_divisor, (int, np.integer)) or size_divisor < 1):
            raise ConfigError(f"size_divisor={size_divisor!r} is not supported; accepted: a positive int or None.")
        self.do_pad = bool(do_pad)
        self.size_divisor = size_divisor
        self.do_convert_rgb = bool(do_convert_rgb)

    @staticmethod
    def _per_channel(name: str, value: float | Sequence[float]) -> tuple[float, ...] | float:
        if isinstance(value, (int, float)):
            return float(value)
        values = tuple(float(v) for v in value)
        if not values:
            raise ConfigError(f"{name}={value!r} is not supported; accepted: a number or one number per channel.")
        return values

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DPTImageProcessor:
        """From a preprocessor_config.json dict; unknown fields are ignored, missing or null ones take defaults."""
        if not isinstance(config, dict):
            raise ConfigError(f"config has type {type(config).__name__}; accepted: a dict (preprocessor_config.json).")
        fields = {key: config[key] if config.get(key) is not None else default for key, default in _DEFAULTS.items()}
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DPTImageProcessor:
        """From a folder holding preprocessor_config.json (depth_estimator/ or feature_extractor/) or the file."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise PackageError(f"{file} does not exist; accepted: a folder holding {CONFIG_NAME}, or the file itself.")
        try:
            config = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PackageError(f"{file} cannot be read as JSON ({exc}); accepted: a {CONFIG_NAME} file.") from exc
        return cls.from_config(config)

    # ------------------------------------------------------------------------------------------------ the steps

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of ``height`` x ``width`` is resized to."""
        scale_h, scale_w = self.size[0] / height, self.size[1] / width
        if self.keep_aspect_ratio:  # one factor for both sides: the one that changes the image least
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return (
            _multiple_near(scale_h * height, self.ensure_multiple_of),
            _multiple_near(scale_w * width, self.ensure_multiple_of),
        )

    def _resize(self, pixels: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (C, h, w) through a PIL image, as transformers' ``image_transforms.resize`` does."""
        height, width = self.output_size(*pixels.shape[-2:])
        scaled = _scaled_for_pil(pixels)
        hwc = pixels.transpose(1, 2, 0)
        if hwc.shape[-1] == 1:
            hwc = hwc[..., 0]
        if scaled:
            hwc = (hwc.astype(np.float64) * 255).astype(np.float32)
        image = PIL.Image.fromarray(hwc.astype(np.uint8))  # float -> uint8 truncates, as in transformers
        resized = np.array(image.resize((width, height), resample=self.resample))
        resized = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
        return (resized.astype(np.float64) * (1 / 255)).astype(np.float32) if scaled else resized

    def _normalize(self, pixels: np.ndarray) -> np.ndarray:
        if not np.issubdtype(pixels.dtype, np.floating):
            pixels = pixels.astype(np.float32)
        channels = pixels.shape[0]
        mean, std = self.image_mean, self.image_std
        mean = (mean,) * channels if isinstance(mean, float) else mean
        std = (std,) * channels if isinstance(std, float) else std
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(
                f"images has {channels}-channel images but image_mean/image_std have {len(mean)}/{len(std)} "
                "entries; accepted: RGB images (mode 'RGB', or arrays with 3 channels)."
            )
        mean = np.asarray(mean, dtype=pixels.dtype)[:, None, None]
        std = np.asarray(std, dtype=pixels.dtype)[:, None, None]
        return (pixels - mean) / std

    def _pad(self, pixels: np.ndarray) -> np.ndarray:
        """Zero-pad (C, H, W) on both sides (the odd pixel after) to multiples of ``size_divisor``."""

        def split(n: int) -> tuple[int, int]:
            extra = math.ceil(n / self.size_divisor) * self.size_divisor - n
            return extra // 2, extra - extra // 2

        return np.pad(pixels, ((0, 0), split(pixels.shape[1]), split(pixels.shape[2])), constant_values=0.0)

    def preprocess_one(self, image: PIL.Image.Image | np.ndarray) -> np.ndarray:
        """One image -> (C, H, W) pixel values in the dtype transformers ends with (float32 after rescaling)."""
        if self.do_convert_rgb and isinstance(image, PIL.Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        pixels = _channels_first(image)
        if self.do_resize:
            pixels = self._resize(pixels)
        if self.do_rescale:
            pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            pixels = self._normalize(pixels)
        if self.do_pad and self.size_divisor is not None:
            pixels = self._pad(pixels)
        return pixels

    def __call__(self, images: Any) -> np.ndarray:
        """PIL image(s) or arrays (H, W, C) / (B, H, W, C), uint8 or floats in [0, 1] -> float32 (B, C, H, W)."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ConfigError(f"images is an empty list; accepted: {_ACCEPTED_IMAGES}.")
            if all(isinstance(i, np.ndarray) and i.ndim == 4 for i in images):
                flat = [image for batch in images for image in batch]
            else:
                flat = list(images)
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            flat = list(images)
        elif isinstance(images, (PIL.Image.Image, np.ndarray)):
            flat = [images]
        else:
            raise ConfigError(f"images has type {type(images).__name__}; accepted: {_ACCEPTED_IMAGES}.")
        processed = [self.preprocess_one(image) for image in flat]
        shapes = {p.shape for p in processed}
        if len(shapes) > 1:
            raise ConfigError(
                f"images give pixel values of different shapes {sorted(shapes)}; accepted: images that resize to one "
                "size (same size or same aspect ratio)."
            )
        return np.stack(processed).astype(np.float32)
