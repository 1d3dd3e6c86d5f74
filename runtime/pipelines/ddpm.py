"""Unconditional generation: ``DDPMPipeline`` over a pixel-space ``UNet2DModel``."""

from __future__ import annotations

import copy

import numpy as np

from ..image_processor import VaeImageProcessor
from ..schedulers import as_generator, randn
from .base import DiffusionPipeline, ImagePipelineOutput, check_int, check_output_type
from .stable_diffusion import timestep_feed


class DDPMPipeline(DiffusionPipeline):
    """``DDPMPipeline.from_pretrained(package)(batch_size=4, generator=0).images``."""

    networks = ("unet",)

    def __init__(self, package, scheduler=None):
        super().__init__(package, scheduler)
        self.unet_config = package.config("unet")

    def __call__(
        self,
        batch_size: int = 1,
        generator: np.random.Generator | int | None = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
    ) -> ImagePipelineOutput:
        check_int("batch_size", batch_size)
        check_output_type(output_type)
        generator = as_generator(generator)
        size = self.unet_config.get("sample_size", 32)
        h, w = (size, size) if isinstance(size, int) else size
        image = randn((batch_size, self.unet_config.get("in_channels", 3), h, w), generator)
        scheduler = copy.deepcopy(self.scheduler)  # per-call state: concurrent calls stay independent
        scheduler.set_timesteps(check_int("num_inference_steps", num_inference_steps))
        with self.progress_bar(total=len(scheduler.timesteps)) as bar:
            for i, t in enumerate(scheduler.timesteps):
                feeds = {"sample": image, "timestep": timestep_feed(self.unet, t, batch_size)}
                with self.timed("unet", step=i):
                    model_output = self.unet.run(feeds, ["out_sample"])["out_sample"]
                with self.timed("scheduler", step=i):
                    image = scheduler.step(model_output, t, image, generator=generator).prev_sample.astype(np.float32)
                bar.update()
        if output_type == "latent":
            return ImagePipelineOutput(images=image)
        return ImagePipelineOutput(images=VaeImageProcessor(vae_scale_factor=1).postprocess(image, output_type))
