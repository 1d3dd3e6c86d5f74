"""Image pre- and post-processing for the Stable Diffusion pipelines, in NumPy and PIL.

``VaeImageProcessor`` gives the numbers of ``diffusers.image_processor.VaeImageProcessor`` (diffusers 0.42) with NumPy
arrays where diffusers has torch tensors. ``interpolate_nearest`` and ``interpolate_bicubic`` reproduce
``torch.nn.functional.interpolate`` (modes "nearest" and "bicubic", align_corners=False) to float32 rounding.

Layouts: arrays handed in by users are channels-last, (H, W, C) or (B, H, W, C) floats in [0, 1] (grayscale also
(H, W) / (B, H, W)); arrays going to and coming from the networks are channels-first, (B, C, H, W).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
from PIL import ImageOps

from .errors import ConfigError

# PIL filters under the names diffusers' configs use ("linear" is diffusers' alias of bilinear).
PIL_RESAMPLE = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}
RESIZE_MODES = ("default", "fill", "crop")
OUTPUT_TYPES = ("pil", "np", "latent")
_ACCEPTED_IMAGES = (
    "a PIL image, a float array (H, W, C) / (B, H, W, C) in [0, 1] ((H, W) / (B, H, W) for grayscale), "
    "a (B, 4, h, w) latent array, or a list of PIL images or of arrays (not mixed)"
)


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair, as torch's ``interpolate(size=...)`` reads it."""
    pair = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"size={size!r} is not supported; accepted: a positive int or a (height, width) pair.")
    return pair


def _check_nchw(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ConfigError(f"{name} has type {type(x).__name__} shape {shape}; accepted: a 4-D array (B, C, H, W).")
    return x


def _opmath(x: np.ndarray) -> type:
    """torch computes indices and weights in double for double tensors and in float for all other dtypes."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _nearest_indices(in_size: int, out_size: int, dtype: type) -> np.ndarray:
    # torch: src = floor(dst * (in / out)), all in the tensor's opmath type, clamped to the last pixel.
    scale = dtype(in_size) / dtype(out_size)
    src = np.floor(np.arange(out_size, dtype=dtype) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def interpolate_nearest(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size, mode="nearest")`` for ``x`` (B, C, H, W); returns (B, C, h, w).

    Used by the inpaint pipeline to shrink the mask to the latent size.
    """
    x = _check_nchw("x", x)
    height, width = _size_pair(size)
    dtype = _opmath(x)
    rows = _nearest_indices(x.shape[2], height, dtype)
    cols = _nearest_indices(x.shape[3], width, dtype)
    return x[:, :, rows[:, None], cols[None, :]]


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray, dtype: type) -> np.ndarray:
    """a * b + c rounded once, as the fused multiply-add torch's compiled kernel uses (exact for float32 operands)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(dtype)


def _cubic_taps(in_size: int, out_size: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (4, out) clamped to the image and Keys weights (4, out) with a = -0.75, as torch's CPU kernel.

    The source position and one step of the outer polynomial are fused multiply-adds in torch's build: emulated so that
    the weights agree bit for bit.
    """
    one, a = dtype(1.0), dtype(-0.75)
    scale = dtype(in_size) / dtype(out_size)
    real = _fma(scale, np.arange(out_size, dtype=dtype) + dtype(0.5), dtype(-0.5), dtype)  # align_corners=False
    base = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    t = np.clip(real - base.astype(dtype), dtype(0.0), one)

    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + dtype(2.0)) * d - (a + dtype(3.0))) * d * d + one

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return _fma(a * d - dtype(5.0) * a, d, dtype(8.0) * a, dtype) * d - dtype(4.0) * a

    weights = np.stack([far(t + one), near(t), near(one - t), far(one - t + one)]).astype(dtype)
    taps = np.clip(base[None, :] + np.arange(-1, 3)[:, None], 0, in_size - 1)
    return taps, weights


