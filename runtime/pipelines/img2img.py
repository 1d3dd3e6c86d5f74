"""Image-to-image: ``StableDiffusionImg2ImgPipeline`` (SDEdit: noise the image to ``strength``, then denoise)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..schedulers import as_generator, randn
from .base import StableDiffusionPipelineOutput
from .stable_diffusion import Prompt, StableDiffusionBase, StepCallback, tile_to_batch


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
        batch = self.check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if image is None:
            raise ConfigError("image is missing; accepted: a PIL image, a float array in [0, 1], or a list of them.")
        scheduler = self.prepare_call(
            guidance_scale,
            guidance_rescale,
            clip_skip,
            output_type,
            num_images_per_prompt,
            callback_on_step_end_tensor_inputs,
        )
        generator = as_generator(generator)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            clip_skip,
        )
        pixels = self.image_processor.preprocess(image)
        timesteps, steps = self.strength_timesteps(scheduler, num_inference_steps, strength)
        latents = self.noised_image_latents(scheduler, pixels, timesteps[0], batch * num_images_per_prompt, generator)
        latents = self.denoise(
            scheduler,
            timesteps,
            steps,
            latents,
            prompt_embeds,
            negative_prompt_embeds,
            generator,
            eta,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        return self.decode_latents(latents, output_type)

    def noised_image_latents(
        self, scheduler, pixels: np.ndarray, timestep: Any, batch: int, generator: np.random.Generator
    ) -> np.ndarray:
        """Latents of the image(s), tiled to ``batch`` and noised to ``timestep`` (posterior draw, then noise)."""
        if pixels.shape[1] == self.latent_channels:
            latents = pixels.astype(np.float32)
        else:
            latents = self.encode_image(pixels, generator)
        latents = tile_to_batch("image", latents, batch)
        noise = randn(latents.shape, generator)
        timesteps = np.full((batch,), timestep, dtype=np.asarray(timestep).dtype)
        return scheduler.add_noise(latents, noise, timesteps).astype(np.float32)
