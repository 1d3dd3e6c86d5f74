"""The tiny autoencoder (TAESD, Ollin Boer Bohan's "Tiny AutoEncoder for Stable Diffusion"): plain conv + ReLU
residual blocks, no normalisation, no attention, no posterior. An image encodes to latents directly; latents decode
to an image in [-1, 1]. diffusers calls it ``AutoencoderTiny``; the names here are its state-dict names
(``encoder.layers.3.conv.0.weight``, ``decoder.layers.5.skip.weight``...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffrt.runtime.errors import ConfigError
from diffrt.runtime.networks import TINY_VAE, vae_scale_factor

from ..diffusers_folder import full_config
from .resnet import activation


class AutoencoderTinyBlock(nn.Module):
    """conv-act-conv-act-conv plus a skip (1x1 conv when the width changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, act_fn: str):
        super().__init__()
        act = activation(act_fn)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            act,
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class EncoderTiny(nn.Module):
    """Per stage: a conv (stride 2 after the first stage, no bias) and ``num_blocks[i]`` tiny blocks; a conv out.
    Takes images in [-1, 1] and works in [0, 1]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: tuple[int, ...],
        block_out_channels: tuple[int, ...],
        act_fn: str,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels, strict=True)):
            if i == 0:
                layers.append(nn.Conv2d(in_channels, channels, kernel_size=3, padding=1))
            else:
                layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2, bias=False))
            layers.extend(AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count))
        layers.append(nn.Conv2d(block_out_channels[-1], out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.add(1).div(2))


class DecoderTiny(nn.Module):
    """Latents soft-clamped to (-3, 3) by tanh, a conv and act, then per stage ``num_blocks[i]`` tiny blocks, an
    upsample (all but the last stage) and a conv (the last one, with bias, to the output channels); [0, 1] is
    mapped to [-1, 1] at the end."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: tuple[int, ...],
        block_out_channels: tuple[int, ...],
        upsampling_scaling_factor: int,
        act_fn: str,
        upsample_fn: str,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1),
            activation(act_fn),
        ]
        last = len(num_blocks) - 1
        for i, (count, channels) in enumerate(zip(num_blocks, block_out_channels, strict=True)):
            layers.extend(AutoencoderTinyBlock(channels, channels, act_fn) for _ in range(count))
            if i < last:
                layers.append(nn.Upsample(scale_factor=upsampling_scaling_factor, mode=upsample_fn))
            out = out_channels if i == last else channels
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=i == last))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(x / 3) * 3
        return self.layers(x).mul(2).sub(1)


class AutoencoderTiny(nn.Module):
    """diffusers' ``AutoencoderTiny``, built from its ``config.json`` (``AutoencoderTiny(**config)``).

    ``encode`` gives the latents themselves (diffusers' ``vae.encode(x).latents``: no mean and variance, nothing to
    sample), ``decode`` the image in [-1, 1] of latents already divided by ``scaling_factor``.
    ``latent_magnitude`` and ``latent_shift`` only map latents to bytes for storage (``scale_latents``), and
    ``scaling_factor`` / ``shift_factor`` belong to the pipeline: none changes the network. Keys that start with
    ``_`` and unknown keys (``block_out_channels``, which diffusers records) are ignored.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        **ignored: Any,
    ):
        super().__init__()
        for stages, channels, side in (
            (num_encoder_blocks, encoder_block_out_channels, "encoder"),
            (num_decoder_blocks, decoder_block_out_channels, "decoder"),
        ):
            if len(stages) != len(channels) or not stages:
                raise ConfigError(
                    f"AutoencoderTiny: {side}_block_out_channels={list(channels)} and num_{side}_blocks="
                    f"{list(stages)} must have the same, non-zero length (one entry per stage)."
                )
            if len(set(channels)) > 1:  # each stage's first conv takes its own width, so every stage has one width
                raise ConfigError(
                    f"AutoencoderTiny: {side}_block_out_channels={list(channels)} cannot run (each stage takes its "
                    "own width as input, so diffusers' model fails on unequal widths); accepted: one width repeated."
                )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.latent_magnitude = latent_magnitude
        self.latent_shift = latent_shift
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.encoder = EncoderTiny(in_channels, latent_channels, num_encoder_blocks, encoder_block_out_channels, act_fn)
        self.decoder = DecoderTiny(
            latent_channels,
            out_channels,
            num_decoder_blocks,
            decoder_block_out_channels,
            upsampling_scaling_factor,
            act_fn,
            upsample_fn,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AutoencoderTiny:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def encode(self, sample: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, H / f, W / f) of images (B, in_channels, H, W) in [-1, 1]."""
        return self.encoder(sample)

    def decode(self, latent_sample: torch.Tensor) -> torch.Tensor:
        """Images (B, out_channels, H * f, W * f) in about [-1, 1] of latents divided by ``scaling_factor``."""
        return self.decoder(latent_sample)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> [0, 1] (TAESD's byte storage of latents)."""
        return latents.div(2 * self.latent_magnitude).add(self.latent_shift).clamp(0, 1)

    def unscale_latents(self, scaled: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> latents."""
        return scaled.sub(self.latent_shift).mul(2 * self.latent_magnitude)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Reconstruct images through latents stored as bytes, as diffusers' ``forward`` does."""
        stored = self.scale_latents(self.encode(sample)).mul(255).round().byte()
        return self.decode(self.unscale_latents(stored / 255.0))


def tiny_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """An AutoencoderTiny ``config`` with every default written out, ``block_out_channels`` (the decoder's, by which
    diffusers' pipelines size images: 2 ** (len - 1) pixels per latent) and ``force_upcast`` False, as diffusers
    records them. The encoder and decoder must change the size by that same factor."""
    full = full_config(AutoencoderTiny, {**config, "_class_name": TINY_VAE})
    full["block_out_channels"] = list(full["decoder_block_out_channels"])
    full["force_upcast"] = False
    factor = vae_scale_factor(full)
    encoder = 2 ** (len(full["num_encoder_blocks"]) - 1)
    decoder = int(full["upsampling_scaling_factor"]) ** (len(full["num_decoder_blocks"]) - 1)
    if encoder != factor or decoder != factor:
        raise ConfigError(
            f"{where}: this AutoencoderTiny encodes {encoder}x and decodes {decoder}x smaller, but diffusers' "
            f"pipelines size its images by {factor}x (2 ** (len(decoder_block_out_channels) - 1)); accepted: one "
            "factor for all three (num_encoder_blocks, num_decoder_blocks and upsampling_scaling_factor to match)."
        )
    return full
