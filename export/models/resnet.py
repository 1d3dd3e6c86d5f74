"""Residual blocks and the 2x resamplers the UNets and the VAE are made of.

Parameter names follow diffusers (``norm1``, ``conv1``, ``time_emb_proj``, ``conv_shortcut``, ``downsamplers.0.conv``),
so diffusers checkpoints load by name. Dropout is left out: these modules are for inference and export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffrt.runtime.errors import ConfigError

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}
TIME_EMBEDDING_NORMS = ("default", "scale_shift")


def activation(name: str, field: str = "act_fn") -> nn.Module:
    """The activation module a diffusers config names (case-insensitive, as diffusers reads it)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ConfigError(f"{field}={name!r} is not supported; accepted values: {', '.join(map(repr, ACTIVATIONS))}.")
    return ACTIVATIONS[key]()


@dataclass(frozen=True)
class ResnetOptions:
    """What every residual block of one network shares.

    ``temb_channels`` None means no time embedding (the VAE). ``time_embedding_norm`` is "default" (add the projected
    embedding before norm2) or "scale_shift" (project to scale and shift, applied after norm2).
    """

    temb_channels: int | None
    groups: int = 32
    eps: float = 1e-6
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0

    def __post_init__(self):
        if self.time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ConfigError(
                f"resnet_time_scale_shift={self.time_embedding_norm!r} is not supported; accepted values: "
                f"{', '.join(map(repr, TIME_EMBEDDING_NORMS))}."
            )
        if not isinstance(self.groups, int):
            raise ConfigError(f"norm_num_groups={self.groups!r} is not supported; give the number of groups (an int).")
        activation(self.act_fn)


class Downsample2D(nn.Module):
    """Halve height and width: a stride-2 3x3 conv (``use_conv``) or 2x2 average pooling.

    ``padding=0`` pads one pixel on the right and bottom first, as the VAE encoder (and diffusers) does.
    """

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        out_channels = out_channels or channels
        self.pad_right_bottom = use_conv and padding == 0
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=padding)
        else:
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_right_bottom:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling, then an optional 3x3 conv.

    With ``size`` (a tensor shape's last two entries) the output takes exactly that size: the UNets pass the shape of
    the skip connection the result is concatenated with, which is how inputs whose size is not a multiple of the total
    downsampling factor work. Taking the size from a tensor keeps it dynamic in a traced ONNX graph.
    """

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> conv, plus a (1x1 conv) shortcut.

    ``up`` / ``down`` resample both paths by 2 before the first conv (diffusers' "resnet" up/down sampling).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: ResnetOptions,
        up: bool = False,
        down: bool = False,
        skip_time_act: bool = False,
    ):
        super().__init__()
        self.time_embedding_norm = options.time_embedding_norm
        self.output_scale_factor = options.output_scale_factor
        self.skip_time_act = skip_time_act

        self.norm1 = nn.GroupNorm(options.groups, in_channels, eps=options.eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = None
        if options.temb_channels is not None:
            scale_shift = options.time_embedding_norm == "scale_shift"
            self.time_emb_proj = nn.Linear(options.temb_channels, out_channels * (2 if scale_shift else 1))
        self.norm2 = nn.GroupNorm(options.groups, out_channels, eps=options.eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = activation(options.act_fn)

        self.upsample = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False) if down and not up else None
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, upsample_size: torch.Size | None = None
    ) -> torch.Tensor:
        shortcut = x
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            shortcut = self.upsample(shortcut, upsample_size)
            h = self.upsample(h, upsample_size)
        elif self.downsample is not None:
            shortcut = self.downsample(shortcut)
            h = self.downsample(h)
        h = self.conv1(h)

        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
            if self.time_embedding_norm == "scale_shift":
                scale, shift = temb.chunk(2, dim=1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + temb)
        else:
            h = self.norm2(h)

        h = self.conv2(self.nonlinearity(h))
        if self.conv_shortcut is not None:
            shortcut = self.conv_shortcut(shortcut)
        out = shortcut + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor
