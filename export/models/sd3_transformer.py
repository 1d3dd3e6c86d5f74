"""Stable Diffusion 3's denoiser (diffusers' ``SD3Transformer2DModel``, SD3 and SD3.5), written for ONNX export.

Image patches and text tokens run through a stack of MMDiT blocks: each stream has its own projections and
modulated LayerNorms, and one attention spans both ([image; text], image first, as diffusers concatenates). SD3.5
adds RMS norm of queries and keys (``qk_norm="rms_norm"``) and, in its first layers (``dual_attention_layers``),
a second self-attention over the image alone. The last block only reads the text (``context_pre_only``).

Positions: a fixed sin-cos table (``pos_embed.pos_embed``, a persistent buffer of ``pos_embed_max_size``^2 rows)
from which the centred crop of the image's patch grid is taken, in the graph (the crop follows the input's size).

``skip_layers`` (bool, one per block) makes a block pass its inputs through unchanged: diffusers'
``skip_layers=[...]``, which SD3.5's skip-layer guidance runs every step it applies. All False: the plain model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cogvideox_transformer import FeedForward
from .config import ConfigError
from .mmdit import AdaLayerNormContinuous, AdaLayerNormZero, JointAttention, TimestepTextEmbedding, attention


class PatchEmbed(nn.Module):
    """Strided-conv patches of the latents plus the centred crop of the sin-cos table (diffusers' ``PatchEmbed``
    with ``pos_embed_max_size``)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, pos_embed_max_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.max_size = pos_embed_max_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", torch.zeros(1, pos_embed_max_size**2, dim), persistent=True)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        rows, cols = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        x = self.proj(latent).flatten(2).transpose(1, 2)  # B, rows*cols, D
        top, left = (self.max_size - rows) // 2, (self.max_size - cols) // 2
        table = self.pos_embed.reshape(1, self.max_size, self.max_size, -1)
        crop = table[:, top : top + rows, left : left + cols, :].reshape(1, -1, table.shape[-1])
        return x + crop


class JointTransformerBlock(nn.Module):
    """diffusers' ``JointTransformerBlock``: returns (text, image) tokens; the text is None after a
    ``context_pre_only`` block."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_pre_only: bool, qk_norm, dual_attention: bool):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.dual_attention = dual_attention
        self.norm1 = AdaLayerNormZero(dim, 9 if dual_attention else 6)
        self.norm1_context = AdaLayerNormContinuous(dim, dim) if context_pre_only else AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, heads, head_dim, qk_norm, 1e-6, context_pre_only=context_pre_only)
        self.attn2 = JointAttention(dim, heads, head_dim, qk_norm, 1e-6, added=False) if dual_attention else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, "tanh")
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim, "tanh")

    def forward(self, hidden: torch.Tensor, text: torch.Tensor, temb: torch.Tensor):
        if self.dual_attention:
            norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp, norm_hidden2, gate_msa2 = self.norm1(hidden, temb)
        else:
            norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden, temb)
        if self.context_pre_only:
            norm_text = self.norm1_context(text, temb)
        else:
            norm_text, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(text, temb)

        image_tokens = hidden.shape[1]
        q, k, v = self.attn.project(norm_hidden)
        tq, tk, tv = self.attn.project(norm_text, added=True)
        out = attention(torch.cat([q, tq], dim=2), torch.cat([k, tk], dim=2), torch.cat([v, tv], dim=2))
        attn_hidden, attn_text = out[:, :image_tokens], out[:, image_tokens:]
        hidden = hidden + gate_msa.unsqueeze(1) * self.attn.to_out[0](attn_hidden)
        if self.attn2 is not None:
            q2, k2, v2 = self.attn2.project(norm_hidden2)
            hidden = hidden + gate_msa2.unsqueeze(1) * self.attn2.to_out[0](attention(q2, k2, v2))

        norm_hidden = self.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden = hidden + gate_mlp.unsqueeze(1) * self.ff(norm_hidden)
        if self.context_pre_only:
            return None, hidden
        text = text + c_gate_msa.unsqueeze(1) * self.attn.to_add_out(attn_text)
        norm_text = self.norm2_context(text) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        text = text + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_text)
        return text, hidden


class SD3Transformer2DModel(nn.Module):
    """diffusers' ``SD3Transformer2DModel``, built from its ``config.json`` (``Model(**config)``), with diffusers'
    parameter and buffer names.

    :meth:`forward` takes ``hidden_states`` (B, C, H, W) latents, ``encoder_hidden_states`` (B, S,
    joint_attention_dim), ``pooled_projections`` (B, pooled_projection_dim), ``timestep`` (B,) and optionally
    ``skip_layers`` (num_layers,) bool; it returns the prediction (B, out_channels, H, W).
    """

    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        **ignored: Any,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        if caption_projection_dim != dim:
            raise ConfigError(
                f"caption_projection_dim={caption_projection_dim} differs from num_attention_heads x "
                f"attention_head_dim = {dim}; diffusers' blocks need them equal (every released SD3 has them so)."
            )
        self.patch_size = patch_size
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.num_layers = num_layers
        self.pos_embed = PatchEmbed(patch_size, in_channels, dim, pos_embed_max_size)
        self.time_text_embed = TimestepTextEmbedding(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, caption_projection_dim)
        dual = set(dual_attention_layers or ())
        self.transformer_blocks = nn.ModuleList(
            [
                JointTransformerBlock(
                    dim, num_attention_heads, attention_head_dim, i == num_layers - 1, qk_norm, i in dual
                )
                for i in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SD3Transformer2DModel:
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        skip_layers: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, _, height, width = hidden_states.shape
        hidden = self.pos_embed(hidden_states)
        temb = self.time_text_embed(timestep.reshape(-1), pooled_projections)
        text = self.context_embedder(encoder_hidden_states)
        for i, block in enumerate(self.transformer_blocks):
            new_text, new_hidden = block(hidden, text, temb)
            if skip_layers is None:
                hidden = new_hidden
                text = new_text if new_text is not None else text
                continue
            hidden = torch.where(skip_layers[i], hidden, new_hidden)
            if new_text is not None:
                text = torch.where(skip_layers[i], text, new_text)

        hidden = self.proj_out(self.norm_out(hidden, temb))
        p = self.patch_size
        out = hidden.reshape(batch, height // p, width // p, p, p, self.out_channels)
        # n h w p q c -> n c h p w q
        return out.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.out_channels, height, width)


__all__ = ["SD3Transformer2DModel"]
