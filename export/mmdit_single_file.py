"""SD3 and Flux single-file checkpoints -> diffusers' parameter names, by a plan built from the transformer config.

* SD3 / SD3.5 (``sd3_medium*.safetensors``, ``sd3.5_*.safetensors``): Stability's MMDiT layout under
  ``model.diffusion_model.`` (``joint_blocks.{i}.x_block`` / ``context_block`` with fused ``attn.qkv``,
  ``attn.ln_q/ln_k``, ``attn2`` on dual-attention layers, ``adaLN_modulation.1``, ``mlp.fc1/fc2``; ``pos_embed``,
  ``x_embedder``, ``t_embedder``, ``y_embedder``, ``final_layer``), and optionally the text encoders
  (``text_encoders.clip_l.transformer.``, ``clip_g``, ``t5xxl``: transformers' own names) and the VAE
  (``first_stage_model.``, the LDM layout).
* Flux (``flux1-dev.safetensors``, ``flux1-schnell.safetensors``): Black Forest Labs' transformer alone
  (``double_blocks.{i}.img_attn.qkv``, ``single_blocks.{i}.linear1`` holding q, k, v and the MLP input, ...), with or
  without ``model.diffusion_model.``.

Fused tensors are split by rows; the final modulation (and SD3's last context modulation) store (shift, scale)
where diffusers stores (scale, shift), so their halves swap. Every tensor is a row slice of a file tensor: the
weights equal a diffusers folder's bit for bit. What the file lacks (configs, tokenizers, the other networks) comes
from the ``--config`` diffusers folder, as diffusers' ``from_single_file(config=...)`` takes it.
"""

from __future__ import annotations

from typing import Any

from ..runtime.errors import CheckpointError

PREFIX = "model.diffusion_model."
SD3_MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
FLUX_MARKER = "double_blocks.0.img_attn.norm.key_norm.scale"
TEXT_PREFIXES = {
    "text_encoder": "text_encoders.clip_l.transformer.",
    "text_encoder_2": "text_encoders.clip_g.transformer.",
    "text_encoder_3": "text_encoders.t5xxl.transformer.",
}
VAE_PREFIX = "first_stage_model."

Part = tuple[str, int, int, bool]
"""(file key, first row, rows (0: all), swap the two halves)."""


def family(keys) -> str | None:
    """ "sd3" or "flux" for a checkpoint holding one of those transformers, else None."""
    names = {k.removeprefix(PREFIX) for k in keys}
    if SD3_MARKER in names:
        return "sd3"
    if FLUX_MARKER in names:
        return "flux"
    return None


def _linear(plan: dict[str, Part], ours: str, theirs: str, start: int = 0, rows: int = 0, swap: bool = False) -> None:
    for kind in ("weight", "bias"):
        plan[f"{ours}.{kind}"] = (f"{theirs}.{kind}", start, rows, swap)


def _qkv(plan: dict[str, Part], targets: list[str], theirs: str, widths: list[int], bias: bool = True) -> None:
    start = 0
    for ours, rows in zip(targets, widths, strict=True):
        for kind in ("weight", "bias") if bias else ("weight",):
            plan[f"{ours}.{kind}"] = (f"{theirs}.{kind}", start, rows, False)
        start += rows


