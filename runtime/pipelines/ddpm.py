"""Unconditional generation: ``DDPMPipeline`` over a pixel-space ``UNet2DModel``."""

from __future__ import annotations

import copy

import numpy as np

from ..image_processor import VaeImageProcessor
from ..schedulers import as_generator, randn
from .arguments import UnconditionalArguments
from .base import DiffusionPipeline, ImagePipelineOutput
from .stable_diffusion import timestep_feed


class DDPMPipeline(DiffusionPipeline):
    """``DDPMPipeline.from_pretrained(package)(batch_size=4, generator=0).images``."""

    networks = ("unet",)
    arguments = UnconditionalArguments

    def __init__(self, package, scheduler=None, limits=None):
        super().__init__(package, scheduler, limits)
        self.unet_config = package.unet_config

    def generate(self, args: UnconditionalArguments) -> ImagePipelineOutput:
        self.limits.check_batch(args.batch_size, "this package was exported for (its diffrt.json)")
        generator = as_generator(args.generator)
        h, w = self.unet_config.sample_hw or (32, 32)
        image = randn((args.batch_size, self.unet_config.in_channels, h, w), generator)
        scheduler = copy.deepcopy(self.scheduler)  # per-call state: concurrent calls stay independent
        scheduler.set_timesteps(args.num_inference_steps)
        with self.progress_bar(total=len(scheduler.timesteps)) as bar:
            for i, t in enumerate(scheduler.timesteps):
                feeds = {"sample": image, "timestep": timestep_feed(self.unet, t, args.batch_size)}
                with self.timed("unet", step=i):
                    model_output = self.unet.run(feeds, ["out_sample"])["out_sample"]
                with self.timed("scheduler", step=i):
                    image = scheduler.step(model_output, t, image, generator=generator).prev_sample.astype(np.float32)
                bar.update()
        if args.output_type == "latent":
            return ImagePipelineOutput(images=image)
        return ImagePipelineOutput(images=VaeImageProcessor(vae_scale_factor=1).postprocess(image, args.output_type))
