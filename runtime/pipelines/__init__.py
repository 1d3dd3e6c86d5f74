"""Torch-free pipelines over engine packages, with diffusers' class names and call signatures."""

from .auto import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from .base import DiffusionPipeline, ImagePipelineOutput, StableDiffusionPipelineOutput
from .cogvideox import CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXVideoToVideoPipeline
from .ddpm import DDPMPipeline
from .depth2img import StableDiffusionDepth2ImgPipeline
from .flux import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline
from .img2img import StableDiffusionImg2ImgPipeline
from .img2img_xl import StableDiffusionXLImg2ImgPipeline
from .inpaint import StableDiffusionInpaintPipeline
from .inpaint_xl import StableDiffusionXLInpaintPipeline
from .sd3 import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline
from .text2img import StableDiffusionPipeline
from .text2img_xl import StableDiffusionXLPipeline

PIPELINES = {
    cls.__name__: cls
    for cls in (
        StableDiffusionPipeline,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionDepth2ImgPipeline,
        StableDiffusionXLPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        DDPMPipeline,
        CogVideoXPipeline,
        CogVideoXImageToVideoPipeline,
        CogVideoXVideoToVideoPipeline,
        StableDiffusion3Pipeline,
        StableDiffusion3Img2ImgPipeline,
        StableDiffusion3InpaintPipeline,
        FluxPipeline,
        FluxImg2ImgPipeline,
        FluxInpaintPipeline,
    )
}

__all__ = [
    "PIPELINES",
    "AutoPipelineForImage2Image",
    "AutoPipelineForInpainting",
    "AutoPipelineForText2Image",
    "CogVideoXImageToVideoPipeline",
    "CogVideoXPipeline",
    "CogVideoXVideoToVideoPipeline",
    "DDPMPipeline",
    "DiffusionPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "FluxPipeline",
    "ImagePipelineOutput",
    "StableDiffusion3Img2ImgPipeline",
    "StableDiffusion3InpaintPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusionDepth2ImgPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
]
