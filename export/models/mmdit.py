"""What SD3's and Flux's transformers share (MMDiT): adaptive LayerNorms driven by the timestep embedding, RMS norm
of queries and keys, the timestep + pooled-text embedding, and joint attention over text and image tokens.

Names follow diffusers (``norm1.linear``, ``attn.add_q_proj``, ``time_text_embed.timestep_embedder.linear_1``, ...)
so diffusers' state dicts load with ``strict=True``. Attention is written out as ``softmax(q k^T / sqrt(d)) v`` on
(B, H, N, D) tensors, which traces to plain MatMul / Softmax nodes (ONNX Runtime's attention fusion finds them).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import check_choice
from .embeddings import TimestepEmbedding, Timesteps

QK_NORMS = (None, "rms_norm")


class RMSNorm(nn.Module):
    """diffusers' ``RMSNorm`` (and torch's, which Flux uses): ``x * rsqrt(mean(x^2) + eps) * weight``, the mean taken
    in float32."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return x if self.weight is None else x * self.weight


def qk_norm(kind: str | None, head_dim: int, eps: float) -> nn.Module | None:
    check_choice("qk_norm", kind, QK_NORMS)
    return None if kind is None else RMSNorm(head_dim, eps)


class AdaLayerNormZero(nn.Module):
    """``norm(x) * (1 + scale) + shift`` with six (or, SD3.5's dual-attention ``SD35AdaLayerNormZeroX``, nine; Flux's
    single blocks, three) modulation vectors from ``linear(silu(temb))``; returns the normed input and the rest."""

    def __init__(self, dim: int, chunks: int = 6):
        super().__init__()
        self.chunks = chunks
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = self.linear(self.silu(temb)).chunk(self.chunks, dim=1)
        shift, scale = parts[0], parts[1]
        normed = self.norm(x)
        out = normed * (1 + scale[:, None]) + shift[:, None]
        if self.chunks == 9:  # the second attention's input from the same norm (SD3.5)
            second = normed * (1 + parts[7][:, None]) + parts[6][:, None]
            return (out, parts[2], parts[3], parts[4], parts[5], second, parts[8])
        return (out, *parts[2:])


class AdaLayerNormContinuous(nn.Module):
    """diffusers' ``AdaLayerNormContinuous`` without affine: ``norm(x) * (1 + scale) + shift``, (scale, shift) from
    ``linear(silu(conditioning))`` in that order."""

    def __init__(self, dim: int, conditioning_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(conditioning)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class TextProjection(nn.Module):
    """diffusers' ``PixArtAlphaTextProjection`` with SiLU: ``linear_2(silu(linear_1(x)))``."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class TimestepTextEmbedding(nn.Module):
    """diffusers' ``CombinedTimestepTextProjEmbeddings`` and, with ``guidance``, ``CombinedTimestepGuidanceText
    ProjEmbeddings``: embedding(timestep) [+ embedding(guidance)] + projection(pooled text)."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool = False):
        super().__init__()
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(256, dim)
        self.guidance_embedder = TimestepEmbedding(256, dim) if guidance else None
        self.text_embedder = TextProjection(pooled_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor, guidance: torch.Tensor | None = None):
        emb = self.timestep_embedder(self.time_proj(timestep).to(pooled.dtype))
        if self.guidance_embedder is not None:
            emb = emb + self.guidance_embedder(self.time_proj(guidance).to(pooled.dtype))
        return emb + self.text_embedder(pooled)


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v of (B, H, N, D) tensors, returned as (B, N, H*D)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = torch.matmul(scores.softmax(dim=-1), v)
    return out.transpose(1, 2).flatten(2)


class JointAttention(nn.Module):
    """diffusers' ``Attention`` as SD3 and Flux build it: image projections (``to_q/k/v``, ``to_out.0``), text
    ("added") projections (``add_q/k/v_proj``, ``to_add_out``), optional RMS norm of each head's queries and keys.

    ``context_pre_only`` (SD3's last block): the text outputs are not projected (and not used). ``pre_only`` (Flux's
    single blocks): no output projection at all. Without ``added``: plain self-attention (SD3.5's ``attn2``, Flux's
    single blocks)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        qk_norm_kind: str | None,
        eps: float,
        added: bool = True,
        context_pre_only: bool = False,
        pre_only: bool = False,
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_q = qk_norm(qk_norm_kind, head_dim, eps)
        self.norm_k = qk_norm(qk_norm_kind, head_dim, eps)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = None if pre_only else nn.ModuleList([nn.Linear(inner, dim)])
        self.added = added
        if added:
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.norm_added_q = qk_norm(qk_norm_kind, head_dim, eps)
            self.norm_added_k = qk_norm(qk_norm_kind, head_dim, eps)
            self.to_add_out = None if context_pre_only else nn.Linear(inner, dim)

    def project(self, x: torch.Tensor, added: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) of tokens ``x`` as (B, H, N, D), queries and keys normed."""
        if added:
            q, k, v = self.add_q_proj(x), self.add_k_proj(x), self.add_v_proj(x)
            norm_q, norm_k = self.norm_added_q, self.norm_added_k
        else:
            q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
            norm_q, norm_k = self.norm_q, self.norm_k
        q, k, v = heads_first(q, self.heads), heads_first(k, self.heads), heads_first(v, self.heads)
        if norm_q is not None:
            q = norm_q(q)
        if norm_k is not None:
            k = norm_k(k)
        return q, k, v


__all__ = [
    "AdaLayerNormContinuous",
    "AdaLayerNormZero",
    "JointAttention",
    "RMSNorm",
    "TimestepTextEmbedding",
    "attention",
    "heads_first",
]
