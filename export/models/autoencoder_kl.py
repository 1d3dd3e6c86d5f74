"""The KL autoencoder (VAE) of Stable Diffusion: image <-> latent posterior parameters / latent sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import block_types, check_matching_lengths
from .resnet import ResnetOptions, activation
from .unet_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D


class Encoder(nn.Module):
    """conv_in, DownEncoderBlock2Ds, mid block (resnet, attention, resnet), GroupNorm, act, conv_out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        act_fn: str,
        mid_block_add_attention: bool,
    ):
        super().__init__()
        resnet = ResnetOptions(None, norm_num_groups, 1e-6, act_fn)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownEncoderBlock2D(
                    block_out_channels[max(i - 1, 0)],
                    channels,
                    resnet,
                    layers_per_block,
                    add_downsample=i < len(block_out_channels) - 1,
                    downsample_padding=0,
                )
                for i, channels in enumerate(block_out_channels)
            ]
        )
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], resnet, add_attention=mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """conv_in, mid block, UpDecoderBlock2Ds (one more resnet per block than the encoder), GroupNorm, act, conv_out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        norm_num_groups: int,
        act_fn: str,
        mid_block_add_attention: bool,
    ):
        super().__init__()
        resnet = ResnetOptions(None, norm_num_groups, 1e-6, act_fn)
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, reversed_channels[0], kernel_size=3, padding=1)
        self.mid_block = UNetMidBlock2D(reversed_channels[0], resnet, add_attention=mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            [
                UpDecoderBlock2D(
                    reversed_channels[max(i - 1, 0)],
                    channels,
                    resnet,
                    layers_per_block + 1,
                    add_upsample=i < len(reversed_channels) - 1,
                )
                for i, channels in enumerate(reversed_channels)
            ]
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL``, built from its ``config.json`` (``AutoencoderKL(**config)``).

    ``encode`` gives the posterior parameters (mean and log-variance concatenated on channels), ``decode`` the image
    of a latent that is already divided by ``scaling_factor`` (what diffusers' ``vae.decode`` receives).
    ``scaling_factor``, ``shift_factor``, ``latents_mean``/``latents_std`` and ``force_upcast`` are kept as attributes
    for the pipeline; they do not change the network. Keys that start with ``_`` and unknown keys are ignored.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        **ignored: Any,
    ):
        super().__init__()
        check_matching_lengths(down_block_types, up_block_types, block_out_channels)
        block_types(down_block_types, ("DownEncoderBlock2D",), "down_block_types")
        block_types(up_block_types, ("UpDecoderBlock2D",), "up_block_types")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.latents_mean = latents_mean
        self.latents_std = latents_std
        self.force_upcast = force_upcast
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)

        network = (block_out_channels, layers_per_block, norm_num_groups, act_fn, mid_block_add_attention)
        self.encoder = Encoder(in_channels, 2 * latent_channels, *network)
        self.decoder = Decoder(latent_channels, out_channels, *network)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderKL:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def encode(self, sample: torch.Tensor) -> torch.Tensor:
        """Posterior parameters (B, 2 * latent_channels, H / f, W / f) of images (B, in_channels, H, W) in [-1, 1]:
        mean, then log-variance (diffusers' ``vae.encode(x).latent_dist.parameters``)."""
        moments = self.encoder(sample)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def decode(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """Images (B, out_channels, H * f, W * f) of latents already divided by ``scaling_factor``."""
        z = latent_sample if self.post_quant_conv is None else self.post_quant_conv(latent_sample)
        return self.decoder(z)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Reconstruct images through the posterior mean."""
        return self.decode(self.encode(sample)[:, : self.latent_channels])
