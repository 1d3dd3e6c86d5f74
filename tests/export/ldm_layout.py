"""Diffusers names -> the original LDM / SGM (SDXL) single-file layouts: the inverse of ``diffrt.export.single_file``.

Written independently of the module under test (rename rules applied name by name from the diffusers side, where the
module lists names from the config), so each checks the other; diffusers' own ``from_single_file`` checks both.
Works on real tensors and on meta tensors (shapes only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # fmt: skip
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "posterior_variance")


def one_sentence(message: str) -> bool:
    """Whether an error message is one sentence (what diffrt promises for user-facing errors)."""
    return message.endswith(".") and ". " not in message[:-1]


def shapes_of(state_dict: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _resnet(rest: str) -> str:
    module, _, param = rest.rpartition(".")
    return f"{_RESNET[module]}.{param}"


def unet_to_ldm(sd: dict, layers_per_block: int) -> dict:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*``."""
    per = layers_per_block + 1  # LDM counts a downsampler (or, going up, one extra resnet) per level
    up_with_attention = {int(m[1]) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for name, value in sd.items():
        module, _, param = name.rpartition(".")
        if module in _UNET_FIXED:
            new = f"{_UNET_FIXED[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            n = 1 + i * per + j
            new = f"input_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
            new = f"input_blocks.{1 + int(m[1]) * per + layers_per_block}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", name):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            n = i * per + j
            new = f"output_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
            i = int(m[1])
            new = f"output_blocks.{i * per + layers_per_block}.{2 if i in up_with_attention else 1}.conv.{m[2]}"
        else:
            raise AssertionError(f"no LDM name for UNet parameter {name}")
        out[f"model.diffusion_model.{new}"] = value
    return out


def vae_to_ldm(sd: dict, num_blocks: int) -> dict:
    """AutoencoderKL state dict -> ``first_stage_model.*`` (mid-block attention linears as 1x1 convs)."""
    out = {}
    for name, value in sd.items():
        new = name.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", new):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", new):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", new):
            level = num_blocks - 1 - int(m[1])
            new = f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", new):
            new = f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", new):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)
        out[f"first_stage_model.{new}"] = value
    return out


def clip_to_ldm(sd: dict, text_model_segment: bool = True, prefix: str = "cond_stage_model.transformer.") -> dict:
    """transformers CLIPTextModel state dict -> ``cond_stage_model.transformer.*`` (SD 1.x; SDXL's first encoder under
    ``conditioner.embedders.0.transformer.``), with position_ids."""
    prefix += "text_model." if text_model_segment else ""
    out = {prefix + name.removeprefix("text_model."): value for name, value in sd.items()}
    width = sd[next(k for k in sd if k.endswith("position_embedding.weight"))].shape[0]
    out[prefix + "embeddings.position_ids"] = torch.arange(width).unsqueeze(0)
    return out


def open_clip_to_ldm(
    sd: dict, extra_layer: bool = True, seed: int = 0, prefix: str = "cond_stage_model.model."
) -> dict:
    """CLIPTextModel state dict -> OpenCLIP ``cond_stage_model.model.*`` (SD 2.x): fused in_proj, and like real SD 2
    files one more resblock than the diffusers text encoder keeps, a text_projection and a logit_scale.

    A CLIPTextModelWithProjection state dict (SDXL's bigG, ``prefix`` under ``conditioner.embedders.``) keeps its
    layers as they are; its ``text_projection.weight`` is stored transposed, as OpenCLIP multiplies ``x @ P``."""
    p = prefix
    projection = sd.get("text_projection.weight")
    sd = {k.removeprefix("text_model."): v for k, v in sd.items() if k != "text_projection.weight"}
    out = {
        p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        p + "positional_embedding": sd["embeddings.position_embedding.weight"],
        p + "ln_final.weight": sd["final_layer_norm.weight"],
        p + "ln_final.bias": sd["final_layer_norm.bias"],
    }
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for ours, theirs in _OPEN_CLIP.items():
            for param in ("weight", "bias"):
                out[f"{dst}{theirs}.{param}"] = sd[f"{src}{ours}.{param}"]
        for param in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{x}_proj.{param}"] for x in "qkv"]
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(qkv, dim=0)
    generator = torch.Generator().manual_seed(seed)

    def dummy(like: torch.Tensor) -> torch.Tensor:
        if like.device.type == "meta":
            return torch.empty_like(like)
        return torch.randn(like.shape, generator=generator, dtype=like.dtype)

    if projection is not None:
        out[p + "text_projection"] = projection.t().contiguous()
        out[p + "logit_scale"] = dummy(projection.new_empty(()))
    elif extra_layer:
        last, new = f"{p}transformer.resblocks.{layers[-1]}.", f"{p}transformer.resblocks.{layers[-1] + 1}."
        for key in [k for k in out if k.startswith(last)]:
            out[new + key[len(last) :]] = dummy(out[key])
        width = out[p + "ln_final.weight"]
        out[p + "text_projection"] = dummy(width.new_empty(width.shape[0], width.shape[0]))
        out[p + "logit_scale"] = dummy(width.new_empty(()))
    return out


