"""The torch-free runtime: engine packages, engines, schedulers, tokenizer and pipelines. Never imports torch.

Pipelines and engines are imported on first use (``from diffrt.runtime import StableDiffusionPipeline``), so
importing the package stays light for tools that only need schedulers or the tokenizer.
"""

import importlib

from .errors import BackendUnavailable, ConfigError, DiffrtError, PackageError
from .schedulers import SCHEDULERS, SchedulerOutput, scheduler_from_config
from .tokenizer import CLIPTokenizer, TokenizedPrompts

_LAZY = {
    "AutoPipelineForImage2Image": ".pipelines",
    "AutoPipelineForInpainting": ".pipelines",
    "AutoPipelineForText2Image": ".pipelines",
    "DDPMPipeline": ".pipelines",
    "DiffusionPipeline": ".pipelines",
    "StableDiffusionDepth2ImgPipeline": ".pipelines",
    "StableDiffusionImg2ImgPipeline": ".pipelines",
    "StableDiffusionInpaintPipeline": ".pipelines",
    "StableDiffusionPipeline": ".pipelines",
    "StableDiffusionXLImg2ImgPipeline": ".pipelines",
    "StableDiffusionXLInpaintPipeline": ".pipelines",
    "StableDiffusionXLPipeline": ".pipelines",
    "CogVideoXPipeline": ".pipelines",
    "CogVideoXImageToVideoPipeline": ".pipelines",
    "CogVideoXVideoToVideoPipeline": ".pipelines",
    "StableDiffusion3Pipeline": ".pipelines",
    "StableDiffusion3Img2ImgPipeline": ".pipelines",
    "StableDiffusion3InpaintPipeline": ".pipelines",
    "FluxPipeline": ".pipelines",
    "FluxImg2ImgPipeline": ".pipelines",
    "FluxInpaintPipeline": ".pipelines",
    "export_to_video": ".video_io",
    "load_video": ".video_io",
    "EnginePackage": ".package",
    "Engine": ".engines",
    "SessionSettings": ".engines",
    "load_engine": ".engines",
    "StageTimings": ".timing",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BackendUnavailable",
    "CLIPTokenizer",
    "ConfigError",
    "DiffrtError",
    "PackageError",
    "SCHEDULERS",
    "SchedulerOutput",
    "TokenizedPrompts",
    "scheduler_from_config",
    *_LAZY,
]
