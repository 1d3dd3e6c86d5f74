"""What the user downloaded, read into components: a diffusers folder or a single-file LDM checkpoint.

A :class:`Source` holds each network's diffusers config and a loader for its weights (diffusers names), the
scheduler config, the tokenizer files and the provenance (files and their hashes). Weights are loaded only when a
component is exported, one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffrt.runtime.errors import CheckpointError
from diffrt.runtime.schema import CONFIG_NAME, INDEX_NAME, SCHEDULER_CONFIG

from . import weights

# Pipelines the export stage builds packages for, and the networks each needs.
PIPELINES: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("text_encoder", "unet", "vae"),
    "StableDiffusionImg2ImgPipeline": ("text_encoder", "unet", "vae"),
    "StableDiffusionInpaintPipeline": ("text_encoder", "unet", "vae"),
    "StableDiffusionDepth2ImgPipeline": ("text_encoder", "unet", "vae", "depth_estimator"),
    "DDPMPipeline": ("unet",),
    "StableDiffusionXLPipeline": ("text_encoder", "text_encoder_2", "unet", "vae"),
    "StableDiffusionXLImg2ImgPipeline": ("text_encoder", "text_encoder_2", "unet", "vae"),
    "StableDiffusionXLInpaintPipeline": ("text_encoder", "text_encoder_2", "unet", "vae"),
    "CogVideoXPipeline": ("text_encoder", "transformer", "vae"),
    "CogVideoXImageToVideoPipeline": ("text_encoder", "transformer", "vae"),
    "CogVideoXVideoToVideoPipeline": ("text_encoder", "transformer", "vae"),
    "StableDiffusion3Pipeline": ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"),
    "StableDiffusion3Img2ImgPipeline": ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"),
    "StableDiffusion3InpaintPipeline": ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"),
    "FluxPipeline": ("text_encoder", "text_encoder_2", "transformer", "vae"),
    "FluxImg2ImgPipeline": ("text_encoder", "text_encoder_2", "transformer", "vae"),
    "FluxInpaintPipeline": ("text_encoder", "text_encoder_2", "transformer", "vae"),
}
SD3_PIPELINES = tuple(name for name in PIPELINES if name.startswith("StableDiffusion3"))
FLUX_PIPELINES = tuple(name for name in PIPELINES if name.startswith("Flux"))
SDXL_PIPELINES = tuple(name for name in PIPELINES if name.startswith("StableDiffusionXL"))
# Networks a pipeline may lack (an SDXL refiner has only text_encoder_2).
OPTIONAL: dict[str, tuple[str, ...]] = {name: ("text_encoder",) for name in SDXL_PIPELINES}
OPTIONAL.update({name: ("text_encoder_3",) for name in SD3_PIPELINES})  # SD3 without T5, as diffusers allows
# Pipeline settings kept from model_index.json, with diffusers' defaults for folders that do not state them.
PIPELINE_CONFIG: dict[str, dict[str, Any]] = {
    "StableDiffusionXLPipeline": {"force_zeros_for_empty_prompt": True},
    "StableDiffusionXLImg2ImgPipeline": {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False},
    "StableDiffusionXLInpaintPipeline": {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False},
}
# The tokenizer folder that goes with each text encoder, and the pad token of a generated one (OpenCLIP's
# tokenizer, SDXL's second, pads with "!").
TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
DEFAULT_PAD_TOKENS = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}
# Components a package leaves out on purpose (the runtime has no safety checker; say so rather than fail).
SKIPPED = ("safety_checker", "feature_extractor", "image_encoder")
MODEL_CLASSES = {
    "unet": ("UNet2DConditionModel", "UNet2DModel"),
    "vae": ("AutoencoderKL", "AutoencoderTiny", "AutoencoderKLCogVideoX"),
    "text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"),
    "transformer": ("CogVideoXTransformer3DModel", "SD3Transformer2DModel", "FluxTransformer2DModel"),
    "text_encoder_2": ("CLIPTextModelWithProjection", "T5EncoderModel"),
    "text_encoder_3": ("T5EncoderModel",),
    "depth_estimator": ("DPTForDepthEstimation",),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass
class Component:
    """One network of the source: its class, its diffusers / transformers config, and how to get its weights."""

    name: str
    class_name: str
    config: dict[str, Any]
    load_weights: Callable[[], dict[str, Any]]


@dataclass
class Source:
    path: Path
    kind: str  # "folder" or "single_file"
    pipeline_class: str
    components: dict[str, Component]
    scheduler_config: dict[str, Any]
    tokenizer_files: dict[str, Path] = field(default_factory=dict)
    tokenizer_pad_token: str = "<|endoftext|>"
    preprocessor_config: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokenizer_2_files: dict[str, Path] = field(default_factory=dict)
    """The second tokenizer's files (SDXL); empty when generated from the built-in CLIP vocabulary."""
    tokenizer_2_pad_token: str = "!"
    tokenizer_3_files: dict[str, Path] = field(default_factory=dict)
    """The third tokenizer's files (SD3's T5)."""
    pipeline_config: dict[str, Any] = field(default_factory=dict)
    """Pipeline settings from model_index.json (SDXL: force_zeros_for_empty_prompt, requires_aesthetics_score)."""
    vae_folder: Path | None = None
    """The VAE folder that replaced the source's own VAE (``diffrt export --vae``); None: the source's."""
    preview_vae: Component | None = None
    """An AutoencoderTiny whose decoder the package carries for progress previews (``--preview-vae``)."""
    preview_vae_folder: Path | None = None

    def tokenizer(self, folder: str) -> tuple[dict[str, Path], str]:
        """The files (empty: generate them) and pad token of tokenizer folder ``folder`` ("tokenizer"/"tokenizer_2")."""
        if folder == "tokenizer_2":
            return self.tokenizer_2_files, self.tokenizer_2_pad_token
        if folder == "tokenizer_3":
            return self.tokenizer_3_files, "<pad>"
        return self.tokenizer_files, self.tokenizer_pad_token

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell (1 for pipelines without a VAE, which work in pixels)."""
        from diffrt.runtime.networks import vae_scale_factor

        return vae_scale_factor(self.components["vae"].config) if "vae" in self.components else 1


def load_source(
    path: str | Path,
    config_dir: str | Path | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
) -> Source:
    """Read ``path`` (a diffusers folder or a single checkpoint file) into a :class:`Source`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a diffusers folder or a single checkpoint file.")
    if path.is_dir():
        if config_dir is not None:
            raise CheckpointError(f"--config applies to single-file checkpoints; {path} is a folder with its own.")
        return _load_folder(path, allow_pickle, variant)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(
            f"{path} is neither a diffusers folder nor a checkpoint file; accepted files end in "
            f"{', '.join(SINGLE_FILE_SUFFIXES)}."
        )
    return _load_single_file(path, config_dir, allow_pickle)