def schedule_extras(device: str = "cpu") -> dict:
    """What LDM training code leaves in a checkpoint besides the three models: noise-schedule buffers, EMA state."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, device=device) ** 2
    extras = {name: betas.clone() for name in SCHEDULE_BUFFERS}
    extras["model_ema.decay"] = torch.tensor(0.9999, device=device)
    extras["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32, device=device)
    return extras


def components_to_ldm(
    unet: dict,
    vae: dict,
    text_encoder: dict,
    unet_config: dict,
    vae_config: dict,
    text_layout: str,
    *,
    extras: bool = True,
    text_model_segment: bool = True,
) -> dict:
    """Three diffusers state dicts -> one LDM single-file state dict."""
    sd = unet_to_ldm(unet, unet_config.get("layers_per_block", 2))
    sd.update(vae_to_ldm(vae, len(vae_config["block_out_channels"])))
    if text_layout == "clip":
        sd.update(clip_to_ldm(text_encoder, text_model_segment))
    else:
        sd.update(open_clip_to_ldm(text_encoder, extra_layer=extras))
    if extras:
        device = next(iter(unet.values())).device.type
        sd.update(schedule_extras(device))
    return sd


def read_configs(folder: Path) -> dict:
    """The configs a ``--config DIR`` diffusers folder holds, shaped like ``builtin_configs``' result."""
    folder = Path(folder)
    files = {
        "model_index": "model_index.json",
        "unet": "unet/config.json",
        "vae": "vae/config.json",
        "text_encoder": "text_encoder/config.json",
        "scheduler": "scheduler/scheduler_config.json",
    }
    return {name: json.loads((folder / path).read_text()) for name, path in files.items()}


def folder_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The unet / vae / text_encoder weights of a diffusers folder, as saved."""
    folder = Path(folder)
    return {
        "unet": load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
        "vae": load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
        "text_encoder": load_file(folder / "text_encoder" / "model.safetensors"),
    }


def folder_to_ldm(folder: Path, text_layout: str, **options) -> dict[str, torch.Tensor]:
    """A saved diffusers Stable Diffusion folder -> an LDM single-file state dict."""
    configs, weights = read_configs(folder), folder_weights(folder)
    return components_to_ldm(
        weights["unet"],
        weights["vae"],
        weights["text_encoder"],
        configs["unet"],
        configs["vae"],
        text_layout,
        **options,
    )


def write_single_file(folder: Path, path: Path, text_layout: str, **options) -> Path:
    """Write ``folder`` as one LDM-layout ``.safetensors`` file at ``path``."""
    sd = folder_to_ldm(folder, text_layout, **options)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return Path(path)


# --- SDXL (Stability's SGM layout) ------------------------------------------------------------------------------------

SDXL_CLIP = "conditioner.embedders.0.transformer."  # base: CLIP ViT-L in HF names
SDXL_BIG_G = "conditioner.embedders.1.model."  # base: OpenCLIP ViT-bigG
REFINER_BIG_G = "conditioner.embedders.0.model."  # refiner: OpenCLIP ViT-bigG, its only text tower
SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def sdxl_folder_weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The networks of a saved SDXL diffusers folder, as saved (a refiner has no text_encoder)."""
    folder = Path(folder)
    files = {
        "unet": "unet/diffusion_pytorch_model.safetensors",
        "vae": "vae/diffusion_pytorch_model.safetensors",
        "text_encoder": "text_encoder/model.safetensors",
        "text_encoder_2": "text_encoder_2/model.safetensors",
    }
    return {name: load_file(folder / path) for name, path in files.items() if (folder / path).is_file()}


def sdxl_components_to_sgm(weights: dict, unet_config: dict, vae_config: dict, *, extras: bool = True) -> dict:
    """SDXL diffusers state dicts ("unet", "vae", "text_encoder_2", and "text_encoder" for a base model) -> one SGM
    single-file state dict: the base's CLIP ViT-L under embedders.0 and bigG under embedders.1, the refiner's bigG
    under embedders.0; with ``extras``, SGM's denoiser.sigmas buffer and the towers' position_ids / logit_scale."""
    sd = unet_to_ldm(weights["unet"], unet_config.get("layers_per_block", 2))
    sd.update(vae_to_ldm(weights["vae"], len(vae_config["block_out_channels"])))
    if "text_encoder" in weights:
        clip = clip_to_ldm(weights["text_encoder"], prefix=SDXL_CLIP)
        if not extras:
            clip = {k: v for k, v in clip.items() if not k.endswith("position_ids")}
        sd.update(clip)
        big_g = SDXL_BIG_G
    else:
        big_g = REFINER_BIG_G
    tower = open_clip_to_ldm(weights["text_encoder_2"], prefix=big_g)
    sd.update(tower if extras else {k: v for k, v in tower.items() if not k.endswith("logit_scale")})
    if extras:
        like = next(iter(weights["unet"].values()))
        sd["denoiser.sigmas"] = torch.linspace(0.03, 14.6, 1000, device=like.device)
    return sd


def sdxl_folder_to_sgm(folder: Path, **options) -> dict[str, torch.Tensor]:
    """A saved SDXL diffusers folder (base, inpainting or refiner) -> an SGM single-file state dict."""
    folder = Path(folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    return sdxl_components_to_sgm(sdxl_folder_weights(folder), unet_config, vae_config, **options)


def write_sdxl_single_file(folder: Path, path: Path, **options) -> Path:
    """Write the SDXL ``folder`` as one SGM-layout ``.safetensors`` file at ``path``."""
    sd = sdxl_folder_to_sgm(folder, **options)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return Path(path)
