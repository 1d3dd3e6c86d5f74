"""Choosing a package's VAEs: another diffusers VAE folder in place of the source's (``diffrt export --vae``, what
diffusers users do with ``pipe.vae = AutoencoderTiny.from_pretrained(...)``), and a tiny VAE whose decoder the
package carries for progress previews only (``--preview-vae``).

An ``AutoencoderTiny`` config is completed as diffusers holds it once the model is built
(:func:`~diffrt.export.models.autoencoder_tiny.tiny_config`), since pipelines size images from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from diffrt.runtime.errors import CheckpointError, ConfigError
from diffrt.runtime.networks import PREVIEW_DECODER, TINY_VAE, vae_scale_factor
from diffrt.runtime.schema import CONFIG_NAME

from . import weights
from .models.autoencoder_tiny import tiny_config
from .source import Component, Source

VAE_CLASSES = ("AutoencoderKL", TINY_VAE)
FOLDER_HINT = (
    "accepted: a diffusers VAE folder as `vae.save_pretrained()` writes it (config.json and "
    "diffusion_pytorch_model.safetensors) of class AutoencoderKL or AutoencoderTiny; for a pipeline folder, its vae/"
)


def load_vae_folder(
    folder: str | Path, flag: str, variant: str | None = None, allow_pickle: bool = False
) -> tuple[Component, list[Path]]:
    """A diffusers VAE folder as the ``vae`` component, and the files it reads (for provenance)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise CheckpointError(f"{flag} {folder}: {what}, so it is not a diffusers VAE folder; {FOLDER_HINT}.")
    config = weights.read_json(config_path)
    class_name = config.get("_class_name")
    if class_name not in VAE_CLASSES:
        raise CheckpointError(
            f"{flag} {folder}: its config.json describes {class_name!r}, not a VAE diffrt exports; {FOLDER_HINT}."
        )
    if class_name == TINY_VAE:
        config = tiny_config(config, f"{flag} {folder}")
    files = [config_path, *weights.component_weight_files(folder, variant=variant)]
    loader = lambda: weights.load_component_weights(folder, variant=variant, allow_pickle=allow_pickle)  # noqa: E731
    return Component("vae", class_name, config, loader), files


def _check_latent_channels(source: Source, vae: Component, flag: str, folder: Path) -> None:
    """The VAE must encode to, and decode from, the latents the UNet denoises."""
    wanted = source.components["unet"].config.get("out_channels", 4)
    have = vae.config.get("latent_channels", 4)
    if have != wanted:
        raise ConfigError(
            f"{flag} {folder}: this {vae.class_name} has {have} latent channels but the UNet of {source.path} denoises "
            f"{wanted}; accepted: a VAE of this model's latent space ({wanted} channels, such as TAESD for SD 1.x/2.x "
            "or TAESDXL for SDXL)."
        )


def _check_image_pipeline(source: Source, flag: str) -> None:
    vae = source.components.get("vae")
    if vae is None or vae.class_name not in VAE_CLASSES or "unet" not in source.components:
        raise ConfigError(
            f"{flag} applies to Stable Diffusion pipelines (a UNet over an image VAE's latents); {source.path} is a "
            f"{source.pipeline_class}."
        )


def replace_vae(source: Source, folder: str | Path, variant: str | None = None, allow_pickle: bool = False) -> Source:
    """``source`` with the VAE of ``folder`` (AutoencoderKL or AutoencoderTiny) in place of its own."""
    folder = Path(folder)
    _check_image_pipeline(source, "--vae")
    vae, files = load_vae_folder(folder, "--vae", variant, allow_pickle)
    _check_latent_channels(source, vae, "--vae", folder)
    own = source.path / "vae"
    kept = [path for path in source.files if own not in path.parents]
    notes = [*source.notes, f"vae: the {vae.class_name} of {folder} replaces the source's"]
    old, new = source.scale_factor, vae_scale_factor(vae.config)
    if old != new:
        notes.append(f"vae: {folder} has {new} pixels per latent where the source's VAE had {old}; image sizes follow")
    components = {**source.components, "vae": vae}
    return dataclasses.replace(source, components=components, files=kept + files, notes=notes, vae_folder=folder)


def add_preview_vae(
    source: Source, folder: str | Path, variant: str | None = None, allow_pickle: bool = False
) -> Source:
    """``source`` with the AutoencoderTiny of ``folder`` to export as the preview decoder (``vae_decoder_preview``)."""
    folder = Path(folder)
    _check_image_pipeline(source, "--preview-vae")
    vae, files = load_vae_folder(folder, "--preview-vae", variant, allow_pickle)
    if vae.class_name != TINY_VAE:
        raise ConfigError(
            f"--preview-vae {folder}: is an {vae.class_name}, which decodes no faster than the package's own VAE; "
            "accepted: an AutoencoderTiny folder (TAESD); to replace the package's VAE instead, use --vae."
        )
    _check_latent_channels(source, vae, "--preview-vae", folder)
    if vae_scale_factor(vae.config) != source.scale_factor:
        raise ConfigError(
            f"--preview-vae {folder}: decodes {vae_scale_factor(vae.config)} pixels per latent but the package's VAE "
            f"{source.scale_factor}; accepted: a tiny VAE of the same scale factor."
        )
    preview = dataclasses.replace(vae, name=PREVIEW_DECODER)
    return dataclasses.replace(source, files=[*source.files, *files], preview_vae=preview, preview_vae_folder=folder)


def vae_provenance(source: Source) -> dict[str, Any]:
    """What diffrt.json records of the package's VAEs: each one's class and the folder it came from (None: the
    source's own)."""
    record: dict[str, Any] = {}
    if "vae" in source.components:
        folder = source.vae_folder
        record["vae"] = {"class": source.components["vae"].class_name, "folder": str(folder) if folder else None}
    if source.preview_vae is not None:
        record["preview_vae"] = {"class": source.preview_vae.class_name, "folder": str(source.preview_vae_folder)}
    return record
