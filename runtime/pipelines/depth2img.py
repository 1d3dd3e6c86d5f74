"""Depth-to-image: ``StableDiffusionDepth2ImgPipeline`` keeps the image's depth layout while redrawing it."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

from ..dpt_processor import DPTImageProcessor
from ..errors import ConfigError
from ..image_processor import interpolate_bicubic
from .arguments import Depth2ImageArguments
from .call import Call, DenoisingTensors
from .img2img import StableDiffusionImg2ImgPipeline
from .stable_diffusion import tile_to_batch


class StableDiffusionDepth2ImgPipeline(StableDiffusionImg2ImgPipeline):
    """Image-to-image whose 5-channel UNet also sees a depth map: given as ``depth_map`` or estimated by the
    package's DPT ``depth_estimator``."""

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    optional_networks = ("depth_estimator",)
    unet_in_channels = (5,)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "depth_mask")
    arguments = Depth2ImageArguments

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler, limits)
        folder = package.path / "depth_estimator"
        self.feature_extractor = DPTImageProcessor.from_pretrained(folder) if self.depth_estimator else None

    @property
    def guidance_embedding(self) -> bool:
        return False  # diffusers' depth pipeline ignores time_cond_proj_dim: it always runs guidance above 1

    def conditioning(self, call: Call, args: Depth2ImageArguments) -> dict[str, np.ndarray]:
        return {"depth_mask": call.doubled(self.prepare_depth_map(args.image, args.depth_map, call.batch))}

    def unet_channels(self, tensors: DenoisingTensors) -> list[np.ndarray]:
        return [tensors.depth_mask]

    def prepare_depth_map(self, image: Any, depth_map: np.ndarray | None, batch: int) -> np.ndarray:
        """The UNet's depth channel: depth at latent resolution (bicubic), scaled to [-1, 1] per image."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        first = images[0]
        if isinstance(first, PIL.Image.Image):
            height, width = first.height, first.width
        else:
            first = np.asarray(first)
            height, width = first.shape[-3:-1] if first.ndim >= 3 else first.shape[-2:]
        if depth_map is None:
            if self.depth_estimator is None:
                raise ConfigError(
                    "depth_map is missing and this package has no depth_estimator to estimate it; accepted: a "
                    "(B, H, W) depth_map array, or a package exported with its depth estimator."
                )
            if isinstance(image, np.ndarray) and image.ndim == 4:
                images = list(image)
            pixel_values = self.feature_extractor(images)
            with self.timed("depth_estimator"):
                depth_map = self.depth_estimator.run({"pixel_values": pixel_values}, ["predicted_depth"])
            depth_map = depth_map["predicted_depth"]
        depth_map = np.asarray(depth_map, dtype=np.float32)
        if depth_map.ndim != 3:
            raise ConfigError(f"depth_map has shape {depth_map.shape}; accepted: a (B, H, W) array.")
        f = self.vae_scale_factor
        depth = interpolate_bicubic(depth_map[:, None], (height // f, width // f))
        lo = depth.min(axis=(1, 2, 3), keepdims=True)
        hi = depth.max(axis=(1, 2, 3), keepdims=True)
        depth = (2.0 * (depth - lo) / (hi - lo) - 1.0).astype(np.float32)
        if depth.shape[0] < batch:
            depth = tile_to_batch("depth_map", depth, batch)
        return depth
