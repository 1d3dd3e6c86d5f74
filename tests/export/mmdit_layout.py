"""Diffusers names -> Stability's SD3 and Black Forest Labs' Flux single-file layouts: the inverse of
``diffrt.export.mmdit_single_file``, written independently of it (name by name from the diffusers side), so each
checks the other; diffusers' own ``from_single_file`` checks both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from ldm_layout import vae_to_ldm
from safetensors.torch import load_file, save_file

SD3_BLOCK = {
    "attn.to_q": ("x", "attn.qkv", 0), "attn.to_k": ("x", "attn.qkv", 1), "attn.to_v": ("x", "attn.qkv", 2),
    "attn.add_q_proj": ("c", "attn.qkv", 0), "attn.add_k_proj": ("c", "attn.qkv", 1),
    "attn.add_v_proj": ("c", "attn.qkv", 2), "attn2.to_q": ("x", "attn2.qkv", 0),
    "attn2.to_k": ("x", "attn2.qkv", 1), "attn2.to_v": ("x", "attn2.qkv", 2),
    "attn.to_out.0": ("x", "attn.proj", None), "attn.to_add_out": ("c", "attn.proj", None),
    "attn2.to_out.0": ("x", "attn2.proj", None), "attn.norm_q": ("x", "attn.ln_q", None),
    "attn.norm_k": ("x", "attn.ln_k", None), "attn.norm_added_q": ("c", "attn.ln_q", None),
    "attn.norm_added_k": ("c", "attn.ln_k", None), "attn2.norm_q": ("x", "attn2.ln_q", None),
    "attn2.norm_k": ("x", "attn2.ln_k", None), "norm1.linear": ("x", "adaLN_modulation.1", None),
    "norm1_context.linear": ("c", "adaLN_modulation.1", None), "ff.net.0.proj": ("x", "mlp.fc1", None),
    "ff.net.2": ("x", "mlp.fc2", None), "ff_context.net.0.proj": ("c", "mlp.fc1", None),
    "ff_context.net.2": ("c", "mlp.fc2", None),
}  # fmt: skip
SD3_TOP = {
    "pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "context_embedder": "context_embedder",
    "norm_out.linear": "final_layer.adaLN_modulation.1", "proj_out": "final_layer.linear",
}  # fmt: skip
FLUX_DOUBLE = {
    "norm1.linear": ("img_mod.lin", None), "norm1_context.linear": ("txt_mod.lin", None),
    "attn.to_q": ("img_attn.qkv", 0), "attn.to_k": ("img_attn.qkv", 1), "attn.to_v": ("img_attn.qkv", 2),
    "attn.add_q_proj": ("txt_attn.qkv", 0), "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2), "attn.norm_q": ("img_attn.norm.query_norm", None),
    "attn.norm_k": ("img_attn.norm.key_norm", None), "attn.norm_added_q": ("txt_attn.norm.query_norm", None),
    "attn.norm_added_k": ("txt_attn.norm.key_norm", None), "attn.to_out.0": ("img_attn.proj", None),
    "attn.to_add_out": ("txt_attn.proj", None), "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None), "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
}  # fmt: skip
FLUX_SINGLE = {
    "norm.linear": ("modulation.lin", None), "attn.to_q": ("linear1", 0), "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2), "proj_mlp": ("linear1", 3), "attn.norm_q": ("norm.query_norm", None),
    "attn.norm_k": ("norm.key_norm", None), "proj_out": ("linear2", None),
}  # fmt: skip
FLUX_TOP = {
    "x_embedder": "img_in", "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "norm_out.linear": "final_layer.adaLN_modulation.1", "proj_out": "final_layer.linear",
}  # fmt: skip


def _swap(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


def _assemble(out: dict, fused: dict) -> dict:
    for key, parts in fused.items():
        out[key] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])])
    return out


def sd3_to_original(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    out, fused = {}, {}
    for key, tensor in sd.items():
        name, kind = key.rsplit(".", 1)
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = tensor
            continue
        block = re.match(r"transformer_blocks\.(\d+)\.(.+)$", name)
        if block is None:
            target = SD3_TOP[name]
            out[f"{target}.{kind}"] = _swap(tensor) if name == "norm_out.linear" else tensor
            continue
        i, rest = int(block[1]), block[2]
        stream, part, chunk = SD3_BLOCK[rest]
        target = f"joint_blocks.{i}.{'x_block' if stream == 'x' else 'context_block'}.{part}.{kind}"
        if chunk is not None:
            fused.setdefault(target, []).append((chunk, tensor))
        else:
            last_context = rest == "norm1_context.linear" and i == layers - 1
            out[target] = _swap(tensor) if last_context else tensor
    return {f"model.diffusion_model.{k}": v for k, v in _assemble(out, fused).items()}


def flux_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, fused = {}, {}
    for key, tensor in sd.items():
        name, kind = key.rsplit(".", 1)
        block = re.match(r"(single_transformer_blocks|transformer_blocks)\.(\d+)\.(.+)$", name)
        if block is None:
            target = FLUX_TOP[name]
            out[f"{target}.{kind}"] = _swap(tensor) if name == "norm_out.linear" else tensor
            continue
        single = block[1] == "single_transformer_blocks"
        part, chunk = (FLUX_SINGLE if single else FLUX_DOUBLE)[block[3]]
        kind = "scale" if "norm" in part and part.endswith("_norm") else kind
        target = f"{'single_blocks' if single else 'double_blocks'}.{block[2]}.{part}.{kind}"
        if chunk is not None:
            fused.setdefault(target, []).append((chunk, tensor))
        else:
            out[target] = tensor
    return _assemble(out, fused)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def write_sd3_single_file(folder: Path, path: Path, text_encoders: bool = True, vae: bool = True) -> Path:
    """``folder``'s SD3 pipeline as one Stability-layout file (transformer; CLIP-L, CLIP-G, T5; the VAE)."""
    config = json.loads((folder / "transformer" / "config.json").read_text())
    state = sd3_to_original(_weights(folder / "transformer"), config["num_layers"])
    names = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}
    for component, short in names.items():
        if text_encoders and (folder / component).is_dir():
            for key, value in _weights(folder / component).items():
                state[f"text_encoders.{short}.transformer.{key}"] = value
    if vae:
        vae_config = json.loads((folder / "vae" / "config.json").read_text())
        ldm = vae_to_ldm(_weights(folder / "vae"), len(vae_config["block_out_channels"]))
        state.update({k if k.startswith("first_stage_model.") else f"first_stage_model.{k}": v for k, v in ldm.items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_flux_single_file(folder: Path, path: Path, prefix: str = "") -> Path:
    """``folder``'s Flux transformer as BFL's ``flux1-*.safetensors`` (optionally under ``model.diffusion_model.``)."""
    state = flux_to_original(_weights(folder / "transformer"))
    save_file({f"{prefix}{k}": v.contiguous() for k, v in state.items()}, str(path))
    return path
