"""Image-to-image with Stable Diffusion XL: ``StableDiffusionXLImg2ImgPipeline``, base or refiner packages."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..schedulers import randn
from .arguments import XLImage2ImageArguments
from .base import StableDiffusionPipelineOutput
from .call import Call
from .stable_diffusion import tile_to_batch
from .stable_diffusion_xl import StableDiffusionXLBase


class StableDiffusionXLImg2ImgPipeline(StableDiffusionXLBase):
    """Redraw ``image`` guided by a prompt; ``strength`` (0 to 1) sets how much of it is re-imagined.

    As a refiner: ``image`` is the latents a base pipeline returned with ``denoising_end=d`` and
    ``output_type="latent"``, and ``denoising_start=d`` continues the schedule from there without new noise.
    """

    networks = ("text_encoder_2", "unet", "vae_encoder", "vae_decoder")
    arguments = XLImage2ImageArguments

    def generate(self, args: XLImage2ImageArguments) -> StableDiffusionPipelineOutput:
        """Sizes default to the image's; ``aesthetic_score`` / ``negative_aesthetic_score`` condition refiner
        packages (requires_aesthetics_score)."""
        call = self.start(args)
        pixels = self.image_processor.preprocess(args.image)
        timesteps, steps = self.start_timesteps(call)
        if args.latents is None:
            latents = self.image_latents(call, pixels, timesteps[0], add_noise=args.denoising_start is None)
        else:
            latents = np.asarray(args.latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[:2] != (call.batch, self.latent_channels):
                raise ConfigError(
                    f"latents has shape {latents.shape}; accepted: ({call.batch}, {self.latent_channels}, h, w) "
                    "noised image latents, one per image made."
                )
        f = self.vae_scale_factor
        add_time_ids = self.img2img_time_ids(call, (latents.shape[2] * f, latents.shape[3] * f))
        timesteps, steps = self.end_timesteps(call, timesteps)
        latents = self.denoise(call, timesteps, steps, self.denoising_tensors(call, latents, add_time_ids=add_time_ids))
        return self.decode_latents(latents, args.output_type)

    def image_latents(self, call: Call, pixels: np.ndarray, timestep: Any, add_noise: bool) -> np.ndarray:
        """Latents of the image(s) (given latents pass through), tiled to the call's batch, then noised to
        ``timestep`` unless a refiner continues a base run (``denoising_start``), as diffusers' prepare_latents."""
        if pixels.shape[1] == self.latent_channels:
            latents = pixels.astype(np.float32)
        else:
            latents = self.normalized_image_latents(pixels, call.generator)
        latents = tile_to_batch("image", latents, call.batch)
        if not add_noise:
            return latents
        noise = randn(latents.shape, call.generator)
        timesteps = np.full((call.batch,), timestep, dtype=np.asarray(timestep).dtype)
        return call.scheduler.add_noise(latents, noise, timesteps).astype(np.float32)
