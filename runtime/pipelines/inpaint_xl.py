"""Inpainting with Stable Diffusion XL: ``StableDiffusionXLInpaintPipeline`` for 9-channel and 4-channel UNets."""

from __future__ import annotations

import numpy as np

from ..schedulers import randn
from .arguments import XLInpaintArguments
from .base import StableDiffusionPipelineOutput
from .call import Call
from .inpaint import InpaintingMixin
from .stable_diffusion import KnownRegion, tile_to_batch
from .stable_diffusion_xl import StableDiffusionXLBase


class StableDiffusionXLInpaintPipeline(InpaintingMixin, StableDiffusionXLBase):
    """Repaint the white part of ``mask_image`` in ``image`` as the prompt asks; black is kept.

    A 9-channel inpainting UNet sees the mask and the masked image's latents at every step; a 4-channel UNet
    (an SDXL base or refiner package) denoises freely and the known region is re-imposed after each step.
    """

    networks = ("text_encoder_2", "unet", "vae_encoder", "vae_decoder")
    unet_in_channels = (4, 9)
    _callback_tensor_inputs = (
        "latents",
        "prompt_embeds",
        "add_text_embeds",
        "add_time_ids",
        "mask",
        "masked_image_latents",
    )
    default_guidance_scale = 7.5
    arguments = XLInpaintArguments

    def generate(self, args: XLInpaintArguments) -> StableDiffusionPipelineOutput:
        size = self.check_size(args.height, args.width)
        self.check_images(args)
        call = self.start(args)
        timesteps, steps = self.start_timesteps(call)
        pixels, mask, crops_coords = self.preprocess_inpainting(args, size)

        # Draw order as in diffusers: image posterior (when needed), initial noise, masked-image posterior.
        image_latents = self.inpainting_image_latents(call, pixels)
        latents, noise = self.starting_latents(call, size, image_latents, timesteps)
        conditioning = self.mask_conditioning(call, mask, self.masked_image_latents(call, pixels, mask), size)
        f = self.vae_scale_factor
        add_time_ids = self.img2img_time_ids(call, (latents.shape[2] * f, latents.shape[3] * f))
        tensors = self.denoising_tensors(call, latents, add_time_ids=add_time_ids, **conditioning)
        timesteps, steps = self.end_timesteps(call, timesteps)
        known = KnownRegion(image_latents, noise, timesteps) if self.keeps_known_region else None
        latents = self.denoise(call, timesteps, steps, tensors, known)
        return self.paste_crops(self.decode_latents(latents, args.output_type), args, crops_coords)

    def inpainting_image_latents(self, call: Call, pixels: np.ndarray) -> np.ndarray | None:
        """The image's latents, where the call needs them: given as latents, to re-impose the known region, to
        continue a base run (``denoising_start``), or to be noised (strength below 1)."""
        args = call.args
        if pixels.shape[1] == self.latent_channels:
            return tile_to_batch("image", pixels.astype(np.float32), call.batch)
        if self.keeps_known_region or args.denoising_start is not None or (args.latents is None and args.strength < 1):
            return tile_to_batch("image", self.encode_image(pixels, call.generator), call.batch)
        return None

    def starting_latents(
        self, call: Call, size: tuple[int, int], image_latents: np.ndarray | None, timesteps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(latents, noise): pure noise at strength 1, else the image's latents noised to the first timestep; given
        ``latents`` are the noise; a refiner continuing a base run (``denoising_start``) starts from the image's
        latents as they are (its noise is drawn all the same, as diffusers draws it)."""
        args, scheduler = call.args, call.scheduler
        shape = self.latent_shape(call, *size)
        if args.denoising_start is not None:
            return image_latents.astype(np.float32), randn(shape, call.generator)
        if args.latents is not None:
            noise = self.check_latents(args.latents, shape, f"{call.batch} images of {size[0]}x{size[1]} pixels")
            return (noise * scheduler.init_noise_sigma).astype(np.float32), noise
        noise = randn(shape, call.generator)
        if args.strength == 1.0:
            return (noise * scheduler.init_noise_sigma).astype(np.float32), noise
        return scheduler.add_noise(image_latents, noise, np.full((call.batch,), timesteps[0])).astype(np.float32), noise

    def masked_image_latents(self, call: Call, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        """Latents of the image with the mask's region blanked (given ones pass through, encoded if they are
        pixels); None when the image itself came as latents, which cannot be masked."""
        given = call.args.masked_image_latents
        if given is None and pixels.shape[1] != self.latent_channels:
            return self.encode_image(pixels * (mask < 0.5), call.generator)
        if given is not None and np.shape(given)[1] != self.latent_channels:
            return self.encode_image(np.asarray(given, np.float32), call.generator)
        return given
