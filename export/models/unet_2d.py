"""The unconditional UNet of DDPM-style pipelines (diffusers' ``UNet2DModel``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ConfigError, block_types, check_choice, check_matching_lengths, not_supported
from .embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from .resnet import ResnetOptions
from .unet_blocks import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
RESAMPLE_TYPES = ("conv", "resnet")


class UNet2DModel(nn.Module):
    """diffusers' ``UNet2DModel``, built from its ``config.json`` (``UNet2DModel(**config)``).

    Parameter names equal diffusers'. ``attention_head_dim`` here really is the size of a head (None: one head per
    block). Keys that start with ``_`` and keys diffusers does not know are ignored; unsupported values raise a
    ``ConfigError`` (a ``ValueError``) naming the key. Unlike diffusers, inputs whose size is not a multiple of the
    total downsampling factor work: upsampling follows the skip connection's size.
    """

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: float = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int | None = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        **ignored: Any,
    ):
        super().__init__()
        check_choice("time_embedding_type", time_embedding_type, ("positional", "fourier", "learned"))
        check_choice("mid_block_type", mid_block_type, ("UNetMidBlock2D", None))
        check_choice("class_embed_type", class_embed_type, (None, "timestep", "identity"))
        check_choice("downsample_type", downsample_type, RESAMPLE_TYPES)
        check_choice("upsample_type", upsample_type, RESAMPLE_TYPES)
        if norm_num_groups is None:
            raise not_supported("norm_num_groups", None, "the supported blocks need GroupNorm")
        if time_embedding_type == "learned" and num_train_timesteps is None:
            raise ConfigError("time_embedding_type='learned' needs num_train_timesteps (the embedding table size).")
        check_matching_lengths(down_block_types, up_block_types, block_out_channels)
        down_types = block_types(down_block_types, DOWN_BLOCK_TYPES, "down_block_types")
        up_types = block_types(up_block_types, UP_BLOCK_TYPES, "up_block_types")

        self.sample_size = sample_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.center_input_sample = center_input_sample
        self.time_embedding_type = time_embedding_type
        self.class_embed_type = class_embed_type

        channels0 = block_out_channels[0]
        time_embed_dim = time_embedding_dim or channels0 * 4
        if time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(channels0, scale=16)
            timestep_input_dim = 2 * channels0
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(channels0, flip_sin_to_cos, freq_shift)
            timestep_input_dim = channels0
        else:
            self.time_proj = nn.Embedding(num_train_timesteps, channels0)
            timestep_input_dim = channels0
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)

        self.class_embedding = None
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, time_embed_dim)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()

        resnet = ResnetOptions(time_embed_dim, norm_num_groups, norm_eps, act_fn, resnet_time_scale_shift)
        self.conv_in = nn.Conv2d(in_channels, channels0, kernel_size=3, padding=1)

        n = len(down_types)
        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(down_types):
            block_in, block_out = block_out_channels[max(i - 1, 0)], block_out_channels[i]
            is_last = i == n - 1
            if block_type == "AttnDownBlock2D":
                block = AttnDownBlock2D(
                    block_in,
                    block_out,
                    resnet,
                    layers_per_block,
                    None if is_last else downsample_type,
                    downsample_padding,
                    attention_head_dim=attention_head_dim or block_out,
                )
            else:
                block = DownBlock2D(block_in, block_out, resnet, layers_per_block, not is_last, downsample_padding)
            self.down_blocks.append(block)

        self.mid_block = None
        if mid_block_type is not None:
            mid_channels = block_out_channels[-1]
            self.mid_block = UNetMidBlock2D(
                mid_channels,
                ResnetOptions(
                    time_embed_dim, norm_num_groups, norm_eps, act_fn, resnet_time_scale_shift, mid_block_scale_factor
                ),
                add_attention=add_attention,
                attention_head_dim=attention_head_dim or mid_channels,
                attn_groups=attn_norm_num_groups,
            )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        for i, block_type in enumerate(up_types):
            channels = (reversed_channels[min(i + 1, n - 1)], reversed_channels[max(i - 1, 0)], reversed_channels[i])
            is_last = i == n - 1
            if block_type == "AttnUpBlock2D":
                block = AttnUpBlock2D(
                    *channels,
                    resnet,
                    layers_per_block + 1,
                    None if is_last else upsample_type,
                    attention_head_dim=attention_head_dim or reversed_channels[i],
                )
            else:
                block = UpBlock2D(*channels, resnet, layers_per_block + 1, not is_last)
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels0, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels0, out_channels, kernel_size=3, padding=1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNet2DModel:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The model output for ``sample`` (B, C, H, W) at ``timestep`` (a number, a 0-d, (1,) or (B,) tensor)."""
        dtype = self.conv_in.weight.dtype
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)  # as diffusers: ints
        timesteps = timestep.reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels must be given: this UNet's config has a class embedding.")
            if self.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given, but this UNet's config has no class embedding.")

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb)
            skips.extend(block_skips)
        if self.mid_block is not None:
            x = self.mid_block(x, emb)
        for block in self.up_blocks:
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            x = block(x, block_skips, emb, upsample_size=skips[-1].shape[-2:] if skips else None)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        if self.time_embedding_type == "fourier":
            x = x / timesteps.reshape(-1, 1, 1, 1)
        return x
