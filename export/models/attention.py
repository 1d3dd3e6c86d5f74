"""Attention and the transformer blocks of the conditional UNet.

Attention is written out as ``softmax(q @ k^T * scale) @ v`` (no scaled_dot_product_attention, no processors), which
traces to plain MatMul / Softmax ONNX nodes. Names follow diffusers: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    scale: float,
    upcast_scores: bool,
    upcast_softmax: bool,
) -> torch.Tensor:
    """Attention of (B, Nq, H*D) queries over (B, Nk, H*D) keys and values; returns (B, Nq, H*D).

    ``upcast_scores`` computes ``q @ k^T`` in float32 (diffusers' ``upcast_attention``); ``upcast_softmax`` takes the
    softmax in float32. Either way the probabilities return to the value dtype before ``@ v``.
    """
    batch, n_q, inner = q.shape
    q = q.reshape(batch, n_q, heads, -1).transpose(1, 2)  # B, H, Nq, D
    k = k.reshape(batch, k.shape[1], heads, -1).transpose(1, 2)
    v = v.reshape(batch, v.shape[1], heads, -1).transpose(1, 2)
    if upcast_scores:
        q, k = q.float(), k.float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if upcast_scores or upcast_softmax:
        scores = scores.float()
    probs = scores.softmax(dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # B, H, Nq, D
    return out.transpose(1, 2).reshape(batch, n_q, inner)


class Attention(nn.Module):
    """Multi-head attention of a sequence over itself or, with ``cross_attention_dim``, over a context sequence."""

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList(
            [nn.Linear(inner_dim, query_dim)]
        )  # diffusers' to_out.1 is a parameter-free dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = multi_head_attention(
            self.to_q(x),
            self.to_k(context),
            self.to_v(context),
            self.heads,
            self.scale,
            self.upcast_attention,
            self.upcast_softmax,
        )
        return self.to_out[0](out)


class SpatialSelfAttention(Attention):
    """Self-attention over the pixels of a (B, C, H, W) map with GroupNorm first and a residual connection.

    The attention block of the VAE mid block and of UNet2DModel (diffusers' ``Attention`` built with
    ``residual_connection=True, upcast_softmax=True``). ``norm_groups`` None leaves the GroupNorm out.
    """

    def __init__(
        self,
        channels: int,
        dim_head: int,
        norm_groups: int | None,
        eps: float,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__(channels, heads=channels // dim_head, dim_head=dim_head, bias=True, upcast_softmax=True)
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.rescale_output_factor = rescale_output_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = x if self.group_norm is None else self.group_norm(x)
        h = h.flatten(2).transpose(1, 2)  # B, HW, C
        h = super().forward(h)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        out = h + x
        return out if self.rescale_output_factor == 1 else out / self.rescale_output_factor


class GEGLU(nn.Module):
    """A linear projection to twice the width, split in two: ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to ``mult * dim`` and back to ``dim`` (``net.0`` and ``net.2``; ``net.1`` is dropout in diffusers)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention over the text context, and a GEGLU feed-forward.

    With ``only_cross_attention`` the first attention also attends to the context instead of to itself.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        cross_attention_dim: int,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(
            dim,
            cross_attention_dim if only_cross_attention else None,
            heads=heads,
            dim_head=dim_head,
            upcast_attention=upcast_attention,
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            dim, cross_attention_dim, heads=heads, dim_head=dim_head, upcast_attention=upcast_attention
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x), context if self.only_cross_attention else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, project in (1x1 conv, or linear with ``use_linear_projection``), transformer blocks over the
    flattened pixels, project out, add the input."""

    def __init__(
        self,
        heads: int,
        dim_head: int,
        in_channels: int,
        cross_attention_dim: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    inner_dim, heads, dim_head, cross_attention_dim, only_cross_attention, upcast_attention
                )
                for _ in range(num_layers)
            ]
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.flatten(2).transpose(1, 2))  # B, HW, C
        else:
            h = self.proj_in(h).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        else:
            h = self.proj_out(h.reshape(batch, height, width, -1).permute(0, 3, 1, 2))
        return h + x
