"""Inpainting with Stable Diffusion XL: ``StableDiffusionXLInpaintPipeline`` for 9-channel and 4-channel UNets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..image_processor import interpolate_nearest
from ..schedulers import randn
from .base import StableDiffusionPipelineOutput
from .inpaint import InpaintingMixin
from .stable_diffusion import Prompt, StepCallback, check_strength, tile_to_batch
from .stable_diffusion_xl import Size, StableDiffusionXLBase


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

    def __init__(self, package, scheduler=None):
        super().__init__(package, scheduler)
        self._guidance_scale = 7.5

    def __call__(
        self,
        prompt: Prompt = None,
        prompt_2: Prompt = None,
        image: Any = None,
        mask_image: Any = None,
        masked_image_latents: np.ndarray | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
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
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput:
        """``strength`` defaults to 0.9999 as in diffusers: the image's latents, noised, are the starting point
        (1.0 starts from pure noise). ``padding_mask_crop=p`` inpaints only the mask's bounding box grown by ``p``
        pixels and pastes the result back (PIL image and mask, PIL output)."""
        height, width = self.check_size(height, width)
        check_strength(strength)
        self._check_images(image, mask_image, padding_mask_crop, output_type)
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
            denoising_start=denoising_start,
            denoising_end=denoising_end,
        )
        scheduler, generator, total = call.scheduler, call.generator, call.batch
        timesteps, steps = self.start_timesteps(scheduler, num_inference_steps, strength)
        pixels, mask, crops_coords = self.preprocess_inpainting(image, mask_image, height, width, padding_mask_crop)
        in_channels = self.unet_config.get("in_channels", 4)
        keep_known = in_channels == 4  # a plain UNet: the known region is re-imposed after every step
        add_noise = self.denoising_start is None
        is_strength_max = strength == 1.0

        # Draw order as in diffusers: image posterior (when needed), initial noise, masked-image posterior.
        f, lc = self.vae_scale_factor, self.latent_channels
        shape = (total, lc, height // f, width // f)
        image_latents = None
        if pixels.shape[1] == lc:
            image_latents = tile_to_batch("image", pixels.astype(np.float32), total)
        elif keep_known or not add_noise or (latents is None and not is_strength_max):
            image_latents = tile_to_batch("image", self.encode_image(pixels, generator), total)
        if latents is None and add_noise:
            noise = randn(shape, generator)
            if is_strength_max:
                latents = noise * scheduler.init_noise_sigma
            else:
                latents = scheduler.add_noise(image_latents, noise, np.full((total,), timesteps[0]))
        elif add_noise:
            noise = self.check_latents(latents, shape, f"{total} images of {height}x{width} pixels")
            latents = noise * scheduler.init_noise_sigma
        else:  # a refiner continuing a base run: the given latents, not noised again
            noise = randn(shape, generator)
            latents = image_latents
        latents = latents.astype(np.float32)

        if masked_image_latents is None and pixels.shape[1] != lc:
            masked = pixels * (mask < 0.5)
            masked_image_latents = self.encode_image(masked, generator)
        elif masked_image_latents is not None and np.shape(masked_image_latents)[1] != lc:
            masked_image_latents = self.encode_image(np.asarray(masked_image_latents, np.float32), generator)
        mask = tile_to_batch("mask_image", interpolate_nearest(mask, (height // f, width // f)), total)
        cfg = self.do_classifier_free_guidance
        mask = np.concatenate([mask] * 2) if cfg else mask
        if masked_image_latents is not None:
            masked_image_latents = tile_to_batch("image", np.asarray(masked_image_latents, np.float32), total)
            masked_image_latents = np.concatenate([masked_image_latents] * 2) if cfg else masked_image_latents
        if in_channels == 9:
            if masked_image_latents is None:
                raise ConfigError(
                    "image was given as latents, which cannot be masked, and masked_image_latents is missing; "
                    "accepted: image as pixels, or masked_image_latents beside latents."
                )
            self.check_inpainting_channels(in_channels, mask, masked_image_latents)

        size = (latents.shape[2] * f, latents.shape[3] * f)
        original_size, target_size = original_size or size, target_size or size
        add_time_ids = self.img2img_time_ids(
            total,
            original_size,
            crops_coords_top_left,
            target_size,
            negative_original_size or original_size,
            negative_crops_coords_top_left,
            negative_target_size or target_size,
            aesthetic_score,
            negative_aesthetic_score,
        )
        timesteps, steps = self.end_timesteps(scheduler, timesteps)

        state = {"mask": mask}
        if masked_image_latents is not None:
            state["masked_image_latents"] = masked_image_latents
        latents = self.denoise_xl(
            call,
            timesteps,
            steps,
            latents,
            add_time_ids,
            conditioning=("mask", "masked_image_latents") if in_channels == 9 else (),
            blend=self.known_region_blend(scheduler, image_latents, noise, timesteps) if keep_known else None,
            state=state,
        )
        return self.paste_crops(self.decode_latents(latents, output_type), image, mask_image, crops_coords)
