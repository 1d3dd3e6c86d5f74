"""The text-conditioned UNet of Stable Diffusion 1.x / 2.x / XL (and their inpainting, depth, upscaler, LCM and
refiner variants)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .config import ConfigError, block_types, check_choice, check_matching_lengths, not_supported, per_block
from .embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from .resnet import ResnetOptions, activation
from .unet_blocks import (
    AttnDownBlock2D,
    AttnUpBlock2D,
    CrossAttentionOptions,
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)
CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")
ADDITION_EMBED_TYPES = (None, "text_time")


def timesteps_for_batch(timestep: torch.Tensor | float | int, batch_size: int, device: torch.device) -> torch.Tensor:
    """A 1-D tensor of one timestep per sample from a Python number, a 0-d tensor, or a (1,) or (batch,) tensor.

    Python floats become float64 and ints int64, as diffusers makes them; tensors keep their dtype. ``expand`` keeps
    a traced graph free of data-dependent branches.
    """
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        timestep = torch.tensor([timestep], dtype=dtype, device=device)
    return timestep.reshape(-1).expand(batch_size)


class UNet2DConditionModel(nn.Module):
    """diffusers' ``UNet2DConditionModel``, built from its ``config.json`` (``UNet2DConditionModel(**config)``).

    Parameter names equal diffusers', so ``load_state_dict(diffusers_unet.state_dict(), strict=True)`` works.
    As in diffusers, ``attention_head_dim`` gives the number of heads of each cross-attention block unless
    ``num_attention_heads`` is set (diffusers rejects that key; here it means the number of heads). Config keys that
    start with ``_`` and keys diffusers does not know are ignored; values these blocks do not implement raise a
    ``ConfigError`` (a ``ValueError``) that names the key. ``dropout``, ``resnet_skip_time_act``,
    ``resnet_out_scale_factor``, ``cross_attention_norm`` and ``mid_block_only_cross_attention`` change nothing for
    the supported block types (diffusers only passes them to others), so they are accepted and ignored.
    """

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple = 1,
        reverse_transformer_layers_per_block: tuple | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
        **ignored: Any,
    ):
        super().__init__()
        if addition_embed_type not in ADDITION_EMBED_TYPES:
            raise not_supported(
                "addition_embed_type", addition_embed_type, "only SDXL's 'text_time' added embeddings (or none)"
            )
        for field, value in (("encoder_hid_dim", encoder_hid_dim), ("encoder_hid_dim_type", encoder_hid_dim_type)):
            if value is not None:
                raise not_supported(field, value, "projected encoder hidden states (Kandinsky, IP-Adapter) come later")
        if dual_cross_attention:
            raise not_supported("dual_cross_attention", dual_cross_attention, "only single cross-attention")
        if attention_type != "default":
            raise not_supported("attention_type", attention_type, "only 'default' attention (no GLIGEN)")
        if norm_num_groups is None:
            raise not_supported("norm_num_groups", None, "the supported blocks need GroupNorm")
        check_choice("time_embedding_type", time_embedding_type, ("positional", "fourier"))
        check_choice("mid_block_type", mid_block_type, MID_BLOCK_TYPES)
        check_choice("class_embed_type", class_embed_type, CLASS_EMBED_TYPES)
        check_matching_lengths(down_block_types, up_block_types, block_out_channels)
        down_types = block_types(down_block_types, DOWN_BLOCK_TYPES, "down_block_types")
        up_types = block_types(up_block_types, UP_BLOCK_TYPES, "up_block_types")

        self.sample_size = sample_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.center_input_sample = center_input_sample
        self.class_embed_type = class_embed_type
        self.class_embeddings_concat = class_embeddings_concat
        self.time_cond_proj_dim = time_cond_proj_dim
        self.num_upsamplers = len(block_out_channels) - 1

        n = len(down_types)
        head_dims = per_block(attention_head_dim, n, "attention_head_dim")
        # diffusers' naming quirk: in the cross-attention blocks attention_head_dim is the number of heads (each head
        # gets channels / heads), unless num_attention_heads is set.
        heads = head_dims if num_attention_heads is None else per_block(num_attention_heads, n, "num_attention_heads")
        cross_dims = per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = per_block(layers_per_block, n, "layers_per_block")
        depths = per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = per_block(only_cross_attention, n, "only_cross_attention")
        if reverse_transformer_layers_per_block is None:
            if any(isinstance(depth, (list, tuple)) for depth in depths):
                raise not_supported(
                    "transformer_layers_per_block",
                    transformer_layers_per_block,
                    "per-layer depths need reverse_transformer_layers_per_block",
                )
            up_depths = list(reversed(depths))
        else:
            up_depths = per_block(reverse_transformer_layers_per_block, n, "reverse_transformer_layers_per_block")

        # time embedding
        channels0 = block_out_channels[0]
        if time_embedding_type == "fourier":
            time_embed_dim = time_embedding_dim or channels0 * 2
            self.time_proj = GaussianFourierProjection(time_embed_dim // 2, log=False, flip_sin_to_cos=flip_sin_to_cos)
            timestep_input_dim = time_embed_dim
        else:
            time_embed_dim = time_embedding_dim or channels0 * 4
            self.time_proj = Timesteps(channels0, flip_sin_to_cos, freq_shift)
            timestep_input_dim = channels0
        self.time_embedding = TimestepEmbedding(
            timestep_input_dim, time_embed_dim, act_fn, post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim
        )
        self.class_embedding = self._class_embedding(
            class_embed_type,
            num_class_embeds,
            projection_class_embeddings_input_dim,
            act_fn,
            timestep_input_dim,
            time_embed_dim,
        )
        self.addition_embed_type = addition_embed_type
        if addition_embed_type == "text_time":
            self.add_time_proj, self.add_embedding = self._text_time_embedding(
                addition_time_embed_dim,
                projection_class_embeddings_input_dim,
                flip_sin_to_cos,
                freq_shift,
                time_embed_dim,
            )
        self.time_embed_act = None
        if time_embedding_act_fn is not None:
            self.time_embed_act = activation(time_embedding_act_fn, "time_embedding_act_fn")
        temb_channels = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim

        def resnet(scale: float = 1.0) -> ResnetOptions:
            return ResnetOptions(temb_channels, norm_num_groups, norm_eps, act_fn, resnet_time_scale_shift, scale)

        def attention(i: int, depth: int | list[int]) -> CrossAttentionOptions:
            """The cross-attention of down block ``i`` (and of the up block that mirrors it)."""
            depth = depth if isinstance(depth, int) else tuple(depth)
            return CrossAttentionOptions(
                heads[i], cross_dims[i], depth, use_linear_projection, only_cross[i], upcast_attention
            )

        self.conv_in = nn.Conv2d(in_channels, channels0, conv_in_kernel, padding=(conv_in_kernel - 1) // 2)

        self.down_blocks = nn.ModuleList()
        for i, block_type in enumerate(down_types):
            block_in, block_out = block_out_channels[max(i - 1, 0)], block_out_channels[i]
            common = dict(
                in_channels=block_in,
                out_channels=block_out,
                resnet=resnet(),
                num_layers=layers[i],
                downsample_padding=downsample_padding,
            )
            if block_type == "CrossAttnDownBlock2D":
                block = CrossAttnDownBlock2D(**common, add_downsample=i < n - 1, attention=attention(i, depths[i]))
            elif block_type == "AttnDownBlock2D":
                block = AttnDownBlock2D(
                    **common,
                    downsample_type="conv" if i < n - 1 else None,
                    attention_head_dim=head_dims[i] or block_out,
                )
            else:
                block = DownBlock2D(**common, add_downsample=i < n - 1)
            self.down_blocks.append(block)

        mid_channels = block_out_channels[-1]
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            mid_attention = replace(attention(n - 1, depths[-1]), only_cross_attention=False)
            self.mid_block = UNetMidBlock2DCrossAttn(
                mid_channels, resnet(mid_block_scale_factor), attention=mid_attention
            )
        elif mid_block_type == "UNetMidBlock2D":
            self.mid_block = UNetMidBlock2D(
                mid_channels, resnet(mid_block_scale_factor), num_layers=0, add_attention=False
            )
        else:
            self.mid_block = None

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        for i, block_type in enumerate(up_types):
            j = n - 1 - i  # the matching down block
            common = dict(
                in_channels=reversed_channels[min(i + 1, n - 1)],
                prev_output_channel=reversed_channels[max(i - 1, 0)],
                out_channels=reversed_channels[i],
                resnet=resnet(),
                num_layers=layers[j] + 1,
            )
            if block_type == "CrossAttnUpBlock2D":
                block = CrossAttnUpBlock2D(**common, add_upsample=i < n - 1, attention=attention(j, up_depths[i]))
            elif block_type == "AttnUpBlock2D":
                block = AttnUpBlock2D(
                    **common,
                    upsample_type="conv" if i < n - 1 else None,
                    attention_head_dim=head_dims[i] or reversed_channels[i],  # [i], not [j]: as diffusers
                )
            else:
                block = UpBlock2D(**common, add_upsample=i < n - 1)
            self.up_blocks.append(block)

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels0, eps=norm_eps)
        self.conv_act = activation(act_fn)
        self.conv_out = nn.Conv2d(channels0, out_channels, conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    @staticmethod
    def _class_embedding(
        class_embed_type: str | None,
        num_class_embeds: int | None,
        projection_input_dim: int | None,
        act_fn: str,
        timestep_input_dim: int,
        time_embed_dim: int,
    ) -> nn.Module | None:
        if class_embed_type is None:
            return nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
        if class_embed_type == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn)
        if class_embed_type == "identity":
            return nn.Identity()
        if projection_input_dim is None:
            raise ConfigError(
                f"class_embed_type={class_embed_type!r} needs projection_class_embeddings_input_dim "
                "(the size of the class_labels vectors)."
            )
        if class_embed_type == "projection":
            return TimestepEmbedding(projection_input_dim, time_embed_dim)
        return nn.Linear(projection_input_dim, time_embed_dim)  # "simple_projection"

    @staticmethod
    def _text_time_embedding(
        time_dim: int | None, input_dim: int | None, flip_sin_to_cos: bool, freq_shift: float, time_embed_dim: int
    ) -> tuple[Timesteps, TimestepEmbedding]:
        """SDXL's added conditioning: sinusoidal features of each time id, then an MLP over [text_embeds, features]."""
        for field, value in (
            ("addition_time_embed_dim", time_dim),
            ("projection_class_embeddings_input_dim", input_dim),
        ):
            if value is None:
                raise ConfigError(
                    f"addition_embed_type='text_time' needs {field} (an int); the config leaves it unset."
                )
        return Timesteps(time_dim, flip_sin_to_cos, freq_shift), TimestepEmbedding(input_dim, time_embed_dim)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> UNet2DConditionModel:
        """Build from a diffusers ``config.json`` dict (``_class_name`` and other ``_`` keys are ignored)."""
        return cls(**{key: value for key, value in config.items() if not key.startswith("_")})

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The noise (or v / sample) prediction for ``sample`` (B, C, H, W) at ``timestep`` given the text
        ``encoder_hidden_states`` (B, T, D); ``class_labels`` for class-embedding configs (e.g. the upscaler's noise
        level), ``timestep_cond`` (B, time_cond_proj_dim) for guidance-embedding (LCM) configs, and for SDXL's
        ``text_time`` configs the pooled ``text_embeds`` (B, E) and ``time_ids`` (B, n) (sizes, crop, aesthetic
        score), which diffusers takes in ``added_cond_kwargs``."""
        conditioning = dict(class_labels=class_labels, timestep_cond=timestep_cond)
        conditioning.update(text_embeds=text_embeds, time_ids=time_ids)
        return self.with_deep_features(sample, timestep, encoder_hidden_states, **conditioning)[0]

    def with_deep_features(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        branches: Sequence[int] = (),
        **conditioning: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward`'s prediction, and for each DeepCache branch of ``branches`` the deep features its
        :meth:`shallow` path reuses on later steps: the map entering the last up block's layer
        :meth:`deepcache_layer` (B, C, H, W). ``conditioning``: forward's optional inputs, by name."""
        sample, emb = self._start(sample, timestep, **conditioning)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, encoder_hidden_states)
            skips.extend(block_skips)
        if self.mid_block is not None:
            x = self.mid_block(x, emb, encoder_hidden_states)
        *upper, last = self.up_blocks
        for block in upper:
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            upsample_size = skips[-1].shape[-2:] if skips else None
            x = block(x, block_skips, emb, encoder_hidden_states, upsample_size)
        # The last up block takes the remaining skips (conv_in's and the first down block's) and never upsamples.
        if not branches:  # called whole, as forward has always traced it (node names included)
            return self._out(last(x, skips, emb, encoder_hidden_states)), []
        starts = {branch: self.deepcache_layer(branch) for branch in branches}
        features = {}
        for j, skip in enumerate(reversed(skips)):
            features.update({branch: x for branch, start in starts.items() if start == j})
            x = last.layer(j, x, skip, emb, encoder_hidden_states)
        return self._out(x), [features[branch] for branch in branches]

    def deepcache_layer(self, branch: int) -> int:
        """The layer of the last up block where DeepCache branch ``branch`` (``cache_branch_id``, block 0) starts:
        the last ``branch + 1`` layers run on every step (all of them once ``branch`` reaches the block's depth)."""
        return max(0, len(self.up_blocks[-1].resnets) - 1 - branch)

    def shallow(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        deep_features: torch.Tensor,
        branch: int,
        **conditioning: torch.Tensor | None,
    ) -> torch.Tensor:
        """DeepCache's cheap step (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free")
        for ``branch``: the time embedding, ``conv_in`` and the first down block's first ``branch`` layers run on
        ``sample``; the last up block runs from layer :meth:`deepcache_layer` on, starting from ``deep_features``
        (what :meth:`with_deep_features` returned at the last full step) and taking the fresh skips; everything
        deeper is skipped. This is DeepCacheSDHelper's cached step for ``cache_branch_id=branch`` (< 3)."""
        sample, emb = self._start(sample, timestep, **conditioning)
        x = self.conv_in(sample)
        skips = [x]
        last = self.up_blocks[-1]
        start = self.deepcache_layer(branch)
        for i in range(len(last.resnets) - 1 - start):
            x = self.down_blocks[0].layer(i, x, emb, encoder_hidden_states)
            skips.append(x)
        x = deep_features
        for j in range(start, len(last.resnets)):
            x = last.layer(j, x, skips[len(last.resnets) - 1 - j], emb, encoder_hidden_states)
        return self._out(x)

    def _start(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (centred, when the config says so) sample and the embedding every resnet takes: the timestep's, plus
        the class and SDXL text_time embeddings."""
        dtype = self.conv_in.weight.dtype
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        timesteps = timesteps_for_batch(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype), timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels must be given: this UNet's config has a class embedding.")
            if self.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype)
            class_emb = self.class_embedding(class_labels).to(dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.class_embeddings_concat else emb + class_emb
        if self.addition_embed_type == "text_time":
            emb = emb + self._text_time(text_embeds, time_ids, emb.dtype)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return sample, emb

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    def _text_time(self, text_embeds: torch.Tensor | None, time_ids: torch.Tensor | None, dtype) -> torch.Tensor:
        """The added embedding: each time id becomes ``addition_time_embed_dim`` sinusoidal features, which follow
        the pooled text embedding into the ``add_embedding`` MLP."""
        for name, value in (("text_embeds", text_embeds), ("time_ids", time_ids)):
            if value is None:
                raise ValueError(
                    f"{name} must be given: this UNet's config has addition_embed_type='text_time' (SDXL), which "
                    "needs the pooled text embeddings (batch, dim) and the time ids (batch, n)."
                )
        features = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
        return self.add_embedding(torch.cat([text_embeds, features], dim=-1).to(dtype))
