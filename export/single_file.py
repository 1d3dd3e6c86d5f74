"""Single-file Stable Diffusion checkpoints in the original LDM / SGM layouts (CompVis / Stability) -> diffusers.

A single ``.ckpt`` / ``.safetensors`` file from the original training code holds the UNet under
``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the text encoder under ``cond_stage_model.``
(HF CLIP names for SD 1.x, the OpenCLIP layout for SD 2.x). SDXL files (Stability's SGM code) keep the UNet and VAE
there and put the text encoders under ``conditioner.embedders.N.``: the base model's CLIP ViT-L in HF names
(``0.transformer.``) and its OpenCLIP ViT-bigG (``1.model.``); the refiner has only the bigG tower (``0.model.``).
This module

* guesses the family from key names and shapes alone (:func:`detect_layout`, fed by a safetensors header),
* carries the diffusers configs of the public reference models of each family (:func:`builtin_configs`) and checks
  that a checkpoint's shapes agree with the configs chosen for it (:func:`check_config`), never downloading any,
* renames and reshapes tensors into diffusers names (:func:`convert_unet`, :func:`convert_vae`,
  :func:`convert_text_encoder`, all in one call: :func:`convert_single_file`).

Conversion is table-driven: each converter first lists, from the component config alone, every
``(ldm name, diffusers name, reshape)`` triple the model needs, then applies the list. The same list tells which keys
are missing, and every key of the component's namespace it does not consume is either known to be ignorable (EMA
copies, schedule buffers, the OpenCLIP layers past the penultimate one, ...) or reported. No model is instantiated.

Text encoder names are those transformers >= 5.6 gives ``CLIPTextModel`` (``embeddings...``, ``encoder.layers...``,
``final_layer_norm...``, without the ``text_model.`` segment older releases saved) and, for SDXL's second encoder,
those it gives ``CLIPTextModelWithProjection`` (still under ``text_model.``, plus ``text_projection.weight``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from diffrt.runtime.errors import CheckpointError

from ..runtime.ldm_names import UNetBlocks, resnet_layers

__all__ = [
    "FAMILIES",
    "SDXL_FAMILIES",
    "LayoutGuess",
    "SingleFileModel",
    "builtin_configs",
    "check_config",
    "config_components",
    "convert_single_file",
    "convert_text_encoder",
    "convert_unet",
    "convert_vae",
    "detect_layout",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: HF CLIPTextModel names, with or without "text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H text tower
SDXL_PREFIX = "conditioner.embedders."  # SDXL (SGM): one entry per text tower
SDXL_CLIP_PREFIX = SDXL_PREFIX + "0.transformer."  # SDXL base: CLIP ViT-L, HF names with or without "text_model."
SDXL_OPEN_CLIP_PREFIX = SDXL_PREFIX + "1.model."  # SDXL base: OpenCLIP ViT-bigG
REFINER_OPEN_CLIP_PREFIX = SDXL_PREFIX + "0.model."  # SDXL refiner: OpenCLIP ViT-bigG, its only text tower
ADD_EMBEDDING_KEY = UNET_PREFIX + "label_emb.0.0.weight"  # SDXL's pooled-text + time-ids projection (add_embedding)
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
WRAPPER_PREFIX = "state_dict."  # diffusers unwraps a nested "state_dict" entry; flattened, it is this prefix
TEXT_ENCODER_KEY_PREFIX = ""  # transformers >= 5.6 CLIPTextModel names carry no "text_model." segment
PROJECTION_KEY_PREFIX = "text_model."  # ... while CLIPTextModelWithProjection (transformers 5.17) keeps it

CONFIG_HINT = "pass --config DIR with the model's diffusers configs"

# ---------------------------------------------------------------------------------------------------------------------
# Built-in configs: the diffusers folders of the public reference model of each family. Values are those of the
# config.json files on the Hub; fields those files lack take the library defaults. The pipeline entries describe what a
# single file converts to: it carries no safety checker or feature extractor.

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": _SD_DOWN,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": _SD_UP,
}
SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 96,
    "upcast_attention": True,
    "use_linear_projection": True,
}
SD15_INPAINT_UNET = {**SD15_UNET, "in_channels": 9}
SD2_INPAINT_UNET = {**SD21_UNET, "in_channels": 9, "sample_size": 64, "upcast_attention": False}

SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_VAE = {**SD15_VAE, "sample_size": 768}

# openai/clip-vit-large-patch14's text tower, as the SD 1.x folders store it (less "dropout": 0.0, a field
# transformers 5 no longer has).
CLIP_VIT_L_TEXT = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
OPEN_CLIP_VIT_H_TEXT = {  # OpenCLIP ViT-H/14 up to its penultimate layer (23 of 24), as the SD 2.x folders store it
    **CLIP_VIT_L_TEXT,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}

_SD_BETAS = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", **_SD_BETAS}
SD21_SCHEDULER = {"_class_name": "DDIMScheduler", **_SD_BETAS, "prediction_type": "v_prediction"}
SD15_INPAINT_SCHEDULER = {"_class_name": "DDIMScheduler", **_SD_BETAS}
SD2_INPAINT_SCHEDULER = {"_class_name": "PNDMScheduler", **_SD_BETAS, "prediction_type": "epsilon"}


# SDXL 1.0 (stabilityai/stable-diffusion-xl-base-1.0, -refiner-1.0): an SGM UNet whose added embedding takes the pooled
# text embeds and the time ids (6 for the base, 5 for the refiner, 256 features each), per-block transformer depths.
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_REFINER_UNET = {
    **SDXL_UNET,
    "attention_head_dim": [6, 12, 24, 24],
    "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "projection_class_embeddings_input_dim": 2560,
    "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
SDXL_INPAINT_UNET = {**SDXL_UNET, "in_channels": 9}  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1
# The SDXL VAE overflows in fp16: diffusers runs it in fp32 (force_upcast); its latents are scaled by 0.13025.
SDXL_VAE = {**SD15_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}
# laion/CLIP-ViT-bigG-14's text tower as SDXL's text_encoder_2 stores it: all 32 layers and the text projection.
OPEN_CLIP_VIT_BIGG_TEXT = {
    **CLIP_VIT_L_TEXT,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
SDXL_SCHEDULER = {  # the Hub file's fields that EulerDiscreteScheduler takes
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class _Tower:
    """One text encoder of a family: where the file keeps it, in which layout, and what diffusers makes of it."""

    component: str  # "text_encoder" | "text_encoder_2"
    layout: str  # "clip" (HF names) | "open_clip" (resblocks with fused q/k/v)
    prefix: str  # its namespace in the file
    config: dict  # the reference model's transformers config
    pad_token: str  # its tokenizer's pad token
    projection: bool = False  # CLIPTextModelWithProjection: keeps every layer, the final norm and text_projection

    @property
    def tokenizer(self) -> str:
        return "tokenizer_2" if self.component == "text_encoder_2" else "tokenizer"

    @property
    def class_name(self) -> str:
        return "CLIPTextModelWithProjection" if self.projection else "CLIPTextModel"


@dataclass(frozen=True)
class _Family:
    reference: str  # the public diffusers folder whose configs are built in
    diffusers_type: str  # diffusers' own name (infer_diffusers_model_type / DIFFUSERS_DEFAULT_PIPELINE_PATHS)
    in_channels: int
    pipeline: str
    unet: dict
    vae: dict
    scheduler: dict
    towers: tuple[_Tower, ...]
    settings: dict = field(default_factory=dict)  # pipeline settings model_index.json carries (SDXL)

    @property
    def sdxl(self) -> bool:
        return self.diffusers_type.startswith("xl_")

    @property
    def text_layout(self) -> str:  # "clip" | "open_clip" | "clip+open_clip"
        return "+".join(tower.layout for tower in self.towers)

    def tower(self, component: str) -> _Tower | None:
        return next((t for t in self.towers if t.component == component), None)


_SD1_TEXT = (_Tower("text_encoder", "clip", CLIP_PREFIX, CLIP_VIT_L_TEXT, "<|endoftext|>"),)
_SD2_TEXT = (_Tower("text_encoder", "open_clip", OPEN_CLIP_PREFIX, OPEN_CLIP_VIT_H_TEXT, "!"),)
_BIGG = OPEN_CLIP_VIT_BIGG_TEXT
_SDXL_TEXT = (
    _Tower("text_encoder", "clip", SDXL_CLIP_PREFIX, CLIP_VIT_L_TEXT, "<|endoftext|>"),
    _Tower("text_encoder_2", "open_clip", SDXL_OPEN_CLIP_PREFIX, _BIGG, "!", projection=True),
)
_REFINER_TEXT = (_Tower("text_encoder_2", "open_clip", REFINER_OPEN_CLIP_PREFIX, _BIGG, "!", projection=True),)
_SDXL_SETTINGS = {"force_zeros_for_empty_prompt": True}
_SDXL_IMAGE_SETTINGS = {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}
_REFINER_SETTINGS = {"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}

_FAMILIES = {
    "sd1": _Family(
        "runwayml/stable-diffusion-v1-5", "v1", 4, "StableDiffusionPipeline",
        SD15_UNET, SD15_VAE, SD15_SCHEDULER, _SD1_TEXT,
    ),
    "sd2": _Family(
        "stabilityai/stable-diffusion-2-1", "v2", 4, "StableDiffusionPipeline",
        SD21_UNET, SD21_VAE, SD21_SCHEDULER, _SD2_TEXT,
    ),
    "sd1-inpaint": _Family(
        "runwayml/stable-diffusion-inpainting", "inpainting", 9, "StableDiffusionInpaintPipeline",
        SD15_INPAINT_UNET, SD15_VAE, SD15_INPAINT_SCHEDULER, _SD1_TEXT,
    ),
    "sd2-inpaint": _Family(
        "stabilityai/stable-diffusion-2-inpainting", "inpainting_v2", 9, "StableDiffusionInpaintPipeline",
        SD2_INPAINT_UNET, SD15_VAE, SD2_INPAINT_SCHEDULER, _SD2_TEXT,
    ),
    "sdxl": _Family(
        "stabilityai/stable-diffusion-xl-base-1.0", "xl_base", 4, "StableDiffusionXLPipeline",
        SDXL_UNET, SDXL_VAE, SDXL_SCHEDULER, _SDXL_TEXT, _SDXL_SETTINGS,
    ),
    "sdxl-refiner": _Family(
        "stabilityai/stable-diffusion-xl-refiner-1.0", "xl_refiner", 4, "StableDiffusionXLImg2ImgPipeline",
        SDXL_REFINER_UNET, SDXL_VAE, SDXL_SCHEDULER, _REFINER_TEXT, _REFINER_SETTINGS,
    ),
    "sdxl-inpaint": _Family(
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "xl_inpaint", 9, "StableDiffusionXLInpaintPipeline",
        SDXL_INPAINT_UNET, SDXL_VAE, SDXL_SCHEDULER, _SDXL_TEXT, _SDXL_IMAGE_SETTINGS,
    ),
}  # fmt: skip
FAMILIES = tuple(_FAMILIES)
SDXL_FAMILIES = tuple(name for name, fam in _FAMILIES.items() if fam.sdxl)
CONFIG_COMPONENTS = ("model_index", "unet", "vae", "text_encoder", "scheduler", "tokenizer_pad_token")  # SD 1.x/2.x

# The global step the SD 2.0-base (512, epsilon) release was saved at: diffusers' only rule for telling it from 768-v.
SD2_BASE_GLOBAL_STEP = 875000


def config_components(family: str) -> tuple[str, ...]:
    """The keys of :func:`builtin_configs`' result for ``family``: configs, then the tokenizers' pad tokens."""
    fam = _family(family)
    towers = [t.component for t in fam.towers]
    return ("model_index", "unet", "vae", *towers, "scheduler", *(f"{t.tokenizer}_pad_token" for t in fam.towers))


def _family(family: str) -> _Family:
    if family not in _FAMILIES:
        raise CheckpointError(f"family {family!r} has no built-in configs; accepted families: {', '.join(FAMILIES)}.")
    return _FAMILIES[family]


def _model_index(fam: _Family) -> dict:
    index: dict = {"_class_name": fam.pipeline, **fam.settings, "feature_extractor": [None, None]}
    if fam.sdxl:
        index["image_encoder"] = [None, None]
    else:
        index.update(requires_safety_checker=False, safety_checker=[None, None])
    index["scheduler"] = ["diffusers", fam.scheduler["_class_name"]]
    for component, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        tower = fam.tower(component)
        if tower is not None:
            index[component] = ["transformers", tower.class_name]
            index[tokenizer] = ["transformers", "CLIPTokenizer"]
        elif fam.sdxl:  # diffusers writes absent components as [null, null]
            index[component] = index[tokenizer] = [None, None]
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    index["vae"] = ["diffusers", "AutoencoderKL"]
    return index


def builtin_configs(family: str) -> dict:
    """The diffusers configs of ``family``'s reference model: a fresh dict with :func:`config_components` keys
    (model_index, unet, vae, one config per text encoder, scheduler, one pad token per tokenizer)."""
    fam = _family(family)
    configs: dict = {"model_index": _model_index(fam), "unet": fam.unet, "vae": fam.vae}
    configs.update({tower.component: tower.config for tower in fam.towers})
    configs["scheduler"] = fam.scheduler
    configs.update({f"{tower.tokenizer}_pad_token": tower.pad_token for tower in fam.towers})
    return copy.deepcopy(configs)


# ---------------------------------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class LayoutGuess:
    """What the key names and shapes of a single-file checkpoint say it is."""

    family: str  # one of FAMILIES
    in_channels: int  # the UNet's conv_in input channels (4, or 9 for inpainting)
    prediction_type: str  # "epsilon" | "v_prediction" (what diffusers assumes for the family)
    prefix: str  # wrapper stripped off every key before the LDM names ("" or "state_dict.")
    text_layout: str | None  # "clip" | "open_clip" | "clip+open_clip" (SDXL base) | None when the file has none
    cross_attention_dim: int | None  # in-features of the UNet's cross-attention keys, None without any
    diffusers_type: str  # diffusers' name for the model type ("v1", "v2", "inpainting", "xl_base", ...)
    notes: tuple[str, ...] = ()  # assumptions made, for the caller to print


def _wrapper_prefix(keys: Iterable[str]) -> str:
    keys = list(keys)
    prefix = ""
    while keys and all(k.startswith(prefix + WRAPPER_PREFIX) for k in keys):
        prefix += WRAPPER_PREFIX
    return prefix


def _strip(mapping: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in mapping.items()} if prefix else dict(mapping)


def _first_cross_attention(shapes: Mapping[str, tuple]) -> tuple[str, tuple] | None:
    pattern = re.compile(
        re.escape(UNET_PREFIX) + r"(input_blocks|middle_block|output_blocks)\.(\d+)\..*attn2\.to_k\.weight$"
    )
    order = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
    found = [(order[m[1]], int(m[2]), k) for k in shapes if (m := pattern.match(k))]
    if not found:
        return None
    key = min(found)[2]
    return key, tuple(shapes[key])


def detect_layout(
    shapes: Mapping[str, tuple[int, ...]], *, global_step: int | None = None, source: str = "the checkpoint"
) -> LayoutGuess:
    """Guess the family of a single-file checkpoint from its key -> shape map (a safetensors header; no weights).

    ``global_step`` (the ``global_step`` entry of a ``.ckpt``) is diffusers' only hint that an SD 2 file is the
    epsilon SD2.0-base model rather than a 768-v one. SDXL files are told apart by their ``conditioner.embedders.``
    text towers: CLIP ViT-L plus OpenCLIP bigG for the base (and its 9-channel inpainting variant), bigG alone for the
    refiner. Raises :class:`CheckpointError` for SD2 depth models, UNets with unsupported input channels, SDXL files
    with an unknown set of text towers, and files in no supported layout; ``source`` names the file in those messages.
    """
    prefix = _wrapper_prefix(shapes)
    shapes = _strip(shapes, prefix)
    if any(k.startswith(SDXL_PREFIX) for k in shapes):
        return _detect_sdxl(shapes, prefix, source)
    if CONV_IN_KEY not in shapes:
        seen = ", ".join(sorted(shapes)[:3]) or "no keys at all"
        raise CheckpointError(
            f"{source} is not a Stable Diffusion 1.x/2.x single file in the LDM layout: diffrt looked for the "
            f"UNet key {CONV_IN_KEY} (and {UNET_PREFIX}*, {VAE_PREFIX}*, cond_stage_model.* keys) but found "
            f"{seen}{', ...' if len(shapes) > 3 else ''}; pass a diffusers folder, or {CONFIG_HINT} if it is an SD "
            "1.x/2.x model."
        )
    conv_in = tuple(shapes[CONV_IN_KEY])
    in_channels = int(conv_in[1]) if len(conv_in) == 4 else -1
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in shapes):
        text_layout = "open_clip"
    elif any(k.startswith(CLIP_PREFIX) for k in shapes):
        text_layout = "clip"
    else:
        text_layout = None
    cross = _first_cross_attention(shapes)
    cross_dim = int(cross[1][-1]) if cross else None
    if text_layout == "open_clip" or (text_layout is None and cross_dim == 1024):
        base = "sd2"
    elif text_layout == "clip" or (text_layout is None and cross_dim == 768):
        base = "sd1"
    else:
        raise CheckpointError(
            f"{source} has LDM UNet keys but neither a text encoder (looked for {CLIP_PREFIX}* or "
            f"{OPEN_CLIP_PREFIX}*) nor a cross-attention width of 768 (SD 1.x) or 1024 (SD 2.x) "
            f"(found {cross_dim}); {CONFIG_HINT}."
        )
    if in_channels == 5 and base == "sd2":
        raise CheckpointError(
            f"{source} is a Stable Diffusion 2 depth model (5-channel UNet), which needs a depth estimator that "
            "a single file does not contain; use the model's diffusers folder (such as "
            "stabilityai/stable-diffusion-2-depth) instead."
        )
    if in_channels not in (4, 9):
        raise CheckpointError(
            f"the UNet of {source} takes {in_channels} input channels ({CONV_IN_KEY} has shape {conv_in}), which no "
            "supported single-file family has; accepted: 4 (text-to-image) or 9 (inpainting) channels."
        )
    family = base if in_channels == 4 else f"{base}-inpaint"
    notes: list[str] = []
    prediction_type = "epsilon"
    if family == "sd2":
        if global_step == SD2_BASE_GLOBAL_STEP:
            notes.append(
                f"SD2 checkpoint saved at global_step {SD2_BASE_GLOBAL_STEP} taken for SD2.0-base: epsilon prediction, "
                "as diffusers assumes."
            )
        else:
            prediction_type = "v_prediction"
            notes.append(
                "SD2 assumed to be a 768-v model (v_prediction), as diffusers assumes for SD2 single files; "
                f"for an epsilon model such as SD2-base, {CONFIG_HINT}."
            )
    return LayoutGuess(
        family=family,
        in_channels=in_channels,
        prediction_type=prediction_type,
        prefix=prefix,
        text_layout=text_layout,
        cross_attention_dim=cross_dim,
        diffusers_type=_FAMILIES[family].diffusers_type,
        notes=tuple(notes),
    )


def _detect_sdxl(shapes: Mapping[str, tuple], prefix: str, source: str) -> LayoutGuess:
    """The SDXL family of a file with ``conditioner.embedders.`` keys (``shapes`` already unwrapped)."""

    def has(namespace: str) -> bool:
        return any(k.startswith(namespace) for k in shapes)

    clip, big_g, refiner_big_g = has(SDXL_CLIP_PREFIX), has(SDXL_OPEN_CLIP_PREFIX), has(REFINER_OPEN_CLIP_PREFIX)
    if big_g and not refiner_big_g:
        base, text_layout = "sdxl", "clip+open_clip" if clip else "open_clip"
    elif refiner_big_g and not (clip or big_g):
        base, text_layout = "sdxl-refiner", "open_clip"
    else:
        towers = sorted({".".join(k.split(".")[:4]) + ".*" for k in shapes if k.startswith(SDXL_PREFIX)})
        raise CheckpointError(
            f"{source} holds SDXL text-encoder keys under {', '.join(towers)}, which match no SDXL layout diffrt "
            f"knows; accepted: the base model's {SDXL_CLIP_PREFIX}* with {SDXL_OPEN_CLIP_PREFIX}*, or the refiner's "
            f"{REFINER_OPEN_CLIP_PREFIX}* alone."
        )
    if CONV_IN_KEY not in shapes:
        raise CheckpointError(
            f"{source} holds SDXL text encoders but no UNet (looked for {CONV_IN_KEY}); pass a complete SDXL "
            "checkpoint with its UNet, VAE and text encoders."
        )
    conv_in = tuple(shapes[CONV_IN_KEY])
    in_channels = int(conv_in[1]) if len(conv_in) == 4 else -1
    accepted = (4, 9) if base == "sdxl" else (4,)
    if in_channels not in accepted:
        raise CheckpointError(
            f"the UNet of {source} takes {in_channels} input channels ({CONV_IN_KEY} has shape {conv_in}), which no "
            f"supported {base} model has; accepted: {' or '.join(map(str, accepted))} channels."
        )
    family = "sdxl-inpaint" if in_channels == 9 else base
    cross = _first_cross_attention(shapes)
    return LayoutGuess(
        family=family,
        in_channels=in_channels,
        prediction_type="epsilon",
        prefix=prefix,
        text_layout=text_layout,
        cross_attention_dim=int(cross[1][-1]) if cross else None,
        diffusers_type=_FAMILIES[family].diffusers_type,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Config readers: diffusers / transformers defaults for the fields a config.json may omit.

_UNET_DEFAULTS = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "cross_attention_dim": 1280,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "num_class_embeds": None,
    "time_cond_proj_dim": None,
    "encoder_hid_dim": None,
}
_VAE_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "latent_channels": 4,
    "mid_block_add_attention": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
_TEXT_DEFAULTS = {"hidden_size": 512, "num_hidden_layers": 12, "vocab_size": 49408, "max_position_embeddings": 77}


def _with_defaults(config: Mapping, defaults: Mapping) -> dict:
    return {**defaults, **config}


def _per_block(value, n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise CheckpointError(f"the UNet config's {name} has {len(value)} entries; accepted: one per block ({n}).")
    return list(value)


def _unet_cfg(config: Mapping, text_time: bool | None = False) -> dict:
    """``config`` with defaults, checked to be a UNet the conversion plans cover.

    ``text_time``: False for SD 1.x/2.x (no added embedding allowed), True for SDXL (its text_time added embedding
    required), None to accept either (a lone :func:`convert_unet` call).
    """
    cfg = _with_defaults(config, _UNET_DEFAULTS)
    n = len(cfg["block_out_channels"])
    supported = {
        "down_block_types": {"CrossAttnDownBlock2D", "DownBlock2D"},
        "up_block_types": {"CrossAttnUpBlock2D", "UpBlock2D"},
        "mid_block_type": {"UNetMidBlock2DCrossAttn"},
    }
    for name, accepted in supported.items():
        values = [cfg[name]] if isinstance(cfg[name], str) else list(cfg[name])
        bad = [v for v in values if v not in accepted]
        if bad or (name != "mid_block_type" and len(values) != n):
            raise CheckpointError(
                f"the UNet config's {name}={cfg[name]!r} is not a Stable Diffusion UNet; accepted: "
                f"{len(values) if name == 'mid_block_type' else n} of {', '.join(sorted(accepted))}."
            )
    added = cfg["addition_embed_type"]
    if text_time and added != "text_time":
        raise CheckpointError(
            f"the UNet config sets addition_embed_type={added!r}, but an SDXL UNet conditions on pooled text and "
            "time ids; accepted: 'text_time'."
        )
    if text_time is False and added is not None:
        raise CheckpointError(
            f"the UNet config sets addition_embed_type={added!r}, which single-file SD 1.x/2.x conversion does not "
            "support; accepted: null."
        )
    if added not in (None, "text_time"):
        raise CheckpointError(
            f"the UNet config sets addition_embed_type={added!r}, which single-file conversion does not support; "
            "accepted: null or 'text_time'."
        )
    if text_time:
        for name in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            if not isinstance(cfg[name], int):
                raise CheckpointError(
                    f"the UNet config sets {name}={cfg[name]!r}, which a text_time UNet needs; accepted: an integer."
                )
    for name in ("class_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim"):
        if cfg[name] is not None:
            raise CheckpointError(
                f"the UNet config sets {name}={cfg[name]!r}, which single-file conversion does not support; "
                "accepted: null."
            )
    return cfg


def _vae_cfg(config: Mapping) -> dict:
    cfg = _with_defaults(config, _VAE_DEFAULTS)
    n = len(cfg["block_out_channels"])
    if (
        list(cfg["down_block_types"]) != ["DownEncoderBlock2D"] * n
        or list(cfg["up_block_types"]) != ["UpDecoderBlock2D"] * n
    ):
        raise CheckpointError(
            "the VAE config's down/up block types are not those of an AutoencoderKL VAE; accepted: "
            f"{n} DownEncoderBlock2D and {n} UpDecoderBlock2D."
        )
    return cfg


def _text_cfg(config: Mapping) -> dict:
    return _with_defaults(config, _TEXT_DEFAULTS)


# ---------------------------------------------------------------------------------------------------------------------
# Conversion plans: (ldm key, diffusers key, reshape) triples, listed from a config alone.
# Reshapes: None (as stored), "2d" (1x1 conv -> linear), "conv"/"linear" (to the config's projection kind),
# ("qkv", i) (the i-th third of a fused q/k/v projection).

_WB = ("weight", "bias")
_VAE_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_VAE_ATTENTION = (
    ("norm", "group_norm", None),
    ("q", "to_q", "2d"),
    ("k", "to_k", "2d"),
    ("v", "to_v", "2d"),
    ("proj_out", "to_out.0", "2d"),
)
_TRANSFORMER_BLOCK = (
    [(f"{a}.{p}.weight", None) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v")]
    + [(f"{a}.to_out.0.{wb}", None) for a in ("attn1", "attn2") for wb in _WB]
    + [(f"{m}.{wb}", None) for m in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3") for wb in _WB]
)
_CLIP_LAYER = [
    f"{m}.{wb}"
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "layer_norm2",
        "mlp.fc1",
        "mlp.fc2",
    )
    for wb in _WB
]
_OPEN_CLIP_LAYER = (
    ("ln_1", "layer_norm1"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)

Plan = list[tuple[str, str, object]]


def _pairs(plan: Plan, ldm: str, new: str, names: Iterable[str] = _WB, reshape=None) -> None:
    plan.extend((f"{ldm}.{n}", f"{new}.{n}", reshape) for n in names)


def _unet_plan(config: Mapping, text_time: bool | None = None) -> Plan:
    cfg = _unet_cfg(config, text_time)
    outs = list(cfg["block_out_channels"])
    n = len(outs)
    _per_block(cfg["layers_per_block"], n, "layers_per_block")  # one number or one per block, else CheckpointError
    depth = _per_block(cfg["transformer_layers_per_block"], n, "transformer_layers_per_block")
    up_depth = list(reversed(depth))
    if cfg["reverse_transformer_layers_per_block"] is not None:
        up_depth = [d if isinstance(d, int) else d[0] for d in cfg["reverse_transformer_layers_per_block"]]
    proj = "linear" if cfg["use_linear_projection"] else "conv"
    p = UNET_PREFIX
    plan: Plan = []

    def transformer(ldm: str, new: str, blocks: int) -> None:
        _pairs(plan, f"{p}{ldm}.norm", f"{new}.norm")
        _pairs(plan, f"{p}{ldm}.proj_in", f"{new}.proj_in", ("weight",), proj)
        _pairs(plan, f"{p}{ldm}.proj_out", f"{new}.proj_out", ("weight",), proj)
        _pairs(plan, f"{p}{ldm}.proj_in", f"{new}.proj_in", ("bias",))
        _pairs(plan, f"{p}{ldm}.proj_out", f"{new}.proj_out", ("bias",))
        for t in range(blocks):
            for name, reshape in _TRANSFORMER_BLOCK:
                plan.append(
                    (f"{p}{ldm}.transformer_blocks.{t}.{name}", f"{new}.transformer_blocks.{t}.{name}", reshape)
                )

    depths = {"down": depth, "mid": depth[-1:], "up": up_depth}  # transformer blocks per attention, by block
    channels = outs[0]
    for module in UNetBlocks.from_config(cfg).modules():
        if module.kind == "resnet":
            # A resnet has a shortcut where it changes the width: going up, the skip concatenation always does.
            shortcut = module.part == "up" or (module.part == "down" and channels != outs[module.block])
            if module.part == "down":
                channels = outs[module.block]
            for name, old in resnet_layers(shortcut):
                _pairs(plan, f"{p}{module.ldm}.{old}", f"{module.diffusers}.{name}")
        elif module.kind == "attention":
            transformer(module.ldm, module.diffusers, depths[module.part][module.block])
        else:
            _pairs(plan, f"{p}{module.ldm}", module.diffusers)
    return plan


def _vae_plan(config: Mapping) -> Plan:
    cfg = _vae_cfg(config)
    outs = list(cfg["block_out_channels"])
    n, layers = len(outs), cfg["layers_per_block"]
    p = VAE_PREFIX
    plan: Plan = []

    def resnet(ldm: str, new: str, shortcut: bool) -> None:
        for old, name in _VAE_RESNET:
            _pairs(plan, f"{p}{ldm}.{old}", f"{new}.{name}")
        if shortcut:
            _pairs(plan, f"{p}{ldm}.nin_shortcut", f"{new}.conv_shortcut")

    def mid(part: str) -> None:
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", False)
        if cfg["mid_block_add_attention"]:
            for old, name, reshape in _VAE_ATTENTION:
                _pairs(
                    plan, f"{p}{part}.mid.attn_1.{old}", f"{part}.mid_block.attentions.0.{name}", ("weight",), reshape
                )
                _pairs(plan, f"{p}{part}.mid.attn_1.{old}", f"{part}.mid_block.attentions.0.{name}", ("bias",))
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", False)

    _pairs(plan, f"{p}encoder.conv_in", "encoder.conv_in")
    channels = outs[0]
    for i in range(n):
        for j in range(layers):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", channels != outs[i])
            channels = outs[i]
        if i < n - 1:
            _pairs(plan, f"{p}encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    mid("encoder")
    _pairs(plan, f"{p}encoder.norm_out", "encoder.conv_norm_out")
    _pairs(plan, f"{p}encoder.conv_out", "encoder.conv_out")
    if cfg["use_quant_conv"]:
        _pairs(plan, f"{p}quant_conv", "quant_conv")
    if cfg["use_post_quant_conv"]:
        _pairs(plan, f"{p}post_quant_conv", "post_quant_conv")
    _pairs(plan, f"{p}decoder.conv_in", "decoder.conv_in")
    mid("decoder")
    rev = list(reversed(outs))
    channels = rev[0]
    for i in range(n):
        ldm = n - 1 - i  # LDM numbers decoder levels from the highest resolution, diffusers from the lowest
        for j in range(layers + 1):
            resnet(f"decoder.up.{ldm}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", channels != rev[i])
            channels = rev[i]
        if i < n - 1:
            _pairs(plan, f"{p}decoder.up.{ldm}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv")
    _pairs(plan, f"{p}decoder.norm_out", "decoder.conv_norm_out")
    _pairs(plan, f"{p}decoder.conv_out", "decoder.conv_out")
    return plan


def _clip_prefix(keys: Iterable[str], prefix: str = CLIP_PREFIX) -> str:
    with_segment = prefix + "text_model."
    return with_segment if any(k.startswith(with_segment) for k in keys) else prefix


def _text_plan(config: Mapping, tower: _Tower, keys: Iterable[str]) -> Plan:
    cfg = _text_cfg(config)
    out = PROJECTION_KEY_PREFIX if tower.projection else TEXT_ENCODER_KEY_PREFIX
    plan: Plan = []
    if tower.layout == "clip":
        p = _clip_prefix(keys, tower.prefix)
        names = ["embeddings.token_embedding.weight", "embeddings.position_embedding.weight"]
        names += [f"encoder.layers.{i}.{name}" for i in range(cfg["num_hidden_layers"]) for name in _CLIP_LAYER]
        names += ["final_layer_norm.weight", "final_layer_norm.bias"]
        return [(p + name, out + name, None) for name in names]
    p = tower.prefix
    plan.append((f"{p}token_embedding.weight", f"{out}embeddings.token_embedding.weight", None))
    plan.append((f"{p}positional_embedding", f"{out}embeddings.position_embedding.weight", None))
    for i in range(cfg["num_hidden_layers"]):
        ldm, new = f"{p}transformer.resblocks.{i}", f"{out}encoder.layers.{i}"
        for old, name in _OPEN_CLIP_LAYER:
            _pairs(plan, f"{ldm}.{old}", f"{new}.{name}")
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            plan.append((f"{ldm}.attn.in_proj_weight", f"{new}.self_attn.{name}.weight", ("qkv", part)))
            plan.append((f"{ldm}.attn.in_proj_bias", f"{new}.self_attn.{name}.bias", ("qkv", part)))
    _pairs(plan, f"{p}ln_final", f"{out}final_layer_norm")
    if tower.projection:  # OpenCLIP applies it as x @ P, a Linear as x @ W.T: W = P.T
        plan.append((f"{p}text_projection", "text_projection.weight", "transpose"))
    return plan


def _reshape(tensor: torch.Tensor, how) -> torch.Tensor:
    if how is None:
        return tensor
    if how in ("2d", "linear"):
        return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim > 2 else tensor
    if how == "conv":
        return tensor.reshape(*tensor.shape, 1, 1) if tensor.ndim == 2 else tensor
    if how == "transpose":
        return tensor.t().contiguous()
    _, part = how  # ("qkv", i): fused [q; k; v] rows
    rows = tensor.shape[0] // 3
    return tensor[part * rows : (part + 1) * rows].clone()


# Keys a single file may carry that no diffusers component needs.
_IGNORED_KEYS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
    CLIP_PREFIX + "text_model.embeddings.position_ids", CLIP_PREFIX + "embeddings.position_ids",
    OPEN_CLIP_PREFIX + "logit_scale", OPEN_CLIP_PREFIX + "text_projection", OPEN_CLIP_PREFIX + "attn_mask",
    "denoiser.sigmas",  # SGM's discretised noise schedule
    SDXL_CLIP_PREFIX + "text_model.embeddings.position_ids", SDXL_CLIP_PREFIX + "embeddings.position_ids",
    SDXL_OPEN_CLIP_PREFIX + "logit_scale", SDXL_OPEN_CLIP_PREFIX + "attn_mask",
    REFINER_OPEN_CLIP_PREFIX + "logit_scale", REFINER_OPEN_CLIP_PREFIX + "attn_mask",
}  # fmt: skip
_IGNORED_PREFIXES = ("model_ema.", VAE_PREFIX + "loss.")
_RESBLOCK = re.compile(re.escape(OPEN_CLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\.")


def _ignorable(key: str, text_layers: int | None = None) -> bool:
    if key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES):
        return True
    m = _RESBLOCK.match(key)
    return bool(m and text_layers is not None and int(m[1]) >= text_layers)


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} ({shown}{', ...' if len(keys) > limit else ''})"


def _apply(
    ldm: Mapping[str, torch.Tensor],
    plan: Plan,
    component: str,
    namespaces: tuple[str, ...],
    source: str,
    text_layers: int | None = None,
) -> dict[str, torch.Tensor]:
    missing = sorted({old for old, _, _ in plan if old not in ldm})
    if missing:
        raise CheckpointError(
            f"{source} lacks {_listing(missing)} that the {component} config needs; pass a complete checkpoint, or "
            f"{CONFIG_HINT} if its architecture differs."
        )
    used = {old for old, _, _ in plan}
    extra = [k for k in ldm if k.startswith(namespaces) and k not in used and not _ignorable(k, text_layers)]
    if extra:
        raise CheckpointError(
            f"{source} holds {_listing(extra)} under the {component} namespace that its config does not explain; "
            f"{CONFIG_HINT} that match the checkpoint."
        )
    return {new: _reshape(ldm[old], how) for old, new, how in plan}


def convert_unet(ldm: Mapping[str, torch.Tensor], unet_config: Mapping, *, source: str = "the checkpoint") -> dict:
    """``model.diffusion_model.*`` of an LDM / SGM state dict -> UNet2DConditionModel names (other keys are left
    alone); a text_time config (SDXL) also takes ``label_emb.0.*`` as ``add_embedding.*``."""
    return _apply(ldm, _unet_plan(unet_config), "UNet", (UNET_PREFIX,), source)


def convert_vae(ldm: Mapping[str, torch.Tensor], vae_config: Mapping, *, source: str = "the checkpoint") -> dict:
    """``first_stage_model.*`` of an LDM state dict -> AutoencoderKL names (mid-block attention 1x1 convs -> linear)."""
    return _apply(ldm, _vae_plan(vae_config), "VAE", (VAE_PREFIX,), source)


def convert_text_encoder(
    ldm: Mapping[str, torch.Tensor],
    text_config: Mapping,
    family: str,
    *,
    source: str = "the checkpoint",
    component: str = "text_encoder",
) -> dict:
    """One text tower of ``family`` -> transformers names: HF CLIP names for sd1 families, the OpenCLIP layout for sd2
    ones; for SDXL, ``component`` "text_encoder" (CLIP ViT-L, base only) or "text_encoder_2" (OpenCLIP bigG with its
    projection, as CLIPTextModelWithProjection).

    SD 2 OpenCLIP resblocks past the config's ``num_hidden_layers`` are dropped, as diffusers does (SD 2 conditions
    on the penultimate layer, so its diffusers text encoder has one layer fewer than the file). SDXL keeps them all.
    """
    if family not in _FAMILIES:
        raise CheckpointError(f"family {family!r} is unknown; accepted families: {', '.join(FAMILIES)}.")
    fam = _FAMILIES[family]
    tower = fam.tower(component)
    if tower is None:
        accepted = ", ".join(t.component for t in fam.towers)
        raise CheckpointError(f"a {family} checkpoint has no {component}; accepted: {accepted}.")
    plan = _text_plan(text_config, tower, ldm)
    cut = tower.layout == "open_clip" and not tower.projection
    layers = _text_cfg(text_config)["num_hidden_layers"] if cut else None
    namespace = tower.prefix if fam.sdxl else "cond_stage_model."
    label = "text encoder" if component == "text_encoder" else component.replace("_", " ")
    return _apply(ldm, plan, label, (namespace,), source, layers)


# ---------------------------------------------------------------------------------------------------------------------
# Config consistency


def _config_mismatches(shapes: Mapping[str, tuple], configs: Mapping, family: str) -> list[str]:
    """Disagreements between a handful of key tensors and what the configs imply (empty when they agree)."""
    fam = _FAMILIES[family]
    unet, vae = _unet_cfg(configs["unet"], None), _vae_cfg(configs["vae"])  # the family's rules: once shapes agree
    found: list[str] = []

    def expect(actual, wanted, message: str) -> None:  # message: "<what> has {a} <unit>, the config says {w}"
        if actual is not None and actual != wanted:
            found.append(message.format(a=actual, w=wanted))

    def dims(key: str, ndim: int) -> tuple | None:
        value = shapes.get(key)
        return tuple(value) if value is not None and len(value) == ndim else None

    outs = list(unet["block_out_channels"])
    if conv_in := dims(CONV_IN_KEY, 4):
        expect(conv_in[0], outs[0], "conv_in has {a} output channels, the config says {w}")
        expect(conv_in[1], unet["in_channels"], "conv_in has {a} input channels, the config says {w}")
    _per_block(unet["layers_per_block"], len(outs), "layers_per_block")  # one number or one per block
    structure = UNetBlocks.from_config(unet)
    blocks = {int(m[1]) for k in shapes if (m := re.match(re.escape(UNET_PREFIX) + r"input_blocks\.(\d+)\.", k))}
    expect(len(blocks), structure.input_blocks, "the UNet has {a} input blocks, the config implies {w}")
    if first := next((m for m in structure.modules() if m.kind == "attention" and m.part == "down"), None):
        i, kind = first.block, unet["down_block_types"][first.block]
        to_k = dims(f"{UNET_PREFIX}{first.ldm}.transformer_blocks.0.attn2.to_k.weight", 2)
        if to_k is None:
            k = first.ldm.split(".")[1]
            found.append(f"input block {k} has no cross-attention, the config says {kind} for down block {i}")
        else:
            expect(
                to_k[1],
                unet["cross_attention_dim"],
                "cross-attention to_k takes {a} features, the config's cross_attention_dim is {w}",
            )
            expect(to_k[0], outs[i], f"down block {i}'s attention has {{a}} channels, the config says {{w}}")
    if vae_in := dims(VAE_PREFIX + "encoder.conv_in.weight", 4):
        expect(
            vae_in[0], vae["block_out_channels"][0], "the VAE's first conv has {a} output channels, the config says {w}"
        )
        expect(vae_in[1], vae["in_channels"], "the VAE's first conv has {a} input channels, the config says {w}")
    if dec_in := dims(VAE_PREFIX + "decoder.conv_in.weight", 4):
        expect(dec_in[1], vae["latent_channels"], "the VAE decoder takes {a} latent channels, the config says {w}")
    added = dims(ADD_EMBEDDING_KEY, 2)
    if added and unet["addition_embed_type"] != "text_time":
        found.append(f"the UNet has an added embedding of {added[1]} features (SDXL), the config has none")
    elif added:
        wanted = unet["projection_class_embeddings_input_dim"]
        expect(added[1], wanted, "the UNet's added embedding takes {a} features, the config says {w}")
    elif fam.sdxl and unet["addition_embed_type"] == "text_time":
        found.append(f"the UNet has no added embedding ({ADD_EMBEDDING_KEY}), the config says text_time")
    for tower in fam.towers:
        if tower.component in configs:
            found += _tower_mismatches(shapes, _text_cfg(configs[tower.component]), tower)
    if not found:
        _unet_cfg(configs["unet"], fam.sdxl)  # SD 1.x/2.x: no added embedding; SDXL: text_time with its widths
    return found


def _tower_mismatches(shapes: Mapping[str, tuple], text: Mapping, tower: _Tower) -> list[str]:
    """Disagreements between one text tower's embedding / layer count in the file and its config."""
    if tower.layout == "clip":
        p = _clip_prefix(shapes, tower.prefix)
        token = shapes.get(p + "embeddings.token_embedding.weight")
        layer_re = re.compile(re.escape(p) + r"encoder\.layers\.(\d+)\.")
    else:
        token = shapes.get(tower.prefix + "token_embedding.weight")
        layer_re = re.compile(re.escape(tower.prefix) + r"transformer\.resblocks\.(\d+)\.")
    name = "text encoder" if tower.component == "text_encoder" else tower.component.replace("_", " ")
    found = []
    if token is not None and len(token) == 2:
        if token[1] != text["hidden_size"]:
            found.append(f"the {name}'s token embedding is {token[1]} wide, the config says {text['hidden_size']}")
        if token[0] != text["vocab_size"]:
            found.append(f"the {name}'s vocabulary has {token[0]} tokens, the config says {text['vocab_size']}")
    layers = len({int(m[1]) for k in shapes if (m := layer_re.match(k))})
    wanted = text["num_hidden_layers"]
    cut = tower.layout == "open_clip" and not tower.projection  # SD 2 files carry one layer more than diffusers keeps
    if layers and (layers < wanted if cut else layers != wanted):
        found.append(f"the {name} has {layers} layers, the config says {wanted}")
    return found


