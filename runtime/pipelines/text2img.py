"""Text-to-image: ``StableDiffusionPipeline``, with diffusers' call signature and semantics."""

from __future__ import annotations

from .arguments import Text2ImageArguments
from .base import StableDiffusionPipelineOutput
from .stable_diffusion import StableDiffusionBase


class StableDiffusionPipeline(StableDiffusionBase):
    """Generate images from text prompts: ``pipe("an astronaut riding a horse", generator=0).images[0]``."""

    arguments = Text2ImageArguments

    def generate(self, args: Text2ImageArguments) -> StableDiffusionPipelineOutput:
        """``height``/``width`` must be multiples of the VAE scale factor; ``generator`` is a NumPy Generator or
        seed."""
        size = self.check_size(args.height, args.width)
        call = self.start(args)
        steps = self.set_schedule(call.scheduler, args)
        # The UNet's input width, as diffusers sizes text-to-image latents (the VAE's latent channels here).
        shape = self.latent_shape(call, *size, channels=self.unet_config.in_channels)
        latents = self.initial_latents(call, shape, args.latents, size)
        latents = self.denoise(call, call.scheduler.timesteps, steps, self.denoising_tensors(call, latents))
        return self.decode_latents(latents, args.output_type)
