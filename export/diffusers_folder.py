"""Writing a diffusers pipeline folder from diffrt's own model classes, laid out as ``save_pretrained`` writes it.

The demo sources (:mod:`.tiny`, :mod:`.train_demo`) are written with it, so diffusers itself is not needed to make
them: each model's ``config.json`` with every constructor default spelled out and its weights as safetensors, the
scheduler config, and the ``model_index.json`` of a text-to-image pipeline.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from ..runtime.schema import CONFIG_NAME, INDEX_NAME, SCHEDULER_CONFIG

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def full_config(model_class: type, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every other constructor default written out, as diffusers' save_pretrained writes it."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(model_class.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return {"_class_name": config["_class_name"], **defaults, **config}


def save_model(model, config: dict[str, Any], folder: Path, half: bool = False) -> None:
    """``folder/config.json`` and ``folder/diffusion_pytorch_model.safetensors`` (float16 with ``half``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(full_config(type(model), config), indent=2) + "\n")
    tensors = {k: (v.detach().half() if half else v).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, folder / WEIGHTS_NAME)


def write_text_to_image_index(folder: Path, scheduler: dict[str, Any]) -> None:
    """The scheduler config and ``model_index.json`` of a StableDiffusionPipeline without a safety checker."""
    scheduler_path = folder.joinpath(*SCHEDULER_CONFIG)
    scheduler_path.parent.mkdir(parents=True, exist_ok=True)
    scheduler_path.write_text(json.dumps(scheduler, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
