"""An engine package on disk: its index, component configs, tokenizer, scheduler and engines.

One :class:`EnginePackage` is shared by every pipeline made from it (``from_pipe`` hands it on), so each engine is
created once, on first use, and reused. Packages written by ``diffrt export`` and by Optimum's ONNX exporter have
the same layout (:mod:`diffrt.runtime.schema`; the README's "The engine package") and both load here. Configs are read
once, when the package is opened, into typed objects (:class:`~diffrt.runtime.schema.PackageConfigs`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

from .adapters import LORA_NETWORKS, AdapterRegistry
from .engines import Engine, SessionSettings, load_engine
from .errors import PackageError
from .networks import ShapeRange, unet_shallow_name
from .schedulers import Scheduler, scheduler_from_config
from .schema import (
    CONFIG_NAME,
    INDEX_NAME,
    MODEL_FILE,
    NETWORKS,
    PROVENANCE_NAME,
    SCHEDULER_CONFIG,
    TOKENIZER_FOLDERS,
    PackageConfigs,
    PipelineIndex,
    TextEncoderConfig,
    UNetConfig,
    VaeConfig,
    read_json,
)
from .tokenizer import CLIPTokenizer

FP32_NETWORKS = ("depth_estimator",)  # computed in fp32 under precision="auto" (see settings_for)
VAE_NETWORKS = ("vae_encoder", "vae_decoder")  # fp32 under precision="auto" when force_upcast applies
T5_CLASS = "T5EncoderModel"  # overflows fp16 (its feed-forward activations pass 65504)


class EnginePackage:
    """A package folder opened for running: engines are created lazily, once, with one provider and settings."""

    def __init__(
        self, path: str | os.PathLike, provider: str = "auto", session_settings: SessionSettings | None = None
    ):
        self.path = Path(path)
        if not (self.path / INDEX_NAME).is_file():
            what = "does not exist" if not self.path.exists() else f"has no {INDEX_NAME}"
            raise PackageError(
                f"engine package {str(self.path)!r} {what}; accepted: a folder written by `diffrt export` "
                "(or by Optimum's ONNX exporter) holding model_index.json and one folder per network."
            )
        self.configs = PackageConfigs.read(self.path)
        provenance = self.path / PROVENANCE_NAME
        self.provenance: dict[str, Any] = read_json(provenance) if provenance.is_file() else {}
        self.provider = provider
        self.session_settings = session_settings or SessionSettings()
        self._engines: dict[str, Engine] = {}
        self._tokenizers: dict[str, CLIPTokenizer] = {}
        self._lock = threading.Lock()

    # ----- what the package holds -------------------------------------------------------------------------------
    @property
    def index(self) -> PipelineIndex:
        """``model_index.json``."""
        return self.configs.index

    @property
    def pipeline_class(self) -> str:
        """The diffusers pipeline class the package was exported from (Optimum's ``ORT`` prefix dropped)."""
        return self.configs.index.pipeline_class

    @property
    def unet_config(self) -> UNetConfig:
        return self.configs.unet

    @property
    def vae_config(self) -> VaeConfig:
        """The VAE's config (vae_decoder's, else vae_encoder's: the same file)."""
        return self.configs.vae

    def text_encoder_config(self, name: str = "text_encoder") -> TextEncoderConfig:
        return self.configs.text_encoder_2 if name == "text_encoder_2" else self.configs.text_encoder

    @property
    def shape_range(self) -> ShapeRange | None:
        """The batch and image sizes the package was exported for (``diffrt.json``); None when it does not say
        (packages exported elsewhere)."""
        data = self.provenance.get("shape_range")
        if data is None:
            return None
        try:
            return ShapeRange.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise PackageError(
                f"{str(self.path / PROVENANCE_NAME)!r} has an unreadable shape_range ({error}); re-export the package."
            ) from None

    @property
    def deepcache_branches(self) -> tuple[int, ...]:
        """The DeepCache branches this package has a shallow UNet for (``diffrt export --deepcache``, recorded in
        ``diffrt.json``); empty when it has none."""
        recorded = (self.provenance.get("export") or {}).get("deepcache") or {}
        branches = recorded.get("branches") if isinstance(recorded, dict) else None
        if not isinstance(branches, list) or not all(isinstance(b, int) for b in branches):
            return ()
        return tuple(b for b in branches if self.has(unet_shallow_name(b)))

    @property
    def quantized_networks(self) -> tuple[str, ...]:
        """The graphs ``diffrt quantize`` made int8 (``diffrt.json``'s ``quantization``); empty for a float package."""
        networks = (self.provenance.get("quantization") or {}).get("networks") or {}
        return tuple(networks) if isinstance(networks, dict) else ()

    def has(self, network: str) -> bool:
        return (self.path / network / MODEL_FILE).is_file()

    def config(self, component: str) -> dict[str, Any]:
        """``<component>/config.json`` as a dict; empty when the package has none."""
        path = self.path / component / CONFIG_NAME
        return read_json(path) if path.is_file() else {}

    def require(self, networks: tuple[str, ...], pipeline: str) -> None:
        """Refuse early, naming every network ``pipeline`` needs that the package lacks."""
        missing = [n for n in networks if not self.has(n)]
        if missing:
            raise PackageError(
                f"engine package {str(self.path)!r} has no {', '.join(f'{n}/model.onnx' for n in missing)}, which "
                f"{pipeline} needs; it holds {', '.join(n for n in NETWORKS if self.has(n)) or 'no networks'}. "
                f"Export a checkpoint that has these components, or pick the pipeline that matches the package "
                f"({self.pipeline_class or 'unknown'})."
            )

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, from the VAE config the package carries (never assumed to be 8)."""
        return self.vae_config.scale_factor

    @property
    def vae_force_upcast(self) -> bool:
        """Whether the VAE must run in fp32: an SDXL package whose VAE config sets ``force_upcast``."""
        return self.index.is_sdxl and self.vae_config.force_upcast

    # ----- runtime objects --------------------------------------------------------------------------------------
    def engine(self, network: str) -> Engine:
        """The engine of ``network``, created on first use and shared afterwards (thread-safe)."""
        with self._lock:
            if network not in self._engines:
                if not self.has(network):
                    self.require((network,), f"the {network} engine")
                self._engines[network] = load_engine(
                    self.path / network, provider=self.provider, settings=self.settings_for(network), name=network
                )
            return self._engines[network]

    def settings_for(self, network: str) -> SessionSettings:
        """The session settings of ``network``: the package's, with these exceptions.

        - Under ``precision="auto"`` the depth estimator stays fp32 on GPUs. It runs once per image, and the pipeline
          rescales its output by its own min-max range, so fp16's 3 significant digits would show directly in the
          conditioning (and a graph with a small output range, like the test models', comes out flat).
        - Under ``precision="auto"`` the VAE encoder and decoder of an SDXL package stay fp32 when the VAE config sets
          ``force_upcast`` (SDXL's VAE overflows fp16; diffusers' SDXL pipelines upcast it the same way). diffusers'
          SD 1.x/2.x pipelines ignore the flag, which diffusers writes into every VAE config, so those VAEs keep fp16.
        - Under ``precision="auto"`` an int8 graph (``diffrt quantize``) is not converted to fp16: its float parts
          and the scales of its QDQ pairs stay fp32.
        - Under ``precision="auto"`` a T5 text encoder (SD3's ``text_encoder_3``, Flux's ``text_encoder_2``) and a
          Flux transformer stay fp32: both overflow fp16 (diffusers runs them in bf16, or clips Flux's activations
          to +-65504 in fp16), and ONNX Runtime's fp16 conversion here has no bf16 counterpart. SD3's transformer,
          CLIP encoders and the VAEs take fp16.
        - A CogVideoX package's VAE steps run without ONNX Runtime's memory patterns (one per frame count otherwise).
        - ``cuda_graph`` applies to the UNet only: it runs once per step, where kernel-launch overhead adds up; the
          other networks run once per call, and the text encoder's token handling (ArgMax over int64 ids) runs on
          the CPU, which a CUDA graph cannot hold (ONNX Runtime refuses the session).
        """
        settings = self.session_settings
        changes: dict[str, Any] = {}
        if settings.precision == "auto" and (
            network in FP32_NETWORKS
            or (network in VAE_NETWORKS and self.vae_force_upcast)
            or network in self.quantized_networks
            or self.overflows_fp16(network)
        ):
            changes["precision"] = "fp32"
        if settings.cuda_graph and network != "unet":
            changes["cuda_graph"] = False
        if network in VAE_NETWORKS and self.pipeline_class.startswith("CogVideoX") and settings.memory_pattern:
            # The video VAE's steps run at 1, 2 and 3 latent frames (1, 8 and 9 frames): a memory pattern planned
            # per shape keeps one large block per count. Measured on CogVideoX-2b's VAE at 160x240: two calls
            # peaked at 16.4 GB with patterns, 10.8 GB without (benchmarks/VIDEO.md).
            changes["memory_pattern"] = False
        return dataclasses.replace(settings, **changes) if changes else settings

    def overflows_fp16(self, network: str) -> bool:
        """Whether ``network`` is a T5 encoder or a Flux transformer (kept fp32 under precision="auto")."""
        if network.startswith("text_encoder") and self.has(network):
            architectures = self.config(network).get("architectures") or []
            return T5_CLASS in architectures or self.config(network).get("model_type") == "t5"
        return network == "transformer" and self.pipeline_class.startswith("Flux")

    @property
    def adapters(self) -> AdapterRegistry | None:
        """The LoRA adapters loaded into this package at run time (shared by every pipeline over it); None when the
        package was exported without LoRA slots."""
        with self._lock:
            if not hasattr(self, "_adapters"):
                networks = [name for name in LORA_NETWORKS if self.has(name)]
                self._adapters = AdapterRegistry.for_package(self.path, networks)
            return self._adapters

    def tokenizer(self, name: str = "tokenizer") -> CLIPTokenizer:
        """The tokenizer of folder ``name`` ("tokenizer", or SDXL's "tokenizer_2"), built once (its BPE tables take
        ~60 ms) and shared like the engines."""
        if name not in TOKENIZER_FOLDERS:
            raise PackageError(
                f"tokenizer {name!r} is not a package tokenizer; accepted: {', '.join(TOKENIZER_FOLDERS)}."
            )
        with self._lock:
            if name not in self._tokenizers:
                if not (self.path / name).is_dir():
                    raise PackageError(
                        f"engine package {str(self.path)!r} has no {name}/ folder; text prompts need it."
                    )
                self._tokenizers[name] = CLIPTokenizer.from_pretrained(self.path, subfolder=name)
            return self._tokenizers[name]

    def scheduler(self) -> Scheduler:
        path = self.path.joinpath(*SCHEDULER_CONFIG)
        if not path.is_file():
            raise PackageError(f"engine package {str(self.path)!r} has no {'/'.join(SCHEDULER_CONFIG)}.")
        return scheduler_from_config(path)

    def __repr__(self) -> str:
        return f"EnginePackage({str(self.path)!r}, {self.pipeline_class}, provider={self.provider!r})"
