"""Timestep embeddings: the sinusoidal / Fourier features of a timestep and the MLP that projects them."""

from __future__ import annotations

import math

import torch
from torch import nn

from .resnet import activation


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of a 1-D tensor of (possibly fractional) timesteps, shape (N, dim), float32.

    Frequencies are ``max_period ** (-i / (dim/2 - freq_shift))``; the output is ``[sin, cos]``, or ``[cos, sin]``
    with ``flip_sin_to_cos``. The operations and their order are diffusers', so the features agree bit for bit.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * frequencies[None, :]
    first, second = (
        (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    )
    emb = torch.cat([first, second], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Sinusoidal timestep features (no parameters)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.freq_shift)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin(2 pi t w), cos(2 pi t w)]`` of (the log of, with ``log``) the timestep.

    ``weight`` is a frozen parameter, as in diffusers, so it travels with the checkpoint.
    """

    def __init__(self, embedding_size: int, scale: float = 1.0, log: bool = True, flip_sin_to_cos: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        if self.log:
            timesteps = torch.log(timesteps)
        angles = timesteps[:, None] * self.weight[None, :] * 2 * math.pi
        first, second = (
            (torch.cos(angles), torch.sin(angles)) if self.flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
        )
        return torch.cat([first, second], dim=-1)


class TimestepEmbedding(nn.Module):
    """``linear_2(act(linear_1(x + cond_proj(condition))))``, with an optional activation after it."""

    def __init__(
        self,
        in_channels: int,
        time_embed_dim: int,
        act_fn: str = "silu",
        post_act_fn: str | None = None,
        cond_proj_dim: int | None = None,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        self.post_act = activation(post_act_fn, "timestep_post_act") if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        return sample if self.post_act is None else self.post_act(sample)