def _load_folder(root: Path, allow_pickle: bool, variant: str | None) -> Source:
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise CheckpointError(f"{root} has no {INDEX_NAME}, so it is not a diffusers pipeline folder.")
    index = weights.read_json(index_path)
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise CheckpointError(f"{index_path} names pipeline {pipeline!r}; diffrt exports {', '.join(PIPELINES)}.")
    components: dict[str, Component] = {}
    files: list[Path] = [index_path]
    for name in PIPELINES[pipeline]:
        entry = index.get(name)
        if not entry or entry[1] is None:
            if name in OPTIONAL.get(pipeline, ()):
                continue
            raise CheckpointError(f"{index_path} lists no {name}, which a {pipeline} needs.")
        class_name = entry[1]
        if class_name not in MODEL_CLASSES[name]:
            raise CheckpointError(
                f"{index_path}: {name} is a {class_name}; diffrt exports {' or '.join(MODEL_CLASSES[name])}."
            )
        folder = root / name
        config = weights.read_json(folder / CONFIG_NAME)
        if class_name == "AutoencoderTiny":  # completed as diffusers holds it: pipelines size images from it
            from .models.autoencoder_tiny import tiny_config

            config = tiny_config(config, str(folder))
        components[name] = Component(name, class_name, config, _folder_loader(folder, variant, allow_pickle))
        files.append(folder / CONFIG_NAME)
        files.extend(weights.component_weight_files(folder, variant=variant))
    scheduler_config = weights.read_json(root.joinpath(*SCHEDULER_CONFIG))
    files.append(root.joinpath(*SCHEDULER_CONFIG))
    notes = [f"{name} not exported: the runtime does not use it" for name in SKIPPED if index.get(name, [None])[0]]
    source = Source(
        root,
        "folder",
        pipeline,
        components,
        scheduler_config,
        files=files,
        notes=notes,
        pipeline_config=pipeline_config(pipeline, index),
    )
    if "text_encoder" in components:
        source.tokenizer_files = _tokenizer_files(root / "tokenizer")
        files.extend(source.tokenizer_files.values())
    if "text_encoder_2" in components:
        source.tokenizer_2_files = _tokenizer_files(root / "tokenizer_2")
        files.extend(source.tokenizer_2_files.values())
    if "text_encoder_3" in components:
        source.tokenizer_3_files = _tokenizer_files(root / "tokenizer_3")
        files.extend(source.tokenizer_3_files.values())
    if "depth_estimator" in components:
        preprocessor = root / "feature_extractor" / "preprocessor_config.json"
        source.preprocessor_config = weights.read_json(preprocessor)
        files.append(preprocessor)
    return source


