"""AutoPipeline: pick the pipeline for a task from the package's ``model_index.json``, as diffusers does.

diffusers maps a pipeline class to its model family ("stable-diffusion"), then the family to the class that
serves the asked task. We do the same, and go one step further for depth packages: a depth-to-image package is a
text-guided image-to-image model, so ``AutoPipelineForImage2Image`` opens it as
``StableDiffusionDepth2ImgPipeline`` (diffusers refuses it). Text-to-image and inpainting need a UNet without the
depth channel, so those two refuse a depth package with the reason. The SDXL classes form their own family (their
UNet takes pooled text embeddings and size conditioning): any SDXL package, base, refiner or inpainting, opens as
the task's SDXL class. ``DDPMPipeline`` belongs to no task here.
"""

from __future__ import annotations

import os

from ..engines import SessionSettings
from ..errors import ConfigError
from ..package import EnginePackage
from ..schedulers import Scheduler
from .base import DiffusionPipeline
from .depth2img import StableDiffusionDepth2ImgPipeline
from .flux import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline
from .img2img import StableDiffusionImg2ImgPipeline
from .img2img_xl import StableDiffusionXLImg2ImgPipeline
from .inpaint import StableDiffusionInpaintPipeline
from .inpaint_xl import StableDiffusionXLInpaintPipeline
from .inputs import Limits
from .sd3 import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline
from .text2img import StableDiffusionPipeline
from .text2img_xl import StableDiffusionXLPipeline

FAMILIES = {
    "StableDiffusionPipeline": "stable-diffusion",
    "StableDiffusionImg2ImgPipeline": "stable-diffusion",
    "StableDiffusionInpaintPipeline": "stable-diffusion",
    "StableDiffusionDepth2ImgPipeline": "stable-diffusion-depth",
    "StableDiffusionXLPipeline": "stable-diffusion-xl",
    "StableDiffusionXLImg2ImgPipeline": "stable-diffusion-xl",
    "StableDiffusionXLInpaintPipeline": "stable-diffusion-xl",
    "StableDiffusion3Pipeline": "stable-diffusion-3",
    "StableDiffusion3Img2ImgPipeline": "stable-diffusion-3",
    "StableDiffusion3InpaintPipeline": "stable-diffusion-3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxInpaintPipeline": "flux",
}
TEXT2IMAGE = {
    "stable-diffusion": StableDiffusionPipeline,
    "stable-diffusion-xl": StableDiffusionXLPipeline,
    "stable-diffusion-3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
}
IMAGE2IMAGE = {
    "stable-diffusion": StableDiffusionImg2ImgPipeline,
    "stable-diffusion-depth": StableDiffusionDepth2ImgPipeline,
    "stable-diffusion-xl": StableDiffusionXLImg2ImgPipeline,
    "stable-diffusion-3": StableDiffusion3Img2ImgPipeline,
    "flux": FluxImg2ImgPipeline,
}
INPAINTING = {
    "stable-diffusion": StableDiffusionInpaintPipeline,
    "stable-diffusion-xl": StableDiffusionXLInpaintPipeline,
    "stable-diffusion-3": StableDiffusion3InpaintPipeline,
    "flux": FluxInpaintPipeline,
}


class _AutoPipeline:
    task: str
    mapping: dict[str, type[DiffusionPipeline]]

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is built with from_pretrained(path) or from_pipe(pipe).")

    @classmethod
    def pipeline_class(cls, class_name: str) -> type[DiffusionPipeline]:
        """The class serving this task for a package exported from ``class_name``."""
        family = FAMILIES.get(class_name)
        if family is None or family not in cls.mapping:
            served = sorted(k for k, v in FAMILIES.items() if v in cls.mapping)
            video = (class_name or "").startswith("CogVideoX")  # diffusers has no auto-pipeline for video either
            raise ConfigError(
                f"{cls.__name__} has no {cls.task} pipeline for a package of {class_name or 'unknown class'}; "
                f"accepted: packages exported from {', '.join(served)}"
                + (f" (a {class_name} package runs with diffrt's {class_name}, as in diffusers)." if video else ".")
            )
        return cls.mapping[family]

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        provider: str = "auto",
        session_settings: SessionSettings | None = None,
        scheduler: Scheduler | None = None,
        limits: Limits | None = None,
    ) -> DiffusionPipeline:
        package = EnginePackage(path, provider=provider, session_settings=session_settings)
        return cls.pipeline_class(package.pipeline_class)(package, scheduler=scheduler, limits=limits)

    @classmethod
    def from_pipe(cls, pipe: DiffusionPipeline, scheduler: Scheduler | None = None) -> DiffusionPipeline:
        """The task's pipeline over ``pipe``'s package and scheduler; engines already created are reused."""
        target = cls.pipeline_class(type(pipe).__name__)
        if type(pipe) is target and scheduler is None:
            return pipe
        return target.from_pipe(pipe, scheduler=scheduler)


class AutoPipelineForText2Image(_AutoPipeline):
    task, mapping = "text-to-image", TEXT2IMAGE


class AutoPipelineForImage2Image(_AutoPipeline):
    task, mapping = "image-to-image", IMAGE2IMAGE


class AutoPipelineForInpainting(_AutoPipeline):
    task, mapping = "inpainting", INPAINTING
