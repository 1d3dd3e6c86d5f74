"""Text-to-image: ``StableDiffusionPipeline``, with diffusers' call signature and semantics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..schedulers import randn
from .base import StableDiffusionPipelineOutput, check_int
from .stable_diffusion import Prompt, StableDiffusionBase, StepCallback


class StableDiffusionPipeline(StableDiffusionBase):
    """Generate images from text prompts: ``pipe("an astronaut riding a horse", generator=0).images[0]``."""

    def __call__(
        self,
        prompt: Prompt = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: np.random.Generator | int | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput:
        """``height``/``width`` default to the UNet's training size and must be multiples of the VAE scale
        factor; ``latents`` (B, C, H/f, W/f) replace the initial noise; ``generator`` is a NumPy Generator or seed."""
        height, width = self.check_size(height, width)
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
        scheduler = call.scheduler
        scheduler.set_timesteps(check_int("num_inference_steps", num_inference_steps))
        f = self.vae_scale_factor
        shape = (call.batch, self.latent_channels, height // f, width // f)
        if latents is None:
            latents = randn(shape, call.generator)
        else:
            latents = self.check_latents(latents, shape, f"{shape[0]} images of {height}x{width} pixels")
        latents = (latents * scheduler.init_noise_sigma).astype(np.float32)
        latents = self.denoise(call, scheduler.timesteps, num_inference_steps, latents)
        return self.decode_latents(latents, output_type)