def interpolate_bicubic(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size, mode="bicubic", align_corners=False)`` for ``x`` (B, C, H, W).

    Returns (B, C, h, w) in x's float dtype (float32 for other dtypes). Like torch: Keys kernel with a = -0.75, source
    indices clamped at the borders (no antialiasing), width pass inside, height pass outside, each summed tap by tap.
    Used by the depth pipeline to resize the depth map to the latent size.
    """
    x = _check_nchw("x", x)
    height, width = _size_pair(size)
    dtype = _opmath(x)
    src = x.astype(dtype, copy=False)
    col_taps, col_w = _cubic_taps(x.shape[3], width, dtype)
    row_taps, row_w = _cubic_taps(x.shape[2], height, dtype)
    rows = None
    for k in range(4):  # width pass: every source row resized to the output width
        term = src[:, :, :, col_taps[k]] * col_w[k]
        rows = term if rows is None else rows + term
    out = None
    for k in range(4):  # height pass over the width-resized rows
        term = rows[:, :, row_taps[k], :] * row_w[k][:, None]
        out = term if out is None else out + term
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return out.astype(out_dtype, copy=False)


class VaeImageProcessor:
    """Turns user images into VAE input (B, C, H, W) in [-1, 1] and VAE output back into images, as diffusers does.

    Args mean what they mean in diffusers: ``vae_scale_factor`` (sizes round down to multiples of it), ``do_resize``,
    ``resample`` (PIL filter: "lanczos", "bicubic", "bilinear", "linear", "nearest"), ``reducing_gap`` (PIL's),
    ``do_normalize`` ([0, 1] -> [-1, 1]), ``do_binarize`` (0/1 at 0.5), ``do_convert_rgb`` / ``do_convert_grayscale``
    (PIL inputs only), ``vae_latent_channels`` (a 4-D array with this many channels on axis 1 is taken as latents).
    """

    def __init__(
        self,
        vae_scale_factor: int = 8,
        do_resize: bool = True,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
        vae_latent_channels: int = 4,
    ) -> None:
        if not isinstance(vae_scale_factor, (int, np.integer)) or vae_scale_factor < 1:
            raise ConfigError(f"vae_scale_factor={vae_scale_factor!r} is not supported; accepted: a positive int.")
        if resample not in PIL_RESAMPLE:
            raise ConfigError(
                f"resample={resample!r} is not supported; accepted: {', '.join(map(repr, PIL_RESAMPLE))}."
            )
        if do_convert_rgb and do_convert_grayscale:
            raise ConfigError(
                "do_convert_rgb and do_convert_grayscale are both True; accepted: at most one of them set."
            )
        self.vae_scale_factor = int(vae_scale_factor)
        self.do_resize = do_resize
        self.resample = resample
        self.reducing_gap = reducing_gap
        self.do_normalize = do_normalize
        self.do_binarize = do_binarize
        self.do_convert_rgb = do_convert_rgb
        self.do_convert_grayscale = do_convert_grayscale
        self.vae_latent_channels = vae_latent_channels

    @classmethod
    def for_masks(cls, vae_scale_factor: int = 8) -> VaeImageProcessor:
        """The inpainting mask processor: grayscale, not normalised, binarised at 0.5 (diffusers' mask_processor)."""
        return cls(vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True)

    # ----------------------------------------------------------------------------------------------- static helpers

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """(H, W, C) or (B, H, W, C) floats in [0, 1] -> PIL images; one channel gives mode "L"."""
        if images.ndim == 3:
            images = images[None]
        pixels = (images * 255).round().astype(np.uint8)
        if pixels.shape[-1] == 1:
            return [PIL.Image.fromarray(p[..., 0]) for p in pixels]  # a 2-D uint8 array is an "L" image
        return [PIL.Image.fromarray(p) for p in pixels]

    @staticmethod
    def pil_to_numpy(images: PIL.Image.Image | list[PIL.Image.Image]) -> np.ndarray:
        """PIL image(s) -> float32 (B, H, W, C) in [0, 1] ((B, H, W) for single-band images)."""
        if not isinstance(images, list):
            images = [images]
        return np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)

    @staticmethod
    def normalize(images: np.ndarray) -> np.ndarray:
        """[0, 1] -> [-1, 1], any layout."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [0, 1], clipped, any layout."""
        return np.clip(images * 0.5 + 0.5, 0, 1)

    @staticmethod
    def binarize(image: np.ndarray) -> np.ndarray:
        """Values below 0.5 -> 0, the others -> 1 (NaN stays NaN, as in diffusers); returns a new array."""
        out = np.array(image, copy=True)
        out[out < 0.5] = 0
        out[out >= 0.5] = 1
        return out

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    @staticmethod
    def get_crop_region(
        mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0
    ) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2): the box around the mask's non-zero pixels, grown by ``pad`` and then widened (or made
        taller) to the aspect ratio ``width / height``, kept inside the mask image. For ``padding_mask_crop``."""
        mask = np.array(mask_image.convert("L"))
        h, w = mask.shape

        def margins(used: np.ndarray) -> tuple[int, int]:  # empty lines before the first and after the last used one
            if not used.any():
                return len(used), len(used)
            return int(np.argmax(used)), int(np.argmax(used[::-1]))

        left, right = margins((mask != 0).any(axis=0))
        top, bottom = margins((mask != 0).any(axis=1))
        x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
        x2, y2 = int(min(w - right + pad, w)), int(min(h - bottom + pad, h))

        def widen(lo: int, hi: int, grow: int, limit: int) -> tuple[int, int]:
            lo, hi = lo - grow // 2, hi + grow - grow // 2
            if hi >= limit:  # shift back inside at the far edge
                lo, hi = lo - (hi - limit), limit
            if lo < 0:  # then at the near edge
                lo, hi = 0, hi - lo
            return lo, min(hi, limit)

        target_ratio = width / height
        if (x2 - x1) / (y2 - y1) > target_ratio:
            y1, y2 = widen(y1, y2, int((x2 - x1) / target_ratio - (y2 - y1)), mask_image.height)
        else:
            x1, x2 = widen(x1, x2, int((y2 - y1) * target_ratio - (x2 - x1)), mask_image.width)
        return x1, y1, x2, y2

    # -------------------------------------------------------------------------------------------------- resizing

    def get_default_height_width(
        self, image: PIL.Image.Image | np.ndarray, height: int | None = None, width: int | None = None
    ) -> tuple[int, int]:
        """(height, width) of ``image`` where not given, rounded down to multiples of ``vae_scale_factor``.

        Arrays are read as diffusers reads them: (B, H, W) or (B, H, W, C).
        """
        if isinstance(image, PIL.Image.Image):
            image_height, image_width = image.height, image.width
        else:
            image_height, image_width = image.shape[1], image.shape[2]
        height = image_height if height is None else height
        width = image_width if width is None else width
        f = self.vae_scale_factor
        return height - height % f, width - width % f

    def _pil_filter(self) -> PIL.Image.Resampling:
        return PIL_RESAMPLE[self.resample]

    def _fit(self, image: PIL.Image.Image, width: int, height: int, cover: bool) -> tuple[PIL.Image.Image, int, int]:
        """Keep the aspect ratio and resize to match the target on one side: the side that makes the image cover the
        target (``cover``) or fit inside it. Integer arithmetic as in diffusers."""
        ratio, src_ratio = width / height, image.width / image.height
        match_width = ratio > src_ratio if cover else ratio < src_ratio  # equal ratios: both match the height
        src_w = width if match_width else image.width * height // image.height
        src_h = image.height * width // image.width if match_width else height
        return image.resize((src_w, src_h), resample=self._pil_filter()), src_w, src_h

    def _resize_and_fill(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Fit inside (width, height), centre, and fill the two bands by stretching the image's edge lines."""
        resized, src_w, src_h = self._fit(image, width, height, cover=False)
        res = PIL.Image.new("RGB", (width, height))
        left, top = width // 2 - src_w // 2, height // 2 - src_h // 2
        res.paste(resized, box=(left, top))
        ratio, src_ratio = width / height, image.width / image.height
        if ratio < src_ratio and top > 0:  # bands above and below: stretch the first and last rows
            res.paste(resized.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
            edge = (0, resized.height, width, resized.height)
            res.paste(resized.resize((width, top), box=edge), box=(0, top + src_h))
        elif ratio > src_ratio and left > 0:  # bands left and right: stretch the first and last columns
            res.paste(resized.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
            edge = (resized.width, 0, resized.width, height)
            res.paste(resized.resize((left, height), box=edge), box=(left + src_w, 0))
        return res

    def _resize_and_crop(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Cover (width, height) keeping the aspect ratio, centre, and cut what sticks out."""
        resized, src_w, src_h = self._fit(image, width, height, cover=True)
        res = PIL.Image.new("RGB", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res

    def resize(
        self, image: PIL.Image.Image | np.ndarray, height: int, width: int, resize_mode: str = "default"
    ) -> PIL.Image.Image | np.ndarray:
        """Resize a PIL image with the configured filter (any ``resize_mode``), or an array (B, H, W, C) / (B, H, W)
        with nearest-neighbour interpolation as diffusers does via torch (only "default"), giving float (B, h, w, C)."""
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(
                f"resize_mode={resize_mode!r} is not supported; accepted: {', '.join(map(repr, RESIZE_MODES))}."
            )
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "fill":
                return self._resize_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._resize_and_crop(image, width, height)
            return image.resize((width, height), resample=self._pil_filter(), reducing_gap=self.reducing_gap)
        if not isinstance(image, np.ndarray):
            raise ConfigError(f"image has type {type(image).__name__}; accepted: {_ACCEPTED_IMAGES}.")
        if resize_mode != "default":
            raise ConfigError(f"resize_mode={resize_mode!r} is not supported for arrays; accepted: 'default'.")
        nchw = self._nhwc_to_nchw(image)
        resized = interpolate_nearest(nchw, (height, width))
        return resized.transpose(0, 2, 3, 1).astype(np.float32)

    @staticmethod
    def _nhwc_to_nchw(images: np.ndarray) -> np.ndarray:
        """(B, H, W, C) -> (B, C, H, W); a 3-D array is (B, H, W) and gets one channel."""
        if images.ndim == 3:
            images = images[..., None]
        return images.transpose(0, 3, 1, 2)

    # ------------------------------------------------------------------------------------------- pre/postprocess

    def _is_latents(self, image: Any) -> bool:
        return isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[1] == self.vae_latent_channels

    def _as_image_list(self, image: Any) -> list:
        """The user's ``image`` as a non-empty list of PIL images or of arrays, checked as diffusers checks it."""
        if isinstance(image, tuple):
            image = list(image)
        if isinstance(image, list):
            if not image:
                raise ConfigError(f"image is an empty list; accepted: {_ACCEPTED_IMAGES}.")
            if all(isinstance(i, np.ndarray) and i.ndim == 4 for i in image):
                return [np.concatenate(image, axis=0)]  # diffusers' deprecated list of 4-D arrays
            pil = all(isinstance(i, PIL.Image.Image) for i in image)
            arrays = all(isinstance(i, np.ndarray) and i.ndim in (2, 3) for i in image)
            if not (pil or arrays):
                kinds = sorted({f"{type(i).__name__}{getattr(i, 'shape', '')}" for i in image})
                raise ConfigError(f"image is a list of {', '.join(kinds)}; accepted: {_ACCEPTED_IMAGES}.")
            return image
        if isinstance(image, PIL.Image.Image) or (isinstance(image, np.ndarray) and image.ndim in (2, 3, 4)):
            return [image]
        shape = f" of shape {image.shape}" if isinstance(image, np.ndarray) else ""
        raise ConfigError(f"image is a {type(image).__name__}{shape}; accepted: {_ACCEPTED_IMAGES}.")

    def preprocess(
        self,
        image: PIL.Image.Image | np.ndarray | list,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """User image(s) -> float32 (B, C, H, W), resized to multiples of ``vae_scale_factor`` and scaled to [-1, 1].

        PIL images are cropped to ``crops_coords`` (x1, y1, x2, y2), resized with the PIL filter in ``resize_mode``
        ("default": stretch, "fill": fit and pad with stretched edges, "crop": cover and cut) and converted to RGB or
        grayscale if configured. Arrays, (H, W, C) / (B, H, W, C) floats in [0, 1], ignore ``crops_coords`` and
        ``resize_mode`` as in diffusers and are resized with nearest-neighbour interpolation. A 4-D array whose axis 1
        has ``vae_latent_channels`` (4) entries is taken as latents (B, 4, h, w) and returned unchanged, as diffusers
        does with a 4-channel tensor. Inputs already below 0 are taken as in [-1, 1] and not normalised again.
        """
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(
                f"resize_mode={resize_mode!r} is not supported; accepted: {', '.join(map(repr, RESIZE_MODES))}."
            )
        if self._is_latents(image):
            return image
        if isinstance(image, list) and image and all(self._is_latents(i) for i in image):
            return np.concatenate(image, axis=0)
        if self.do_convert_grayscale and isinstance(image, np.ndarray) and image.ndim == 3:
            # (H, W, 1) is one image, (B, H, W) a batch: either way a 4-D channels-last array results
            image = image[None] if image.shape[-1] == 1 else image[..., None]
        images = self._as_image_list(image)

        if isinstance(images[0], PIL.Image.Image):
            if crops_coords is not None:
                images = [i.crop(crops_coords) for i in images]
            if self.do_resize:
                height, width = self.get_default_height_width(images[0], height, width)
                images = [self.resize(i, height, width, resize_mode=resize_mode) for i in images]
            if self.do_convert_rgb:
                images = [self.convert_to_rgb(i) for i in images]
            elif self.do_convert_grayscale:
                images = [self.convert_to_grayscale(i) for i in images]
            sizes = {(i.width, i.height, len(i.getbands())) for i in images}
            if len(sizes) > 1:
                raise ConfigError(
                    f"image holds PIL images of different sizes or modes {sorted(sizes)} with do_resize=False; "
                    "accepted: images of one size and mode."
                )
            pixels = self._nhwc_to_nchw(self.pil_to_numpy(images))
        else:
            if len({i.shape for i in images}) > 1:
                raise ConfigError(
                    f"image holds arrays of different shapes {sorted({i.shape for i in images})}; "
                    "accepted: arrays of one shape."
                )
            batch = images[0] if images[0].ndim == 4 else np.stack(images, axis=0)
            if not np.issubdtype(batch.dtype, np.floating):
                batch = batch.astype(np.float32)
            pixels = self._nhwc_to_nchw(batch)
            height, width = self.get_default_height_width(batch, height, width)
            if self.do_resize:
                pixels = interpolate_nearest(pixels, (height, width))

        do_normalize = self.do_normalize
        if do_normalize and pixels.min() < 0:
            warnings.warn(
                f"image has values in [{pixels.min()}, {pixels.max()}]; it is taken as already in [-1, 1] and not "
                "normalised (the expected range is [0, 1]).",
                FutureWarning,
                stacklevel=2,
            )
            do_normalize = False
        if do_normalize:
            pixels = self.normalize(pixels)
        if self.do_binarize:
            pixels = self.binarize(pixels)
        return np.ascontiguousarray(pixels, dtype=np.float32)

    def postprocess(
        self, image: np.ndarray, output_type: str = "pil", do_denormalize: list[bool] | None = None
    ) -> list[PIL.Image.Image] | np.ndarray:
        """Decoded images (B, C, H, W) -> PIL images ("pil"), float32 (B, H, W, C) in [0, 1] ("np"), or ``image``
        itself ("latent"). ``do_denormalize`` (one bool per image) overrides ``do_normalize``: [-1, 1] -> [0, 1]."""
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(
                f"output_type={output_type!r} is not supported; accepted: {', '.join(map(repr, OUTPUT_TYPES))}."
            )
        image = _check_nchw("image", image)
        if output_type == "latent":
            return image
        if do_denormalize is None:
            image = self.denormalize(image) if self.do_normalize else image
        else:
            if len(do_denormalize) != image.shape[0]:
                raise ConfigError(
                    f"do_denormalize has {len(do_denormalize)} entries for {image.shape[0]} images; "
                    "accepted: one bool per image."
                )
            image = np.stack([self.denormalize(x) if flag else x for x, flag in zip(image, do_denormalize)])
        nhwc = image.transpose(0, 2, 3, 1).astype(np.float32)
        if output_type == "np":
            return nhwc
        return self.numpy_to_pil(nhwc)

    def apply_overlay(
        self,
        mask: PIL.Image.Image,
        init_image: PIL.Image.Image,
        image: PIL.Image.Image,
        crop_coords: tuple[int, int, int, int] | None = None,
    ) -> PIL.Image.Image:
        """Paste the unmasked part of ``init_image`` over ``image`` (RGB result). With ``crop_coords`` (x1, y1, x2, y2)
        the generated ``image`` is the crop region's content: it is resized ("crop" mode) and placed there first."""
        width, height = init_image.width, init_image.height
        keep = PIL.Image.new("RGBa", (width, height))  # premultiplied alpha, so masked-out pixels become transparent
        keep.paste(init_image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
        keep = keep.convert("RGBA")
        if crop_coords is not None:
            x1, y1, x2, y2 = crop_coords
            canvas = PIL.Image.new("RGBA", (width, height))
            canvas.paste(self.resize(image, height=y2 - y1, width=x2 - x1, resize_mode="crop"), (x1, y1))
            image = canvas.convert("RGB")
        out = image.convert("RGBA")
        out.alpha_composite(keep)
        return out.convert("RGB")
