"""SD3 / Flux LoRA files in the layout diffusers loads them in, torch-free (shared by ``diffrt export --lora`` and the
run-time adapter registry).

diffusers / PEFT files already name diffusers' modules (``transformer.``, ``text_encoder.``, ``text_encoder_2.``).
kohya / sd-scripts Flux files name Black Forest Labs' modules (``lora_unet_double_blocks_{i}_img_attn_qkv``...):
fused q/k/v (and single blocks' ``linear1``, which holds the MLP input too) are split by rows into diffusers'
separate layers, each keeping the whole ``down`` half, as diffusers' converter does; ``final_layer`` modules get
scale 1 and the final modulation's (shift, scale) halves swap into diffusers' (scale, shift). One difference:
diffusers 0.42 drops the top-level modules (``img_in``, ``txt_in``, ``time_in``, ``vector_in``, ``guidance_in``,
``final_layer``: its converter leaves them without the ``transformer.`` prefix its loader filters on); diffrt
applies them, as sd-scripts does. diffusers reads no kohya SD3 files, and neither does diffrt (refused by name).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import CheckpointError
from .lora import LoraAdapter, LoraModule

FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
SD3_PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
# BFL double-block module -> diffusers module(s) under transformer_blocks.{i}
DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}


def diffusers_layout(adapter: LoraAdapter, flux: bool, config: dict, pipeline: str) -> LoraAdapter:
    """The adapter with its modules under the components and names diffusers loads them into."""
    where = f"LoRA file {getattr(adapter.path, 'name', adapter.path)}"
    allowed = {"transformer", *TEXT_ENCODERS}
    if adapter.format == "kohya":
        if "text_encoder_2" in adapter.modules or not flux:
            raise CheckpointError(
                f"{where} is a kohya-style file for "
                + ("a second text encoder" if flux else "an SD3 model")
                + f"; diffusers reads kohya files for Flux only (transformer and CLIP text encoder), not for "
                f"{pipeline}; accepted: a diffusers / PEFT LoRA file (transformer.* keys)."
            )
        modules = dict(adapter.modules)
        if "unet" in modules:
            modules["transformer"] = _bfl_to_diffusers(modules.pop("unet"), config, where)
        adapter = replace(adapter, modules=modules)
    others = sorted(set(adapter.modules) - allowed)
    if others:
        raise CheckpointError(
            f"{where} targets {', '.join(others)}; a {pipeline} adapter may target the transformer and the CLIP "
            "text encoders (text_encoder, text_encoder_2), as diffusers' load_lora_weights loads them."
        )
    return adapter


def _bfl_to_diffusers(modules: dict[str, LoraModule], config: dict, where: str) -> dict[str, LoraModule]:
    """kohya modules in BFL's layout -> kohya-style (underscore) names of diffusers' transformer layers."""
    inner = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    out: dict[str, LoraModule] = {}
    unknown = []
    for name, module in modules.items():
        for prefix, table, block in (("double_blocks_", DOUBLE, "transformer_blocks"),
                                     ("single_blocks_", SINGLE, "single_transformer_blocks")):  # fmt: skip
            if name.startswith(prefix):
                index, _, part = name[len(prefix) :].partition("_")
                if index.isdigit() and part in table:
                    rows = [inner] * 3 + ([int(inner * 4.0)] if part == "linear1" else [])
                    targets = [f"{block}.{index}.{t}" for t in table[part]]
                    out.update(_split(module, targets, rows[: len(targets)], where))
                    break
        else:
            if name not in TOP:
                unknown.append(module.source or name)
                continue
            if name.startswith("final_layer"):
                module = replace(module, alpha=None)  # diffusers drops final_layer alphas: scale 1
                if name.endswith("adaLN_modulation_1"):
                    up = np.asarray(module.up)
                    half = up.shape[0] // 2
                    module = replace(module, up=np.concatenate([up[half:], up[:half]]))  # (shift, scale) swapped
            out[TOP[name].replace(".", "_")] = module
    if unknown:
        raise CheckpointError(
            f"{where} has {len(unknown)} Flux kohya module(s) diffrt does not map to diffusers' transformer: "
            f"{', '.join(unknown[:5])}; accepted: lora_unet_double_blocks_*, lora_unet_single_blocks_* and the "
            "img_in / txt_in / time_in / vector_in / guidance_in / final_layer modules."
        )
    return out


def _split(module: LoraModule, targets: list[str], rows: list[int], where: str) -> dict[str, LoraModule]:
    """One fused module as one module per target layer: the rows of ``up`` each layer owns, the whole ``down``."""
    if len(targets) == 1:
        return {targets[0].replace(".", "_"): module}
    up = np.asarray(module.up)
    if up.shape[0] != sum(rows):
        raise CheckpointError(
            f"{where} has the fused module {module.source} with {up.shape[0]} output rows; this model's layers "
            f"take {sum(rows)} ({' + '.join(map(str, rows))}); accepted: a LoRA trained for this model."
        )
    starts = np.cumsum([0, *rows])
    return {
        target.replace(".", "_"): replace(module, up=up[starts[i] : starts[i + 1]]) for i, target in enumerate(targets)
    }
