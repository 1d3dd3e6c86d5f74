"""Depth-to-image: ``StableDiffusionDepth2ImgPipeline`` keeps the image's depth layout while redrawing it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from ..dpt_processor import DPTImageProcessor
from ..errors import ConfigError
from ..image_processor import interpolate_bicubic
from .base import StableDiffusionPipelineOutput
from .img2img import StableDiffusionImg2ImgPipeline
from .stable_diffusion import Prompt, StepCallback, tile_to_batch


class StableDiffusionDepth2ImgPipeline(StableDiffusionImg2ImgPipeline):
    """Image-to-image whose 5-channel UNet also sees a depth map: given as ``depth_map`` or estimated by the
    package's DPT ``depth_estimator``."""

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    optional_networks = ("depth_estimator",)
    unet_in_channels = (5,)

    def __init__(self, package, scheduler=None):
        super().__init__(package, scheduler)
        folder = package.path / "depth_estimator"
        self.feature_extractor = DPTImageProcessor.from_pretrained(folder) if self.depth_estimator else None

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1  # diffusers' depth pipeline ignores time_cond_proj_dim

    def __call__(
        self,
        prompt: Prompt = None,
        image: Any = None,
        depth_map: np.ndarray | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: np.random.Generator | int | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput:
        """``depth_map``: (B, H, W) relative depth, any resolution; omitted, the package's DPT estimates it."""
        if image is None:
            raise ConfigError("image is missing; accepted: a PIL image, a float array in [0, 1], or a list of them.")
        call = self.start_call(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_images_per_prompt,
            guidance_scale,
            guidance_rescale,
            clip_skip,
            output_type,
            generator,
            eta,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        depth = self.prepare_depth_map(image, depth_map, call.batch)
        pixels = self.image_processor.preprocess(image)
        timesteps, steps = self.strength_timesteps(call.scheduler, num_inference_steps, strength)
        latents = self.noised_image_latents(call, pixels, timesteps[0])
        latents = self.denoise(
            call, timesteps, steps, latents, conditioning=("depth_mask",), state={"depth_mask": depth}
        )
        return self.decode_latents(latents, output_type)

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
        return np.concatenate([depth] * 2) if self.do_classifier_free_guidance else depth
