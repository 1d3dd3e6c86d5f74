"""The engine package format: its file names, and its configs parsed once into typed objects.

Export writes what this module names; the runtime reads it back through :class:`PackageConfigs`. A component's
``config.json`` becomes a small frozen object with typed attributes for what diffrt reads (``unet.in_channels``,
``vae.latent_channels``, ``vae.scale_factor``...) that is also a read-only mapping of the whole file, as diffusers'
``FrozenDict`` configs are (``config["sample_size"]``, ``config.get("act_fn")``). Defaults are diffusers' class
defaults, applied in one place.

NumPy-free and torch-free: export imports this module (with :mod:`~diffrt.runtime.errors` and
:mod:`~diffrt.runtime.networks`) and nothing else of the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, PackageError
from .networks import is_tiny_vae, vae_scale_factor

INDEX_NAME = "model_index.json"
PROVENANCE_NAME = "diffrt.json"
CONFIG_NAME = "config.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
SCHEDULER_CONFIG = ("scheduler", "scheduler_config.json")
ENGINES_DIR = "engines"
NETWORKS = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "unet",
    "transformer",
    "vae_encoder",
    "vae_decoder",
    "vae_decoder_preview",
    "depth_estimator",
)
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
LEARNED_POSITIONS = "pos_embedding.npy"  # a CogVideoX I2V transformer's learned position table, beside its graph
OPTIMUM_PREFIX = "ORT"  # Optimum names its pipelines ORTStableDiffusionPipeline, ...


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; PackageError naming the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{str(path)!r} is not readable JSON ({exc}); re-export the package.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} holds {type(data).__name__}; accepted: a JSON object.")
    return data


def default_size(unet: Mapping[str, Any], scale_factor: int) -> tuple[int, int]:
    """(height, width) in pixels a model was trained at: its UNet's ``sample_size`` (64 latent cells when unset,
    diffusers' Stable Diffusion default) times the VAE scale factor. Export sizes its shape profiles from it, and
    pipelines their default image."""
    size = unet.get("sample_size") or 64
    h, w = (size, size) if isinstance(size, int) else size
    return int(h) * scale_factor, int(w) * scale_factor


@dataclass(frozen=True, eq=False)
class ComponentConfig(Mapping[str, Any]):
    """A component's config: typed attributes (declared by subclasses) over the whole file as a read-only mapping.
    An absent file gives an empty config, which is falsy."""

    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ComponentConfig:
        raw = dict(raw or {})
        names = [f.name for f in fields(cls) if f.name != "raw"]
        values = {name: _value(raw, name, cls.defaults.get(name)) for name in names}
        return cls(raw=raw, **values)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "raw")
        return f"{type(self).__name__}({shown})"


def _value(raw: Mapping[str, Any], name: str, default: Any) -> Any:
    value = raw.get(name)
    return default if value is None else value


@dataclass(frozen=True, eq=False, repr=False)
class UNetConfig(ComponentConfig):
    """A UNet's config: ``UNet2DConditionModel`` (latent, text-conditioned) or ``UNet2DModel`` (pixels, DDPM)."""

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int | tuple[int, int] | None = None
    cross_attention_dim: int | None = None
    time_cond_proj_dim: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    defaults = {"in_channels": 4, "out_channels": 4}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> UNetConfig:
        config = super().from_dict(raw)
        if config.raw.get("_class_name") == "UNet2DModel":  # pixel space: RGB in and out by default
            pixel = {name: _value(config.raw, name, 3) for name in ("in_channels", "out_channels")}
            config = cls(**{**_fields(config), **pixel})
        return config

    @property
    def sample_hw(self) -> tuple[int, int] | None:
        """``sample_size`` as (height, width) in the UNet's own units (latent cells, or pixels for DDPM)."""
        size = self.sample_size
        if size is None:
            return None
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def is_sdxl(self) -> bool:
        """SDXL's added conditioning: pooled text embeddings and size / crop "time ids"."""
        return self.addition_embed_type == "text_time"

    @property
    def takes_guidance_embedding(self) -> bool:
        """Guidance-distilled UNets (LCM) take the guidance scale as an input instead of running guidance."""
        return bool(self.time_cond_proj_dim)


@dataclass(frozen=True, eq=False, repr=False)
class VaeConfig(ComponentConfig):
    """A VAE's config (the package splits it into vae_encoder/ and vae_decoder/, same file): an ``AutoencoderKL``,
    or an ``AutoencoderTiny`` (:attr:`is_tiny`, whose ``scaling_factor`` defaults to 1)."""

    latent_channels: int = 4
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = False

    defaults = {"latent_channels": 4, "scaling_factor": 0.18215, "force_upcast": False}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> VaeConfig:
        config = super().from_dict(raw)
        if is_tiny_vae(config.raw) and config.raw.get("scaling_factor") is None:
            config = cls(**{**_fields(config), "scaling_factor": 1.0})
        return config

    @property
    def is_tiny(self) -> bool:
        """diffusers' ``AutoencoderTiny`` (TAESD): its encoder gives latents, with no posterior to draw from."""
        return is_tiny_vae(self.raw)

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell, from the VAE's blocks (never assumed to be 8); 8 without a config."""
        return vae_scale_factor(self.raw) if self.raw else 8


@dataclass(frozen=True, eq=False, repr=False)
class TextEncoderConfig(ComponentConfig):
    """A CLIP text encoder's config (transformers' ``CLIPTextConfig``)."""

    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    projection_dim: int | None = None
    max_position_embeddings: int = 77

    defaults = {"max_position_embeddings": 77}


@dataclass(frozen=True, eq=False, repr=False)
class PipelineIndex(ComponentConfig):
    """``model_index.json``: the diffusers pipeline class the package was exported from, and pipeline settings."""

    pipeline_class: str = ""
    """The diffusers class name (``_class_name``), with Optimum's ``ORT`` prefix dropped."""
    force_zeros_for_empty_prompt: bool = True
    requires_aesthetics_score: bool = False

    defaults = {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PipelineIndex:
        name = str((raw or {}).get("_class_name") or "")
        name = name[len(OPTIMUM_PREFIX) :] if name.startswith(OPTIMUM_PREFIX) else name
        return cls(**{**_fields(super().from_dict(raw)), "pipeline_class": name})

    @property
    def is_sdxl(self) -> bool:
        return self.pipeline_class.startswith("StableDiffusionXL")


@dataclass(frozen=True)
class PackageConfigs:
    """Every config of a package folder, read once."""

    index: PipelineIndex
    unet: UNetConfig
    vae: VaeConfig
    text_encoder: TextEncoderConfig
    text_encoder_2: TextEncoderConfig
    preview_vae: VaeConfig
    """The config of the tiny VAE whose decoder draws progress previews (``vae_decoder_preview/``); empty if none."""

    @classmethod
    def read(cls, folder: Path) -> PackageConfigs:
        def config(component: str) -> dict[str, Any]:
            path = folder / component / CONFIG_NAME
            return read_json(path) if path.is_file() else {}

        return cls(
            index=PipelineIndex.from_dict(read_json(folder / INDEX_NAME)),
            unet=UNetConfig.from_dict(config("unet")),
            vae=VaeConfig.from_dict(config("vae_decoder") or config("vae_encoder")),
            text_encoder=TextEncoderConfig.from_dict(config("text_encoder")),
            text_encoder_2=TextEncoderConfig.from_dict(config("text_encoder_2")),
            preview_vae=VaeConfig.from_dict(config("vae_decoder_preview")),
        )


def _fields(config: ComponentConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in fields(config)}
