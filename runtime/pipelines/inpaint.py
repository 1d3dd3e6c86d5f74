"""Inpainting: ``StableDiffusionInpaintPipeline`` for 9-channel inpainting UNets and plain 4-channel ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from ..errors import ConfigError
from ..image_processor import VaeImageProcessor, interpolate_nearest
from ..schedulers import randn
from .base import StableDiffusionPipelineOutput
from .stable_diffusion import Prompt, StableDiffusionBase, StepCallback, check_strength, tile_to_batch


class InpaintingMixin:
    """What the Stable Diffusion and SDXL inpainting pipelines share: image and mask checks and preprocessing (with
    ``padding_mask_crop``), the UNet channel check, re-imposing the known region for 4-channel UNets, and pasting a
    cropped result back. Mixed in before the pipeline base class."""

    def __init__(self, package, scheduler=None):
        super().__init__(package, scheduler)
        self.mask_processor = VaeImageProcessor.for_masks(self.vae_scale_factor)

    def preprocess_inpainting(
        self, image: Any, mask_image: Any, height: int, width: int, padding_mask_crop: int | None
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
        """(pixels, mask, crops_coords) at ``height`` x ``width``; with ``padding_mask_crop`` both are the mask's
        bounding box grown by that many pixels, resized to fill (crops_coords is then that box)."""
        if padding_mask_crop is not None:
            crops_coords = self.mask_processor.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        else:
            crops_coords, resize_mode = None, "default"
        pixels = self.image_processor.preprocess(
            image, height=height, width=width, crops_coords=crops_coords, resize_mode=resize_mode
        )
        mask = self.mask_processor.preprocess(
            mask_image, height=height, width=width, resize_mode=resize_mode, crops_coords=crops_coords
        )
        return pixels, mask, crops_coords

    def check_inpainting_channels(self, in_channels: int, mask: np.ndarray, masked_image_latents: np.ndarray) -> None:
        lc = self.latent_channels
        total = lc + mask.shape[1] + masked_image_latents.shape[1]
        if total != in_channels:
            raise ConfigError(
                f"the inpainting UNet takes {in_channels} channels but latents ({lc}), mask ({mask.shape[1]}) and "
                f"masked_image_latents ({masked_image_latents.shape[1]}) make {total}; accepted: a 1-channel mask "
                f"and {lc}-channel masked_image_latents."
            )

    @staticmethod
    def known_region_blend(scheduler, image_latents: np.ndarray, noise: np.ndarray, timesteps: np.ndarray):
        """The ``blend`` of a 4-channel UNet's loop: after step ``i`` the unmasked region is the image's latents
        noised to the next timestep (unnoised after the last step)."""

        def keep_known_region(i: int, latents: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
            known = image_latents
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(image_latents, noise, np.asarray([timesteps[i + 1]]))
            init_mask = state["mask"][: latents.shape[0]]
            return ((1 - init_mask) * known + init_mask * latents).astype(np.float32)

        return keep_known_region

    def paste_crops(self, output, image: Any, mask_image: Any, crops_coords) -> Any:
        """With ``padding_mask_crop``, each generated crop pasted back into the full image under the mask."""
        if crops_coords is not None:
            output.images = [
                self.image_processor.apply_overlay(mask_image, image, generated, crops_coords)
                for generated in output.images
            ]
        return output

    def _check_images(self, image: Any, mask_image: Any, padding_mask_crop: int | None, output_type: str) -> None:
        if image is None or mask_image is None:
            missing = "image" if image is None else "mask_image"
            raise ConfigError(f"{missing} is missing; accepted: a PIL image, a float array in [0, 1], or a list.")
        image_size, mask_size = _pixel_size(image), _pixel_size(mask_image, mask=True)
        if image_size and mask_size and image_size != mask_size:
            raise ConfigError(
                f"mask_image is {mask_size[1]}x{mask_size[0]} pixels but image is {image_size[1]}x{image_size[0]}; "
                "accepted: a mask of the same size as the image (width x height)."
            )
        if padding_mask_crop is not None:
            if not isinstance(image, PIL.Image.Image) or not isinstance(mask_image, PIL.Image.Image):
                raise ConfigError(
                    "padding_mask_crop needs image and mask_image as PIL images; accepted: PIL.Image.Image for both."
                )
            if output_type != "pil":
                raise ConfigError(f"padding_mask_crop needs output_type='pil'; got output_type={output_type!r}.")


class StableDiffusionInpaintPipeline(InpaintingMixin, StableDiffusionBase):
    """Repaint the white part of ``mask_image`` in ``image`` as the prompt asks; black is kept.

    A 9-channel inpainting UNet sees the mask and the masked image's latents at every step; a 4-channel UNet
    (any text-to-image package) denoises freely and the known region is re-imposed after each step.
    """

    networks = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
    unet_in_channels = (4, 9)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents")

    def __call__(
        self,
        prompt: Prompt = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: np.ndarray | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 1.0,
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
        """``padding_mask_crop=p`` inpaints only the mask's bounding box grown by ``p`` pixels, at full
        resolution, and pastes the result back (PIL image and mask, PIL output)."""
        height, width = self.check_size(height, width)
        check_strength(strength)
        self._check_images(image, mask_image, padding_mask_crop, output_type)
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
        scheduler, generator, total = call.scheduler, call.generator, call.batch
        timesteps, steps = self.strength_timesteps(scheduler, num_inference_steps, strength)
        pixels, mask, crops_coords = self.preprocess_inpainting(image, mask_image, height, width, padding_mask_crop)
        in_channels = self.unet_config.get("in_channels", 4)
        keep_known = in_channels == 4  # a plain UNet: the known region is re-imposed after every step

        # Draw order as in diffusers: image posterior (when needed), initial noise, masked-image posterior.
        f, lc = self.vae_scale_factor, self.latent_channels
        shape = (total, lc, height // f, width // f)
        image_latents = None
        if keep_known or (latents is None and strength < 1.0):
            image_latents = pixels if pixels.shape[1] == lc else self.encode_image(pixels, generator)
            image_latents = tile_to_batch("image", image_latents, total)
        if latents is None:
            noise = randn(shape, generator)
            if strength == 1.0:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, np.full((total,), timesteps[0]))
        else:
            noise = self.check_latents(latents, shape, f"{total} images of {height}x{width} pixels")
            latents = noise * scheduler.init_noise_sigma
        latents = latents.astype(np.float32)

        if masked_image_latents is None:
            masked = pixels * (mask < 0.5)
            masked_image_latents = masked if masked.shape[1] == lc else self.encode_image(masked, generator)
        mask = tile_to_batch("mask_image", interpolate_nearest(mask, (height // f, width // f)), total)
        masked_image_latents = tile_to_batch("image", np.asarray(masked_image_latents, np.float32), total)
        if self.do_classifier_free_guidance:
            mask = np.concatenate([mask] * 2)
            masked_image_latents = np.concatenate([masked_image_latents] * 2)
        if in_channels == 9:
            self.check_inpainting_channels(in_channels, mask, masked_image_latents)
        latents = self.denoise(
            call,
            timesteps,
            steps,
            latents,
            conditioning=("mask", "masked_image_latents") if in_channels == 9 else (),
            blend=self.known_region_blend(scheduler, image_latents, noise, timesteps) if keep_known else None,
            state={"mask": mask, "masked_image_latents": masked_image_latents},
        )
        return self.paste_crops(self.decode_latents(latents, output_type), image, mask_image, crops_coords)


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
