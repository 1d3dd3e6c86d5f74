"""Image-to-image and inpainting for the SD3 / Flux pipelines: how a call starts from an image, and what each step
re-imposes, in diffusers' draw order (image posterior, then noise, then the masked image's posterior).

The latents here are (B, C, h, w); Flux's classes pack them into tokens after (:meth:`pack`), which for SD3 does
nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

from ..errors import ConfigError
from ..image_processor import interpolate_nearest
from ..schedulers.base import randn
from .mmdit import MaskArguments, MMDiTCall


class ImageTask:
    """Image-to-image: noise the image's latents to the first step's sigma (``strength`` of the schedule)."""

    networks = ("text_encoder", "text_encoder_2", "transformer", "vae_encoder", "vae_decoder")

    def pack(self, call: MMDiTCall, latents: np.ndarray) -> np.ndarray:
        return latents

    def prepare(self, call: MMDiTCall) -> np.ndarray:
        args = call.args
        image = self.image_processor.preprocess(args.image, height=call.height, width=call.width)
        self.set_schedule(call, args.sigmas, self.schedule_mu(call, always=self.packed))
        self.strength_schedule(call, args.strength)
        shape = self.latent_shape(call)
        if args.latents is not None:
            return self.given_latents(call, args.latents, self.pack(call, np.zeros(shape, np.float32)).shape)
        image_latents = self.image_latents(call, image)
        noise = randn(shape, call.generator)
        first = np.repeat(call.timesteps[:1], call.batch)
        return self.pack(call, call.scheduler.scale_noise(image_latents, first, noise).astype(np.float32))


class InpaintTask(ImageTask):
    """Inpainting with a plain (16-channel) transformer: the region outside the mask is re-imposed after every step,
    noised to the next step's sigma (diffusers' SD3 / Flux inpainting pipelines)."""

    def check_crop(self, args: MaskArguments) -> None:
        if args.padding_mask_crop is None:
            return
        if not (isinstance(args.image, PIL.Image.Image) and isinstance(args.mask_image, PIL.Image.Image)):
            raise ConfigError("padding_mask_crop needs image and mask_image as PIL images; accepted: PIL.Image.Image.")
        if args.output_type != "pil":
            raise ConfigError(f"padding_mask_crop needs output_type='pil'; got output_type={args.output_type!r}.")

    def prepare(self, call: MMDiTCall) -> np.ndarray:
        args = call.args
        self.check_crop(args)
        crops, mode = None, "default"
        if args.padding_mask_crop is not None:
            crops = self.mask_processor.get_crop_region(
                args.mask_image, call.width, call.height, args.padding_mask_crop
            )
            mode = "fill"
        call.known["crops"] = crops
        image = self.image_processor.preprocess(
            args.image, height=call.height, width=call.width, crops_coords=crops, resize_mode=mode
        )
        self.set_schedule(call, args.sigmas, self.schedule_mu(call, always=self.packed))
        self.strength_schedule(call, args.strength)
        shape = self.latent_shape(call)
        image_latents = self.image_latents(call, image)
        if args.latents is None:
            noise = randn(shape, call.generator)
            full = args.strength == 1.0 and not self.packed  # Flux noises the image even at strength 1
            first = np.repeat(call.timesteps[:1], call.batch)
            latents = noise if full else call.scheduler.scale_noise(image_latents, first, noise).astype(np.float32)
        else:
            latents = noise = self.given_latents(call, args.latents, shape)
        mask = self.mask_processor.preprocess(
            args.mask_image, height=call.height, width=call.width, resize_mode=mode, crops_coords=crops
        )
        self.masked_image_latents(call, image, mask)
        f = self.vae_scale_factor
        small = interpolate_nearest(mask, (call.height // f, call.width // f)).astype(np.float32)
        if call.batch % small.shape[0]:
            raise ConfigError(f"mask_image has {small.shape[0]} masks for {call.batch} images; accepted: a divisor.")
        small = np.concatenate([small] * (call.batch // small.shape[0]))
        channels = shape[1] if self.packed else 1
        call.known.update(
            image_latents=self.pack(call, image_latents),
            noise=self.pack(call, noise),
            mask=self.pack(call, np.repeat(small, channels, axis=1)) if self.packed else small,
        )
        return self.pack(call, latents)

    def masked_image_latents(self, call: MMDiTCall, image: np.ndarray, mask: np.ndarray) -> None:
        """diffusers encodes the masked image (one more posterior draw) even where a 16-channel transformer does not
        use it; the draw is made here too, so later draws match."""
        if call.args.masked_image_latents is not None:
            return
        masked = (image * (mask < 0.5)).astype(np.float32)
        if masked.shape[1] != self.vae_config.latent_channels:
            self.encode_image(masked, call.generator)

    def after_step(self, call: MMDiTCall, latents: np.ndarray, i: int) -> np.ndarray:
        known = call.known
        proper = known["image_latents"]
        if i < len(call.timesteps) - 1:
            proper = call.scheduler.scale_noise(proper, call.timesteps[i + 1 : i + 2], known["noise"])
        mask = known["mask"]
        return ((1 - mask) * proper + mask * latents).astype(np.float32)

    def overlay(self, call: MMDiTCall, images: Any) -> Any:
        crops = call.known.get("crops")
        if crops is None:
            return images
        args = call.args
        return [self.image_processor.apply_overlay(args.mask_image, args.image, im, crops) for im in images]
