"""Image-to-image: ``StableDiffusionImg2ImgPipeline`` (SDEdit: noise the image to ``strength``, then denoise)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schedulers import randn
from .arguments import Image2ImageArguments
from .base import StableDiffusionPipelineOutput
from .call import Call
from .stable_diffusion import StableDiffusionBase, tile_to_batch


class StableDiffusionImg2ImgPipeline(StableDiffusionBase):
    """Redraw ``image`` guided by a prompt; ``strength`` (0 to 1) sets how much of it is re-imagined."""

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")

    arguments = Image2ImageArguments

    def generate(self, args: Image2ImageArguments) -> StableDiffusionPipelineOutput:
        """Images are sized down to multiples of the VAE scale factor."""
        call = self.start(args)
        conditioning = self.conditioning(call, args)
        pixels = self.image_processor.preprocess(args.image)
        timesteps, steps = self.strength_timesteps(call.scheduler, args)
        latents = self.noised_image_latents(call, pixels, timesteps[0])
        latents = self.denoise(call, timesteps, steps, self.denoising_tensors(call, latents, **conditioning))
        return self.decode_latents(latents, args.output_type)

    def conditioning(self, call: Call, args: Image2ImageArguments) -> dict[str, np.ndarray]:
        """Tensors the UNet sees besides the latents, by their callback names; none for plain image-to-image."""
        return {}

    def noised_image_latents(self, call: Call, pixels: np.ndarray, timestep: Any) -> np.ndarray:
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
