"""Image-to-image with Stable Diffusion XL: ``StableDiffusionXLImg2ImgPipeline``, base or refiner packages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..schedulers import randn
from .base import StableDiffusionPipelineOutput
from .stable_diffusion import Prompt, StepCallback, check_strength, tile_to_batch
from .stable_diffusion_xl import Size, StableDiffusionXLBase, XLPromptCall


class StableDiffusionXLImg2ImgPipeline(StableDiffusionXLBase):
    """Redraw ``image`` guided by a prompt; ``strength`` (0 to 1) sets how much of it is re-imagined.

    As a refiner: ``image`` is the latents a base pipeline returned with ``denoising_end=d`` and
    ``output_type="latent"``, and ``denoising_start=d`` continues the schedule from there without new noise.
    """

    networks = ("text_encoder_2", "unet", "vae_encoder", "vae_decoder")

    def __call__(
        self,
        prompt: Prompt = None,
        prompt_2: Prompt = None,
        image: Any = None,
        strength: float = 0.3,
        num_inference_steps: int = 50,
        denoising_start: float | None = None,
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
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionPipelineOutput:
        """``image``: PIL image(s), (H, W, C) / (B, H, W, C) arrays in [0, 1], or (B, 4, h, w) latents.
        ``latents`` replace the noised image latents entirely (as in diffusers). Sizes default to the image's;
        ``aesthetic_score`` / ``negative_aesthetic_score`` condition refiner packages (requires_aesthetics_score)."""
        if image is None:
            raise ConfigError("image is missing; accepted: a PIL image, a float array in [0, 1], or a list of them.")
        check_strength(strength)
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
        pixels = self.image_processor.preprocess(image)
        timesteps, steps = self.start_timesteps(call.scheduler, num_inference_steps, strength)
        if latents is None:
            latents = self.image_latents(call, pixels, timesteps[0], add_noise=self.denoising_start is None)
        else:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.ndim != 4 or latents.shape[:2] != (call.batch, self.latent_channels):
                raise ConfigError(
                    f"latents has shape {latents.shape}; accepted: ({call.batch}, {self.latent_channels}, h, w) "
                    "noised image latents, one per image made."
                )
        f = self.vae_scale_factor
        size = (latents.shape[2] * f, latents.shape[3] * f)
        original_size, target_size = original_size or size, target_size or size
        add_time_ids = self.img2img_time_ids(
            call.batch,
            original_size,
            crops_coords_top_left,
            target_size,
            negative_original_size or original_size,
            negative_crops_coords_top_left,
            negative_target_size or target_size,
            aesthetic_score,
            negative_aesthetic_score,
        )
        timesteps, steps = self.end_timesteps(call.scheduler, timesteps)
        latents = self.denoise_xl(call, timesteps, steps, latents, add_time_ids)
        return self.decode_latents(latents, output_type)

    def image_latents(self, call: XLPromptCall, pixels: np.ndarray, timestep: Any, add_noise: bool) -> np.ndarray:
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
