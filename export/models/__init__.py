"""diffrt's own PyTorch definitions of the diffusion networks, written for export and for reading.

Each class is built from an unchanged diffusers ``config.json`` (``Model(**config)`` or ``Model.from_config(config)``)
and has diffusers' parameter names, so a diffusers state dict loads with ``strict=True``. Forward passes return
tensors, avoid data-dependent control flow and trace to ONNX with dynamic batch, height and width.
This package never imports diffusers.
"""

from __future__ import annotations

from torch import nn

from .autoencoder_cogvideox import AutoencoderKLCogVideoX
from .autoencoder_kl import AutoencoderKL
from .autoencoder_tiny import AutoencoderTiny
from .cogvideox_transformer import CogVideoXTransformer3DModel
from .config import NotSupportedError
from .flux_transformer import FluxTransformer2DModel
from .sd3_transformer import SD3Transformer2DModel
from .unet_2d import UNet2DModel
from .unet_2d_condition import UNet2DConditionModel

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "UNet2DConditionModel": UNet2DConditionModel,
    "UNet2DModel": UNet2DModel,
    "AutoencoderKL": AutoencoderKL,
    "AutoencoderKLCogVideoX": AutoencoderKLCogVideoX,
    "AutoencoderTiny": AutoencoderTiny,
    "CogVideoXTransformer3DModel": CogVideoXTransformer3DModel,
    "SD3Transformer2DModel": SD3Transformer2DModel,
    "FluxTransformer2DModel": FluxTransformer2DModel,
}


def model_class_for(class_name: str) -> type[nn.Module]:
    """The class for a diffusers ``_class_name``; a name diffrt has no model for raises ``ValueError``."""
    try:
        return MODEL_CLASSES[class_name]
    except (KeyError, TypeError):
        from diffrt.runtime.errors import ConfigError

        raise ConfigError(
            f"_class_name={class_name!r} has no diffrt model; accepted names: {', '.join(map(repr, MODEL_CLASSES))}."
        ) from None


__all__ = [
    "AutoencoderKL",
    "AutoencoderKLCogVideoX",
    "AutoencoderTiny",
    "CogVideoXTransformer3DModel",
    "FluxTransformer2DModel",
    "MODEL_CLASSES",
    "NotSupportedError",
    "SD3Transformer2DModel",
    "UNet2DConditionModel",
    "UNet2DModel",
    "model_class_for",
]