def check_config(
    shapes: Mapping[str, tuple[int, ...]],
    guess: LayoutGuess,
    configs: Mapping,
    *,
    source: str = "the checkpoint",
    label: str | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless a few key tensors agree with ``configs`` (built-in or from --config).

    Checks conv_in channels, the number of UNet input blocks, the first down-block cross-attention's to_k, SDXL's
    added-embedding width, the VAE's first convolutions, and each text encoder's embedding width, vocabulary and layer
    count. ``label`` names the configs in the message (default: "the <family> config").
    """
    shapes = _strip(shapes, guess.prefix)
    found = _config_mismatches(shapes, configs, guess.family)
    if found:
        label = label or f"the {guess.family} config"
        raise CheckpointError(
            f"{source} looks like {guess.family} but its shapes do not match {label} ({'; '.join(found[:3])}); "
            f"{CONFIG_HINT}."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Whole-file conversion


@dataclass
class SingleFileModel:
    """A single-file checkpoint converted to diffusers components."""

    family: str  # one of FAMILIES
    notes: list[str]  # assumptions made (to print)
    configs: dict  # config_components(family): "model_index", "unet", "vae", text encoders, "scheduler", pad tokens
    state_dicts: dict[str, dict[str, torch.Tensor]]  # "unet", "vae", "text_encoder" and/or "text_encoder_2"
    guess: LayoutGuess | None = field(default=None, repr=False)


def _unwrap(state_dict: Mapping) -> tuple[Mapping, int | None]:
    """The weights of a .ckpt-style dict (nested under "state_dict", as diffusers unwraps) and its global_step."""
    global_step = None
    while True:
        if isinstance(state_dict.get("global_step"), int):
            global_step = state_dict["global_step"]
        if not isinstance(state_dict.get("state_dict"), Mapping):
            return state_dict, global_step
        state_dict = state_dict["state_dict"]


def convert_single_file(
    state_dict: Mapping[str, torch.Tensor],
    configs: Mapping | None = None,
    *,
    source: str = "the checkpoint",
    global_step: int | None = None,
) -> SingleFileModel:
    """Convert a whole LDM / SGM single-file state dict to diffusers UNet / VAE / text encoder state dicts.

    ``configs`` (a dict shaped like :func:`builtin_configs`' result, e.g. read from a ``--config DIR`` diffusers
    folder) overrides the family's built-in configs; components it lacks come from the built-ins, and text encoders
    the detected family does not have are left out. ``source`` names the checkpoint in error messages. Raises
    :class:`CheckpointError` when the layout is not recognised, the shapes disagree with the configs, or keys are
    missing or unexplained.
    """
    state_dict, stored_step = _unwrap(state_dict)
    global_step = stored_step if global_step is None else global_step
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    guess = detect_layout(shapes, global_step=global_step, source=source)
    tensors = _strip(tensors, guess.prefix)
    fam = _FAMILIES[guess.family]
    builtin = builtin_configs(guess.family)
    if configs is None:
        chosen, label = builtin, None
        notes = [f"Configs: built-in {guess.family} ({fam.reference})."]
    else:
        names = [n for n in config_components(guess.family) if not n.endswith("_pad_token")]  # pad tokens go unsaid
        lacking = [name for name in names if name not in configs]
        chosen, label = {**builtin, **copy.deepcopy(dict(configs))}, "the given config"
        notes = []
        if lacking:
            notes.append(f"Configs not given for {', '.join(lacking)}: built-in {guess.family} ({fam.reference}) used.")
    for component, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if fam.tower(component) is None:  # e.g. a base model's --config for a refiner file: not this file's towers
            chosen.pop(component, None)
            chosen.pop(f"{tokenizer}_pad_token", None)
    if configs is None or "scheduler" not in configs:  # the prediction-type assumption rides on the built-in scheduler
        notes[:0] = guess.notes
        if "prediction_type" in chosen["scheduler"] or guess.prediction_type != "epsilon":
            chosen["scheduler"]["prediction_type"] = guess.prediction_type
    check_config(shapes, guess, chosen, source=source, label=label)
    if any(k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates") for k in tensors):
        notes.append("EMA weights (model_ema.*) ignored: the non-EMA UNet weights are used, as diffusers does.")
    converted = {
        "unet": _apply(tensors, _unet_plan(chosen["unet"], fam.sdxl), "UNet", (UNET_PREFIX,), source),
        "vae": convert_vae(tensors, chosen["vae"], source=source),
    }
    for tower in fam.towers:
        config = chosen[tower.component]
        converted[tower.component] = convert_text_encoder(
            tensors, config, guess.family, source=source, component=tower.component
        )
        if tower.layout == "open_clip" and not tower.projection:
            kept = _text_cfg(config)["num_hidden_layers"]
            dropped = sorted({int(m[1]) for k in tensors if (m := _RESBLOCK.match(k)) and int(m[1]) >= kept})
            if dropped:
                notes.append(
                    f"OpenCLIP layer(s) {', '.join(map(str, dropped))} dropped: the diffusers text encoder stops at "
                    f"the penultimate layer ({kept} layers), as SD 2 conditions on it."
                )
    text_namespaces = tuple(t.prefix for t in fam.towers) if fam.sdxl else ("cond_stage_model.",)
    leftover = [
        k for k in tensors if not k.startswith((UNET_PREFIX, VAE_PREFIX, *text_namespaces)) and not _ignorable(k)
    ]
    if leftover:
        encoders = "text encoders" if len(fam.towers) > 1 else "text encoder"
        raise CheckpointError(
            f"{source} holds {_listing(leftover)} outside the UNet, VAE and {encoders} that diffrt does not know; "
            "accepted extras are EMA copies (model_ema.*) and the noise-schedule buffers (betas, alphas_cumprod, "
            "denoiser.sigmas, ...)."
        )
    return SingleFileModel(family=guess.family, notes=notes, configs=chosen, state_dicts=converted, guess=guess)
