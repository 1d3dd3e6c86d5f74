"""Inpainting: ``StableDiffusionInpaintPipeline`` for 9-channel inpainting UNets and plain 4-channel ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

from ..errors import ConfigError
from ..image_processor import VaeImageProcessor, interpolate_nearest
from ..schedulers import randn
from .arguments import InpaintArguments
from .base import StableDiffusionPipelineOutput
from .call import Call, DenoisingTensors
from .stable_diffusion import KnownRegion, StableDiffusionBase, tile_to_batch


class InpaintingMixin:
    """What the Stable Diffusion and SDXL inpainting pipelines share: image and mask checks and preprocessing (with
    ``padding_mask_crop``), the UNet channel check, re-imposing the known region for 4-channel UNets, and pasting a
    cropped result back. Mixed in before the pipeline base class."""

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler, limits)
        self.mask_processor = VaeImageProcessor.for_masks(self.vae_scale_factor)

    @property
    def keeps_known_region(self) -> bool:
        """A plain 4-channel UNet cannot see the mask: the known region is re-imposed after every step."""
        return self.unet_config.in_channels == 4

    def check_images(self, args: InpaintArguments) -> None:
        image, mask_image = args.image, args.mask_image
        if image is None or mask_image is None:
            missing = "image" if image is None else "mask_image"
            raise ConfigError(f"{missing} is missing; accepted: a PIL image, a float array in [0, 1], or a list.")
        image_size, mask_size = _pixel_size(image), _pixel_size(mask_image, mask=True)
        if image_size and mask_size and image_size != mask_size:
            raise ConfigError(
                f"mask_image is {mask_size[1]}x{mask_size[0]} pixels but image is {image_size[1]}x{image_size[0]}; "
                "accepted: a mask of the same size as the image (width x height)."
            )
        if args.padding_mask_crop is not None:
            if not isinstance(image, PIL.Image.Image) or not isinstance(mask_image, PIL.Image.Image):
                raise ConfigError(
                    "padding_mask_crop needs image and mask_image as PIL images; accepted: PIL.Image.Image for both."
                )
            if args.output_type != "pil":
                raise ConfigError(f"padding_mask_crop needs output_type='pil'; got output_type={args.output_type!r}.")

    def preprocess_inpainting(
        self, args: InpaintArguments, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
        """(pixels, mask, crops_coords) at ``size`` (height, width); with ``padding_mask_crop`` both are the mask's
        bounding box grown by that many pixels, resized to fill (crops_coords is then that box)."""
        height, width = size
        if args.padding_mask_crop is not None:
            crops_coords = self.mask_processor.get_crop_region(
                args.mask_image, width, height, pad=args.padding_mask_crop
            )
            resize_mode = "fill"
        else:
            crops_coords, resize_mode = None, "default"
        pixels = self.image_processor.preprocess(
            args.image, height=height, width=width, crops_coords=crops_coords, resize_mode=resize_mode
        )
        mask = self.mask_processor.preprocess(
            args.mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=crops_coords
        )
        return pixels, mask, crops_coords

    def mask_conditioning(
        self, call: Call, mask: np.ndarray, masked_image_latents: np.ndarray | None, size: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        """The mask at latent resolution and the masked image's latents, tiled to the call's batch and doubled for
        guidance, by their callback names; a 9-channel UNet's channel count checked."""
        f = self.vae_scale_factor
        mask = tile_to_batch("mask_image", interpolate_nearest(mask, (size[0] // f, size[1] // f)), call.batch)
        conditioning = {"mask": call.doubled(mask)}
        if masked_image_latents is not None:
            masked = tile_to_batch("image", np.asarray(masked_image_latents, np.float32), call.batch)
            conditioning["masked_image_latents"] = call.doubled(masked)
        if self.unet_config.in_channels == 9:
            if masked_image_latents is None:
                raise ConfigError(
                    "image was given as latents, which cannot be masked, and masked_image_latents is missing; "
                    "accepted: image as pixels, or masked_image_latents beside latents."
                )
            self.check_inpainting_channels(conditioning["mask"], conditioning["masked_image_latents"])
        return conditioning

    def check_inpainting_channels(self, mask: np.ndarray, masked_image_latents: np.ndarray) -> None:
        lc, in_channels = self.latent_channels, self.unet_config.in_channels
        total = lc + mask.shape[1] + masked_image_latents.shape[1]
        if total != in_channels:
            raise ConfigError(
                f"the inpainting UNet takes {in_channels} channels but latents ({lc}), mask ({mask.shape[1]}) and "
                f"masked_image_latents ({masked_image_latents.shape[1]}) make {total}; accepted: a 1-channel mask "
                f"and {lc}-channel masked_image_latents."
            )

    def unet_channels(self, tensors: DenoisingTensors) -> list[np.ndarray]:
        if self.unet_config.in_channels == 9:
            return [tensors.mask, tensors.masked_image_latents]
        return []

    def paste_crops(self, output, args: InpaintArguments, crops_coords) -> Any:
        """With ``padding_mask_crop``, each generated crop pasted back into the full image under the mask."""
        if crops_coords is not None:
            output.images = [
                self.image_processor.apply_overlay(args.mask_image, args.image, generated, crops_coords)
                for generated in output.images
            ]
        return output


class StableDiffusionInpaintPipeline(InpaintingMixin, StableDiffusionBase):
    """Repaint the white part of ``mask_image`` in ``image`` as the prompt asks; black is kept.

    A 9-channel inpainting UNet sees the mask and the masked image's latents at every step; a 4-channel UNet
    (any text-to-image package) denoises freely and the known region is re-imposed after each step.
    """

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    unet_in_channels = (4, 9)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents")
    arguments = InpaintArguments

    def generate(self, args: InpaintArguments) -> StableDiffusionPipelineOutput:
        size = self.check_size(args.height, args.width)
        self.check_images(args)
        call = self.start(args)
        timesteps, steps = self.strength_timesteps(call.scheduler, args)
        pixels, mask, crops_coords = self.preprocess_inpainting(args, size)

        # Draw order as in diffusers: image posterior (when needed), initial noise, masked-image posterior.
        shape = self.latent_shape(call, *size)
        image_latents = None
        if self.keeps_known_region or (args.latents is None and args.strength < 1.0):
            image_latents = (
                pixels if pixels.shape[1] == self.latent_channels else self.encode_image(pixels, call.generator)
            )
            image_latents = tile_to_batch("image", image_latents, call.batch)
        latents, noise = self.starting_latents(call, shape, size, image_latents, timesteps)
        masked_image_latents = args.masked_image_latents
        if masked_image_latents is None:
            masked = pixels * (mask < 0.5)
            masked_image_latents = (
                masked if masked.shape[1] == self.latent_channels else self.encode_image(masked, call.generator)
            )
        conditioning = self.mask_conditioning(call, mask, masked_image_latents, size)
        tensors = self.denoising_tensors(call, latents, **conditioning)
        known = KnownRegion(image_latents, noise, timesteps) if self.keeps_known_region else None
        latents = self.denoise(call, timesteps, steps, tensors, known)
        return self.paste_crops(self.decode_latents(latents, args.output_type), args, crops_coords)

    def starting_latents(
        self, call: Call, shape: tuple[int, ...], size: tuple[int, int], image_latents: np.ndarray | None, timesteps
    ) -> tuple[np.ndarray, np.ndarray]:
        """(latents, noise): pure noise at strength 1, else the image's latents noised to the first timestep;
        given ``latents`` are the noise."""
        scheduler, latents = call.scheduler, call.args.latents
        if latents is None:
            noise = randn(shape, call.generator)
            if call.args.strength == 1.0:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, np.full((call.batch,), timesteps[0]))
        else:
            noise = self.check_latents(latents, shape, f"{call.batch} images of {size[0]}x{size[1]} pixels")
            latents = noise * scheduler.init_noise_sigma
        return latents.astype(np.float32), noise


def _pixel_size(image: Any, mask: bool = False) -> tuple[int, int] | None:
    """(height, width) of the first image (or mask) in ``image``, read with the layouts the image processor
    accepts; None for latents and for types the processor will refuse anyway."""
    first = image[0] if isinstance(image, (list, tuple)) and image else image
    if isinstance(first, PIL.Image.Image):
        return first.height, first.width
    if not isinstance(first, np.ndarray) or first.ndim not in (2, 3, 4):
        return None
    if first.ndim == 2:
        return first.shape[0], first.shape[1]
    if first.ndim == 3:
        # masks come as (H, W, 1) or (B, H, W); images as (H, W, C)
        return first.shape[1:3] if mask and first.shape[-1] != 1 else first.shape[:2]
    if not mask and first.shape[1] == 4 and first.shape[-1] != 3:  # (B, 4, h, w) latents
        return None
    return first.shape[1], first.shape[2]
