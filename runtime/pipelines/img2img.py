"""Image-to-image: ``StableDiffusionImg2ImgPipeline`` (SDEdit: noise the image to ``strength``, then denoise)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..schedulers import randn
from .base import StableDiffusionPipelineOutput
from .stable_diffusion import Prompt, PromptCall, StableDiffusionBase, StepCallback, tile_to_batch


class StableDiffusionImg2ImgPipeline(StableDiffusionBase):
    """Redraw ``image`` guided by a prompt; ``strength`` (0 to 1) sets how much of it is re-imagined."""

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")

    def __call__(
        self,
        prompt: Prompt = None,
        image: Any = None,
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
        """``image``: PIL image(s) or (H, W, C) / (B, H, W, C) arrays in [0, 1] (sized down to multiples of the
        VAE scale factor), or (B, C, h, w) latents."""
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
        pixels = self.image_processor.preprocess(image)
        timesteps, steps = self.strength_timesteps(call.scheduler, num_inference_steps, strength)
        latents = self.noised_image_latents(call, pixels, timesteps[0])
        latents = self.denoise(call, timesteps, steps, latents)
        return self.decode_latents(latents, output_type)

    def noised_image_latents(self, call: PromptCall, pixels: np.ndarray, timestep: Any) -> np.ndarray:
        """Latents of the image(s), tiled to the call's batch and noised to ``timestep`` (posterior draw, then
        noise), as diffusers' img2img ``prepare_latents``."""
        if pixels.shape[1] == self.latent_channels:
            latents = pixels.astype(np.float32)
        else:
            latents = self.encode_image(pixels, call.generator)
        latents = tile_to_batch("image", latents, call.batch)
        noise = randn(latents.shape, call.generator)
        timesteps = np.full((call.batch,), timestep, dtype=np.asarray(timestep).dtype)
        return call.scheduler.add_noise(latents, noise, timesteps).astype(np.float32)
