"""Text-to-image with Stable Diffusion XL: ``StableDiffusionXLPipeline``, diffusers' call signature and semantics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..schedulers import randn
from .base import StableDiffusionPipelineOutput, check_int
from .stable_diffusion import Prompt, StepCallback
from .stable_diffusion_xl import Size, StableDiffusionXLBase


class StableDiffusionXLPipeline(StableDiffusionXLBase):
    """Generate images from text with an SDXL package: ``pipe("an astronaut riding a horse", generator=0)``.

    ``denoising_end=0.8, output_type="latent"`` stops early and returns latents for a refiner
    (``StableDiffusionXLImg2ImgPipeline(..., image=latents, denoising_start=0.8)``).
    """

    def __call__(
        self,
        prompt: Prompt = None,
        prompt_2: Prompt = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: Prompt = None,
        negative_prompt_2: Prompt = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: np.random.Generator | int | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        pooled_prompt_embeds: np.ndarray | None = None,
        negative_pooled_prompt_embeds: np.ndarray | None = None,
        output_type: str = "pil",
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput:
        """``original_size`` / ``target_size`` (height, width) default to the output size and, with
        ``crops_coords_top_left``, condition the UNet (SDXL micro-conditioning); the ``negative_`` ones condition
        the unguided half, and apply when both negative sizes are given."""
        height, width = self.check_size(height, width)
        call = self.start_xl_call(
            prompt,
            prompt_2,
            negative_prompt,
            negative_prompt_2,
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
            num_images_per_prompt,
            guidance_scale,
            guidance_rescale,
            clip_skip,
            output_type,
            generator,
            eta,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            denoising_end=denoising_end,
        )
        scheduler = call.scheduler
        scheduler.set_timesteps(check_int("num_inference_steps", num_inference_steps))
        f = self.vae_scale_factor
        shape = (call.batch, self.unet_config.get("in_channels", 4), height // f, width // f)
        if latents is None:
            latents = randn(shape, call.generator)
        else:
            latents = self.check_latents(latents, shape, f"{shape[0]} images of {height}x{width} pixels")
        latents = (latents * scheduler.init_noise_sigma).astype(np.float32)
        add_time_ids = self.text2img_time_ids(
            call.batch,
            original_size or (height, width),
            crops_coords_top_left,
            target_size or (height, width),
            negative_original_size,
            negative_crops_coords_top_left,
            negative_target_size,
        )
        timesteps, steps = self.end_timesteps(scheduler, scheduler.timesteps)
        scheduler.set_begin_index(0)
        latents = self.denoise_xl(call, timesteps, steps, latents, add_time_ids)
        return self.decode_latents(latents, output_type)