def pipeline_config(pipeline: str, index: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``pipeline`` kept from its model_index.json, defaults filled in as diffusers fills them."""
    return {key: index.get(key, default) for key, default in PIPELINE_CONFIG.get(pipeline, {}).items()}


def _folder_loader(folder: Path, variant: str | None, allow_pickle: bool) -> Callable[[], dict[str, Any]]:
    return lambda: weights.load_component_weights(folder, variant=variant, allow_pickle=allow_pickle)


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def _tokenizer_files(folder: Path) -> dict[str, Path]:
    found = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    if "tokenizer.json" not in found and not {"vocab.json", "merges.txt"} <= found.keys():
        raise CheckpointError(
            f"{folder} holds no tokenizer; expected tokenizer.json (or CLIP's vocab.json with merges.txt)."
        )
    return found


def _load_single_file(path: Path, config_dir: str | Path | None, allow_pickle: bool) -> Source:
    from . import mmdit_single_file, single_file

    state_dict = weights.load_weights_file(path, allow_pickle=allow_pickle)
    kind = mmdit_single_file.family(state_dict.keys())
    if kind is not None:
        return _load_mmdit_single_file(path, state_dict, Path(config_dir) if config_dir else None, allow_pickle, kind)
    configs = None
    tokenizers: dict[str, dict[str, Path]] = {}
    files = [path]
    if config_dir is not None:
        config_dir = Path(config_dir)
        configs = read_config_dir(config_dir)
        for folder in TOKENIZERS.values():
            if (config_dir / folder).is_dir():
                tokenizers[folder] = _tokenizer_files(config_dir / folder)
        files.extend(p for p in sorted(config_dir.rglob("*.json")) if p.is_file())
    model = single_file.convert_single_file(state_dict, configs=configs, source=str(path))
    del state_dict
    index = model.configs["model_index"]
    pipeline = index["_class_name"]
    if pipeline not in PIPELINES:
        raise CheckpointError(f"{path}: pipeline {pipeline!r} is not one diffrt exports ({', '.join(PIPELINES)}).")
    components = {}
    for name in PIPELINES[pipeline]:
        if name not in model.state_dicts:
            if name in OPTIONAL.get(pipeline, ()):
                continue
            raise CheckpointError(f"{path}: the checkpoint holds no {name}, which a {pipeline} needs.")
        class_name = (index.get(name) or [None, None])[1] or MODEL_CLASSES[name][0]
        sd = model.state_dicts[name]
        components[name] = Component(name, class_name, model.configs[name], lambda sd=sd: sd)
    return Source(
        path,
        "single_file",
        pipeline,
        components,
        model.configs["scheduler"],
        tokenizer_files=tokenizers.get("tokenizer", {}),
        tokenizer_pad_token=model.configs.get("tokenizer_pad_token", DEFAULT_PAD_TOKENS["tokenizer"]),
        tokenizer_2_files=tokenizers.get("tokenizer_2", {}),
        tokenizer_2_pad_token=model.configs.get("tokenizer_2_pad_token", DEFAULT_PAD_TOKENS["tokenizer_2"]),
        pipeline_config=pipeline_config(pipeline, index),
        files=files,
        notes=[f"detected layout: {model.family}", *model.notes],
    )


def _load_mmdit_single_file(
    path: Path, state_dict: dict[str, Any], config_dir: Path | None, allow_pickle: bool, kind: str
) -> Source:
    """An SD3 / Flux single file: its transformer (and, for SD3 files that carry them, text encoders and VAE) in
    diffusers' names; the rest of the pipeline, configs and tokenizers from the ``--config`` diffusers folder."""
    from dataclasses import replace

    from . import mmdit_single_file as msf
    from . import single_file

    label = {"sd3": "Stable Diffusion 3", "flux": "Flux"}[kind]
    if config_dir is None:
        raise CheckpointError(
            f"{path} is a {label} checkpoint, which holds no configs or tokenizers (and, for Flux, only the "
            "transformer); accepted: --config FOLDER, the model's diffusers folder, for the rest."
        )
    base = _load_folder(config_dir, allow_pickle, None)
    wanted = SD3_PIPELINES if kind == "sd3" else FLUX_PIPELINES
    if base.pipeline_class not in wanted:
        raise CheckpointError(
            f"{path} is a {label} checkpoint, but --config {config_dir} is a {base.pipeline_class} folder; accepted: "
            f"the diffusers folder of a {label} model."
        )
    components = dict(base.components)
    transformer = components["transformer"]
    converted = msf.convert_transformer(state_dict, kind, transformer.config, str(path))
    components["transformer"] = replace(transformer, load_weights=lambda sd=converted: sd)
    notes = [f"detected layout: {label} single file"]
    for name, tensors in msf.split_parts(state_dict).items():
        if name not in components:
            continue
        if name == "vae":
            tensors = single_file.convert_vae(tensors, components["vae"].config, source=str(path))
        components[name] = replace(components[name], load_weights=lambda sd=tensors: sd)
        notes.append(f"{name}: from the checkpoint")
    taken = [n for n in components if n not in ("transformer",) and f"{n}: from the checkpoint" not in notes]
    if taken:
        notes.append(f"from --config {config_dir}: {', '.join(taken)}")
    return replace(base, path=path, kind="single_file", components=components, files=[path, *base.files], notes=notes)


def read_config_dir(folder: Path) -> dict[str, Any]:
    """Configs of a diffusers folder, in the form :func:`single_file.convert_single_file` takes.

    The text encoders' configs and their tokenizers' pad tokens are read for those model_index.json lists (an SDXL
    refiner lists only text_encoder_2)."""
    if not (folder / INDEX_NAME).is_file():
        raise CheckpointError(f"--config {folder} has no {INDEX_NAME}; give a diffusers pipeline folder.")
    index = weights.read_json(folder / INDEX_NAME)
    configs: dict[str, Any] = {"model_index": index}
    for name in ("unet", "vae"):
        configs[name] = weights.read_json(folder / name / CONFIG_NAME)
    for encoder, tokenizer in TOKENIZERS.items():
        if not _listed(index, encoder):
            continue
        configs[encoder] = weights.read_json(folder / encoder / CONFIG_NAME)
        pad = _pad_token(folder / tokenizer)
        if pad is not None:
            configs[f"{tokenizer}_pad_token"] = pad
    configs["scheduler"] = weights.read_json(folder.joinpath(*SCHEDULER_CONFIG))
    return configs


def _listed(index: dict[str, Any], name: str) -> bool:
    """Whether model_index.json names a class for component ``name`` (``[null, null]`` means absent)."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def _pad_token(folder: Path) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            pad = json.loads((folder / name).read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return pad
    return None