def sd3_plan(config: dict[str, Any]) -> dict[str, Part]:
    """diffusers key -> where it is in Stability's SD3 checkpoint (keys without ``model.diffusion_model.``)."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    layers = int(config["num_layers"])
    dual = set(config.get("dual_attention_layers") or ())
    qk = config.get("qk_norm") is not None
    plan: dict[str, Part] = {"pos_embed.pos_embed": ("pos_embed", 0, 0, False)}
    _linear(plan, "pos_embed.proj", "x_embedder.proj")
    for ours, theirs in (("timestep_embedder", "t_embedder"), ("text_embedder", "y_embedder")):
        _linear(plan, f"time_text_embed.{ours}.linear_1", f"{theirs}.mlp.0")
        _linear(plan, f"time_text_embed.{ours}.linear_2", f"{theirs}.mlp.2")
    _linear(plan, "context_embedder", "context_embedder")
    for i in range(layers):
        t, x, c = f"transformer_blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        last = i == layers - 1
        _qkv(plan, [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v"], f"{x}.attn.qkv", [dim] * 3)
        _qkv(plan, [f"{t}.attn.add_{p}_proj" for p in "qkv"], f"{c}.attn.qkv", [dim] * 3)
        _linear(plan, f"{t}.attn.to_out.0", f"{x}.attn.proj")
        _linear(plan, f"{t}.norm1.linear", f"{x}.adaLN_modulation.1")
        _linear(plan, f"{t}.norm1_context.linear", f"{c}.adaLN_modulation.1", swap=last)
        _linear(plan, f"{t}.ff.net.0.proj", f"{x}.mlp.fc1")
        _linear(plan, f"{t}.ff.net.2", f"{x}.mlp.fc2")
        if not last:
            _linear(plan, f"{t}.attn.to_add_out", f"{c}.attn.proj")
            _linear(plan, f"{t}.ff_context.net.0.proj", f"{c}.mlp.fc1")
            _linear(plan, f"{t}.ff_context.net.2", f"{c}.mlp.fc2")
        if qk:
            for ours, theirs in (("norm_q", f"{x}.attn.ln_q"), ("norm_k", f"{x}.attn.ln_k"),
                                 ("norm_added_q", f"{c}.attn.ln_q"), ("norm_added_k", f"{c}.attn.ln_k")):  # fmt: skip
                plan[f"{t}.attn.{ours}.weight"] = (f"{theirs}.weight", 0, 0, False)
        if i in dual:
            _qkv(plan, [f"{t}.attn2.to_{p}" for p in "qkv"], f"{x}.attn2.qkv", [dim] * 3)
            _linear(plan, f"{t}.attn2.to_out.0", f"{x}.attn2.proj")
            if qk:
                plan[f"{t}.attn2.norm_q.weight"] = (f"{x}.attn2.ln_q.weight", 0, 0, False)
                plan[f"{t}.attn2.norm_k.weight"] = (f"{x}.attn2.ln_k.weight", 0, 0, False)
    _linear(plan, "norm_out.linear", "final_layer.adaLN_modulation.1", swap=True)
    _linear(plan, "proj_out", "final_layer.linear")
    return plan


def flux_plan(config: dict[str, Any]) -> dict[str, Part]:
    """diffusers key -> where it is in Black Forest Labs' Flux transformer file."""
    dim = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 128))
    plan: dict[str, Part] = {}
    _linear(plan, "x_embedder", "img_in")
    _linear(plan, "context_embedder", "txt_in")
    embedders = [("timestep_embedder", "time_in"), ("text_embedder", "vector_in")]
    if config.get("guidance_embeds"):
        embedders.append(("guidance_embedder", "guidance_in"))
    for ours, theirs in embedders:
        _linear(plan, f"time_text_embed.{ours}.linear_1", f"{theirs}.in_layer")
        _linear(plan, f"time_text_embed.{ours}.linear_2", f"{theirs}.out_layer")
    for i in range(int(config.get("num_layers", 19))):
        t, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for ours, stream, attn in (("", "img", "to_"), ("_context", "txt", "add_")):
            _linear(plan, f"{t}.norm1{ours}.linear", f"{d}.{stream}_mod.lin")
            names = [f"{t}.attn.{attn}{p}" + ("_proj" if attn == "add_" else "") for p in "qkv"]
            _qkv(plan, names, f"{d}.{stream}_attn.qkv", [dim] * 3)
            norms = ("norm_q", "norm_k") if stream == "img" else ("norm_added_q", "norm_added_k")
            plan[f"{t}.attn.{norms[0]}.weight"] = (f"{d}.{stream}_attn.norm.query_norm.scale", 0, 0, False)
            plan[f"{t}.attn.{norms[1]}.weight"] = (f"{d}.{stream}_attn.norm.key_norm.scale", 0, 0, False)
            _linear(
                plan, f"{t}.attn.to_out.0" if stream == "img" else f"{t}.attn.to_add_out", f"{d}.{stream}_attn.proj"
            )
            _linear(plan, f"{t}.ff{ours}.net.0.proj", f"{d}.{stream}_mlp.0")
            _linear(plan, f"{t}.ff{ours}.net.2", f"{d}.{stream}_mlp.2")
    for i in range(int(config.get("num_single_layers", 38))):
        t, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        _linear(plan, f"{t}.norm.linear", f"{s}.modulation.lin")
        targets = [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v", f"{t}.proj_mlp"]
        _qkv(plan, targets, f"{s}.linear1", [dim, dim, dim, 4 * dim])
        plan[f"{t}.attn.norm_q.weight"] = (f"{s}.norm.query_norm.scale", 0, 0, False)
        plan[f"{t}.attn.norm_k.weight"] = (f"{s}.norm.key_norm.scale", 0, 0, False)
        _linear(plan, f"{t}.proj_out", f"{s}.linear2")
    _linear(plan, "norm_out.linear", "final_layer.adaLN_modulation.1", swap=True)
    _linear(plan, "proj_out", "final_layer.linear")
    return plan


def plan_for(kind: str, config: dict[str, Any]) -> dict[str, Part]:
    return sd3_plan(config) if kind == "sd3" else flux_plan(config)


def convert_transformer(state_dict: dict[str, Any], kind: str, config: dict[str, Any], where: str) -> dict[str, Any]:
    """The transformer's diffusers state dict from a single-file checkpoint's tensors (torch or NumPy)."""
    tensors = {k.removeprefix(PREFIX): v for k, v in state_dict.items() if _is_transformer(k)}
    plan = plan_for(kind, config)
    missing = sorted({part[0] for part in plan.values()} - set(tensors))
    if missing:
        raise CheckpointError(
            f"{where}: the {kind.upper()} transformer weights do not fit the --config transformer ({len(missing)} "
            f"missing, e.g. {missing[:3]}); accepted: a checkpoint of the model the --config folder describes."
        )
    unused = sorted(set(tensors) - {part[0] for part in plan.values()})
    if unused:
        raise CheckpointError(
            f"{where}: {len(unused)} transformer tensors fit no layer of the --config transformer (e.g. "
            f"{unused[:3]}); accepted: a checkpoint of the model the --config folder describes."
        )
    out = {}
    for ours, (theirs, start, rows, swap) in plan.items():
        tensor = tensors[theirs]
        if rows:
            if start + rows > tensor.shape[0]:
                raise CheckpointError(
                    f"{where}: {theirs} has {tensor.shape[0]} rows; the --config transformer needs at least "
                    f"{start + rows}; accepted: a checkpoint of the model the --config folder describes."
                )
            tensor = tensor[start : start + rows]
        if swap:
            half = tensor.shape[0] // 2
            tensor = _cat(tensor[half:], tensor[:half])
        out[ours] = tensor.clone() if hasattr(tensor, "clone") else tensor.copy()
    return out


def _cat(a, b):
    if hasattr(a, "clone"):
        import torch

        return torch.cat([a, b])
    import numpy as np

    return np.concatenate([a, b])


def _is_transformer(key: str) -> bool:
    return not key.startswith(("text_encoders.", VAE_PREFIX, "cond_stage_model.", "conditioner."))


def split_parts(state_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The text encoders' and the VAE's tensors a single file carries, by component (prefixes removed)."""
    parts: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        for component, prefix in TEXT_PREFIXES.items():
            if key.startswith(prefix):
                parts.setdefault(component, {})[key[len(prefix) :]] = value
        if key.startswith(VAE_PREFIX):
            parts.setdefault("vae", {})[key] = value
    return parts
