"""Flux's denoiser (diffusers' ``FluxTransformer2DModel``: dev, schnell and their fine-tunes), written for ONNX export.

Double-stream blocks keep text and image tokens apart (own projections and modulation, one joint attention over
[text; image], text first); single-stream blocks then run the concatenated tokens through attention and an MLP in
parallel. Queries and keys get RMS norm and rotary positions: the rotary tables (cos, sin per token: text rows then
image rows) are graph inputs, computed by the runtime in NumPy from ``txt_ids`` / ``img_ids`` as diffusers'
``FluxPosEmbed`` computes them (:func:`diffrt.runtime.pipelines.flux_positions.rotary_tables`).

dev-style models embed the guidance scale (``guidance_embeds``: a ``guidance`` input); schnell-style ones do not.
``timestep`` and ``guidance`` come in as diffusers' pipelines pass them (divided by 1000); the model multiplies by
1000 as diffusers' does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cogvideox_transformer import FeedForward, apply_rotary
from .config import ConfigError
from .mmdit import AdaLayerNormContinuous, AdaLayerNormZero, JointAttention, TimestepTextEmbedding, attention


def rotate(q: torch.Tensor, k: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]):
    cos, sin = rotary
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class FluxTransformerBlock(nn.Module):
    """diffusers' ``FluxTransformerBlock`` (double stream): returns (text, image) tokens."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, heads, head_dim, "rms_norm", 1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, "tanh")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim, "tanh")

    def forward(self, hidden: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rotary):
        norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden, temb)
        norm_text, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(text, temb)

        text_tokens = text.shape[1]
        q, k, v = self.attn.project(norm_hidden)
        tq, tk, tv = self.attn.project(norm_text, added=True)
        q, k = rotate(torch.cat([tq, q], dim=2), torch.cat([tk, k], dim=2), rotary)
        out = attention(q, k, torch.cat([tv, v], dim=2))
        attn_text, attn_hidden = out[:, :text_tokens], out[:, text_tokens:]

        hidden = hidden + gate_msa.unsqueeze(1) * self.attn.to_out[0](attn_hidden)
        norm_hidden = self.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * self.ff(norm_hidden)

        text = text + c_gate_msa.unsqueeze(1) * self.attn.to_add_out(attn_text)
        norm_text = self.norm2_context(text) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        text = text + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_text)
        return text, hidden


class FluxSingleTransformerBlock(nn.Module):
    """diffusers' ``FluxSingleTransformerBlock`` over the joint [text; image] tokens: ``proj_out`` of attention and
    MLP outputs side by side, gated, added to the input."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        mlp = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZero(dim, 3)
        self.proj_mlp = nn.Linear(dim, mlp)
        self.proj_out = nn.Linear(dim + mlp, dim)
        self.attn = JointAttention(dim, heads, head_dim, "rms_norm", 1e-6, added=False, pre_only=True)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor, rotary) -> torch.Tensor:
        normed, gate = self.norm(tokens, temb)
        mlp = F.gelu(self.proj_mlp(normed), approximate="tanh")
        q, k, v = self.attn.project(normed)
        q, k = rotate(q, k, rotary)
        out = torch.cat([attention(q, k, v), mlp], dim=2)
        return tokens + gate.unsqueeze(1) * self.proj_out(out)


class FluxTransformer2DModel(nn.Module):
    """diffusers' ``FluxTransformer2DModel``, built from its ``config.json``, with diffusers' parameter names.

    :meth:`forward` takes the packed latents ``hidden_states`` (B, tokens, in_channels), ``encoder_hidden_states``
    (B, S, joint_attention_dim), ``pooled_projections`` (B, pooled_projection_dim), ``timestep`` (B,) in [0, 1],
    ``rotary_cos`` / ``rotary_sin`` (S + tokens, attention_head_dim) and, with ``guidance_embeds``, ``guidance``
    (B,); it returns the prediction (B, tokens, out_channels).
    """

    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
        **ignored: Any,
    ):
        super().__init__()
        if patch_size != 1:
            raise ConfigError(f"patch_size={patch_size} is not supported; accepted: 1 (every released Flux).")
        if sum(axes_dims_rope) != attention_head_dim:
            raise ConfigError(
                f"axes_dims_rope={list(axes_dims_rope)} sums to {sum(axes_dims_rope)}; it must equal "
                f"attention_head_dim={attention_head_dim} (the rotary tables span each head)."
            )
        dim = num_attention_heads * attention_head_dim
        self.guidance_embeds = bool(guidance_embeds)
        self.out_channels = out_channels or in_channels
        self.time_text_embed = TimestepTextEmbedding(dim, pooled_projection_dim, guidance=self.guidance_embeds)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [FluxSingleTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FluxTransformer2DModel:
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        rotary_cos: torch.Tensor,
        rotary_sin: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.guidance_embeds and guidance is None:
            raise ConfigError("this transformer embeds the guidance scale (guidance_embeds): pass guidance.")
        hidden = self.x_embedder(hidden_states)
        dtype = hidden.dtype
        timestep = timestep.reshape(-1).to(dtype) * 1000
        if self.guidance_embeds:
            guidance = guidance.reshape(-1).to(dtype) * 1000
        temb = self.time_text_embed(timestep, pooled_projections, guidance if self.guidance_embeds else None)
        text = self.context_embedder(encoder_hidden_states)
        rotary = (rotary_cos.float(), rotary_sin.float())
        for block in self.transformer_blocks:
            text, hidden = block(hidden, text, temb, rotary)
        text_tokens = text.shape[1]
        tokens = torch.cat([text, hidden], dim=1)
        for block in self.single_transformer_blocks:
            tokens = block(tokens, temb, rotary)
        hidden = tokens[:, text_tokens:]
        return self.proj_out(self.norm_out(hidden, temb))


__all__ = ["FluxTransformer2DModel"]
