"""Text-to-image with Stable Diffusion XL: ``StableDiffusionXLPipeline``, diffusers' call signature and semantics."""

from __future__ import annotations

from .arguments import XLText2ImageArguments
from .base import StableDiffusionPipelineOutput
from .stable_diffusion_xl import StableDiffusionXLBase


class StableDiffusionXLPipeline(StableDiffusionXLBase):
    """Generate images from text with an SDXL package: ``pipe("an astronaut riding a horse", generator=0)``.

    ``denoising_end=0.8, output_type="latent"`` stops early and returns latents for a refiner
    (``StableDiffusionXLImg2ImgPipeline(..., image=latents, denoising_start=0.8)``).
    """

    arguments = XLText2ImageArguments

    def generate(self, args: XLText2ImageArguments) -> StableDiffusionPipelineOutput:
        """``original_size`` / ``target_size`` (height, width) default to the output size and, with
        ``crops_coords_top_left``, condition the UNet (SDXL micro-conditioning)."""
        size = self.check_size(args.height, args.width)
        call = self.start(args)
        scheduler = call.scheduler
        self.set_schedule(scheduler, args)
        shape = self.latent_shape(call, *size, channels=self.unet_config.in_channels)
        latents = self.initial_latents(call, shape, args.latents, size)
        tensors = self.denoising_tensors(call, latents, add_time_ids=self.text2img_time_ids(call, size))
        timesteps, steps = self.end_timesteps(call, scheduler.timesteps)
        scheduler.set_begin_index(0)
        latents = self.denoise(call, timesteps, steps, tensors)
        return self.decode_latents(latents, args.output_type)
