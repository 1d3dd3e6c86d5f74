"""What a call may ask of a package, and images and masks as users pass them.

- :class:`Limits`: the image sizes and batch a call may ask for (by default the shape range the package was
  exported for, from its ``diffrt.json``) and the pixels its input images may hold. A package built for 512 x 512
  asked for 4096 x 4096 would run for an hour; an image file of 81 megapixels would fill memory once decoded.
- :func:`user_images`: PIL images of any mode, uint8 or float arrays, as diffusers users pass them, made into what
  the image processor expects (RGB for images, L for masks, floats in [0, 1]) or refused in one sentence naming the
  argument: non-finite values, values outside [0, 1], channels-first arrays, a channel count that is no image's.

Everything here runs before any network does: a refused call costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

from ..errors import ConfigError
from ..networks import ShapeRange

DEFAULT_INPUT_PIXELS = 4096 * 4096
"""Most pixels the input images of one call may hold together (each image and mask counts)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one call, each refused with a sentence; None means no bound.

    - ``height`` / ``width``: (least, most) pixels of the images made;
    - ``batch``: most images one call makes (prompts x ``num_images_per_prompt``);
    - ``input_pixels``: most pixels of the call's input images and masks together, checked before they are decoded
      into arrays (PIL's decompression-bomb guard, as a sentence and at a size that fits a server).
    """

    height: tuple[int, int] | None = None
    width: tuple[int, int] | None = None
    batch: int | None = None
    input_pixels: int | None = DEFAULT_INPUT_PIXELS

    @classmethod
    def of_range(cls, shape_range: ShapeRange | None) -> Limits:
        """The sizes and batch a package's declared shape range allows (no size or batch bound without one)."""
        if shape_range is None:
            return cls()
        h, w = shape_range.height, shape_range.width
        return cls(height=(h[0], h[2]), width=(w[0], w[2]), batch=shape_range.batch[2])

    def check_size(self, height: int, width: int, why: str) -> None:
        for name, value, bound in (("height", height, self.height), ("width", width, self.width)):
            if bound is not None and not bound[0] <= value <= bound[1]:
                raise ConfigError(
                    f"{name}={value} is outside {bound[0]} to {bound[1]} pixels, the range {why}; accepted: a "
                    f"{name} in that range, or pipeline limits set wider (from_pretrained(..., limits=Limits(...)), "
                    "`diffrt generate --max-size`)."
                )

    def check_batch(self, images: int, why: str) -> None:
        if self.batch is not None and images > self.batch:
            raise ConfigError(
                f"the call makes {images} images (prompts x num_images_per_prompt), more than {self.batch}, the most "
                f"{why}; accepted: at most {self.batch}, or pipeline limits set higher "
                "(from_pretrained(..., limits=Limits(batch=...)), `diffrt generate --max-batch`)."
            )


def user_images(name: str, image: Any, mask: bool = False, latent_channels: int | None = None) -> Any:
    """``image`` (one image, a batch array, or a list) with each item made what the image processor takes: PIL
    images converted to RGB (masks: L); integer arrays scaled from 0-255 to [0, 1]; float arrays checked finite and
    in [0, 1]. A 4-D array with ``latent_channels`` channels on axis 1 is latents: checked finite only."""
    if isinstance(image, (list, tuple)):
        return [user_image(f"{name}[{i}]", item, mask, latent_channels) for i, item in enumerate(image)]
    return user_image(name, image, mask, latent_channels)


def user_image(name: str, image: Any, mask: bool, latent_channels: int | None) -> Any:
    if isinstance(image, PIL.Image.Image):
        wanted = "L" if mask else "RGB"
        return image if image.mode == wanted else image.convert(wanted)
    if not isinstance(image, np.ndarray):
        return image  # the image processor names what it accepts
    if image.ndim == 4 and latent_channels and image.shape[1] == latent_channels and not mask:
        return _finite(name, np.asarray(image, np.float32), "latents")
    _check_layout(name, image, mask)
    if not mask and (image.ndim == 2 or image.shape[-1] == 1):  # grayscale: the VAE takes RGB
        image = np.repeat(image[..., None] if image.ndim == 2 else image, 3, axis=-1)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ConfigError(
                f"{name} holds integers from {image.min()} to {image.max()}; accepted: uint8-range integers "
                "(0 to 255) or floats in [0, 1]."
            )
        return image.astype(np.float32) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise ConfigError(f"{name} has dtype {image.dtype}; accepted: uint8 (0 to 255) or floats in [0, 1].")
    image = _finite(name, image.astype(np.float32, copy=False), "pixels")
    low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        hint = " (a uint8-range image stored as floats: divide it by 255)" if high > 1.0 and high <= 255.0 else ""
        raise ConfigError(
            f"{name} holds values from {low:g} to {high:g}{hint}; accepted: floats in [0, 1] or uint8 (0 to 255)."
        )
    return image


def _check_layout(name: str, image: np.ndarray, mask: bool) -> None:
    """Channels-last layouts only: (H, W) / (B, H, W) masks or grayscale, (H, W, C) / (B, H, W, C) with C = 1 or 3
    (images) or 1 (masks)."""
    channels = (1,) if mask else (1, 3)
    ok = image.ndim == 2 or (image.ndim == 3 and (mask or image.shape[-1] in channels))
    ok = ok or (image.ndim == 4 and image.shape[-1] in channels)
    if ok:
        return
    layout = "(H, W), (B, H, W) or (H, W, 1)" if mask else "(H, W, 3) or (B, H, W, 3) (or 1 channel)"
    hint = ""
    if image.ndim in (3, 4) and image.shape[-3] in (1, 3) and image.shape[-1] > 4:
        hint = " (channels first: move the channel axis last, e.g. array.transpose(1, 2, 0))"
    raise ConfigError(f"{name} has shape {image.shape}{hint}; accepted: channels-last {layout}.")


def _finite(name: str, array: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ConfigError(f"{name} holds {bad} non-finite {what} (NaN or infinity); accepted: finite values.")
    return array


def input_pixels(*images: Any) -> int:
    """Pixels of every image, mask or array given (lists counted item by item), before anything is decoded."""
    total = 0
    for image in images:
        for item in image if isinstance(image, (list, tuple)) else (image,):
            if isinstance(item, PIL.Image.Image):
                total += item.width * item.height
            elif isinstance(item, np.ndarray) and item.ndim >= 2:
                total += int(np.prod(item.shape[:-1] if item.ndim >= 3 and item.shape[-1] in (1, 3, 4) else item.shape))
    return total


def check_finite(name: str, value: Any) -> np.ndarray | None:
    """A tensor argument (latents, embeddings, depth map) as float32, refused if it holds NaN or infinity."""
    if value is None:
        return None
    return _finite(name, np.asarray(value, dtype=np.float32), "values")
