"""The down, mid and up blocks of the UNets and the VAE, one class per diffusers block type.

Every down block's ``forward(x, temb, context)`` returns ``(x, skips)``: the outputs the up path concatenates back,
in order. Every up block's ``forward(x, skips, temb, context, upsample_size)`` takes its skips in the same order
(it uses them last first) and, when it upsamples, upsamples to ``upsample_size`` (the next skip's height and width).
Blocks without attention to a context accept ``context`` and ignore it, so the UNets call all blocks alike.
``layer(i, ...)`` runs one layer of a down or up block (its resnet, then its attention): DeepCache's shallow path
runs only some layers of the outermost blocks (:meth:`UNet2DConditionModel.shallow`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import SpatialSelfAttention, Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, ResnetOptions, Upsample2D


def _per_layer(value: int | list[int], num_layers: int) -> list[int]:
    return [value] * num_layers if isinstance(value, int) else list(value)


def _self_attentions(channels: int, head_dim: int, resnet: ResnetOptions, num_layers: int) -> nn.ModuleList:
    """One spatial self-attention per layer, normed and rescaled like the block's resnets (UNet2DModel blocks)."""
    return nn.ModuleList(
        [
            SpatialSelfAttention(channels, head_dim, resnet.groups, resnet.eps, resnet.output_scale_factor)
            for _ in range(num_layers)
        ]
    )


@dataclass(frozen=True)
class CrossAttentionOptions:
    """How one block's Transformer2DModels attend to the text context.

    ``transformer_layers_per_block`` is the transformer depth, one int for every layer of the block or one per layer.
    """

    heads: int
    cross_attention_dim: int
    transformer_layers_per_block: int | tuple[int, ...] = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False

    def transformers(self, channels: int, num_layers: int, groups: int) -> nn.ModuleList:
        """One Transformer2DModel per layer of a block with ``channels`` channels."""
        return nn.ModuleList(
            [
                Transformer2DModel(
                    self.heads,
                    channels // self.heads,
                    channels,
                    self.cross_attention_dim,
                    num_layers=depth,
                    norm_num_groups=groups,
                    use_linear_projection=self.use_linear_projection,
                    only_cross_attention=self.only_cross_attention,
                    upcast_attention=self.upcast_attention,
                )
                for depth in _per_layer(self.transformer_layers_per_block, num_layers)
            ]
        )


class DownBlock2D(nn.Module):
    """``num_layers`` residual blocks, then a stride-2 conv (unless it is the last, lowest-resolution block)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, resnet) for i in range(num_layers)]
        )
        self.downsample_type = "conv" if add_downsample else None
        self.downsamplers = None
        if add_downsample:
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=downsample_padding)])

    def _downsample(self, x: torch.Tensor, temb: torch.Tensor | None, skips: list[torch.Tensor]) -> torch.Tensor:
        if self.downsample_type == "resnet":
            x = self.downsamplers[0](x, temb)
        elif self.downsample_type == "conv":
            x = self.downsamplers[0](x)
        else:
            return x
        skips.append(x)
        return x

    def layer(
        self, i: int, x: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Layer ``i``: its resnet (then its attention, in the attention blocks); its output is skip ``i``."""
        return self.resnets[i](x, temb)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb, context)
            skips.append(x)
        return self._downsample(x, temb, skips), skips


class CrossAttnDownBlock2D(DownBlock2D):
    """DownBlock2D with a Transformer2DModel (self- and cross-attention to the text context) after each resnet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        add_downsample: bool = True,
        downsample_padding: int = 1,
        *,
        attention: CrossAttentionOptions,
    ):
        super().__init__(in_channels, out_channels, resnet, num_layers, add_downsample, downsample_padding)
        self.attentions = attention.transformers(out_channels, num_layers, resnet.groups)

    def layer(self, i, x, temb=None, context=None):
        return self.attentions[i](self.resnets[i](x, temb), context)


class AttnDownBlock2D(DownBlock2D):
    """DownBlock2D with spatial self-attention after each resnet (UNet2DModel); heads = channels / head dim.

    ``downsample_type`` is "conv", "resnet" (a residual block with 2x2 average pooling) or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        downsample_type: str | None = "conv",
        downsample_padding: int = 1,
        *,
        attention_head_dim: int,
    ):
        super().__init__(in_channels, out_channels, resnet, num_layers, downsample_type == "conv", downsample_padding)
        self.attentions = _self_attentions(out_channels, attention_head_dim, resnet, num_layers)
        self.downsample_type = downsample_type
        if downsample_type == "resnet":
            self.downsamplers = nn.ModuleList([ResnetBlock2D(out_channels, out_channels, resnet, down=True)])

    def layer(self, i, x, temb=None, context=None):
        return self.attentions[i](self.resnets[i](x, temb))


class DownEncoderBlock2D(DownBlock2D):
    """The VAE encoder's block: residual blocks without time embedding, then downsampling; no skips."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock2D(nn.Module):
    """``num_layers`` residual blocks, each on the concatenation of the running map and one skip, then upsampling.

    The last resnet's skip comes from the block's input level (``in_channels``), the others from its own level.
    """

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        add_upsample: bool = True,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    (prev_output_channel if i == 0 else out_channels)
                    + (in_channels if i == num_layers - 1 else out_channels),
                    out_channels,
                    resnet,
                )
                for i in range(num_layers)
            ]
        )
        self.upsample_type = "conv" if add_upsample else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def _upsample(self, x: torch.Tensor, temb: torch.Tensor | None, size: torch.Size | None) -> torch.Tensor:
        if self.upsample_type == "resnet":
            return self.upsamplers[0](x, temb, size)
        if self.upsample_type == "conv":
            return self.upsamplers[0](x, size)
        return x

    def layer(
        self,
        i: int,
        x: torch.Tensor,
        skip: torch.Tensor,
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer ``i``: its resnet on the running map concatenated with ``skip`` (then its attention, in the
        attention blocks)."""
        return self.resnets[i](torch.cat([x, skip], dim=1), temb)

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        upsample_size: torch.Size | None = None,
    ) -> torch.Tensor:
        for i, skip in enumerate(reversed(skips)):
            x = self.layer(i, x, skip, temb, context)
        return self._upsample(x, temb, upsample_size)


class CrossAttnUpBlock2D(UpBlock2D):
    """UpBlock2D with a Transformer2DModel after each resnet."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        add_upsample: bool = True,
        *,
        attention: CrossAttentionOptions,
    ):
        super().__init__(in_channels, prev_output_channel, out_channels, resnet, num_layers, add_upsample)
        self.attentions = attention.transformers(out_channels, num_layers, resnet.groups)

    def layer(self, i, x, skip, temb=None, context=None):
        return self.attentions[i](self.resnets[i](torch.cat([x, skip], dim=1), temb), context)


class AttnUpBlock2D(UpBlock2D):
    """UpBlock2D with spatial self-attention after each resnet; ``upsample_type`` is "conv", "resnet" or None."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        upsample_type: str | None = "conv",
        *,
        attention_head_dim: int,
    ):
        super().__init__(in_channels, prev_output_channel, out_channels, resnet, num_layers, upsample_type == "conv")
        self.attentions = _self_attentions(out_channels, attention_head_dim, resnet, num_layers)
        self.upsample_type = upsample_type
        if upsample_type == "resnet":
            self.upsamplers = nn.ModuleList([ResnetBlock2D(out_channels, out_channels, resnet, up=True)])

    def layer(self, i, x, skip, temb=None, context=None):
        return self.attentions[i](self.resnets[i](torch.cat([x, skip], dim=1), temb))


class UpDecoderBlock2D(nn.Module):
    """The VAE decoder's block: residual blocks without skips or time embedding, then 2x upsampling."""

    def __init__(
        self, in_channels: int, out_channels: int, resnet: ResnetOptions, num_layers: int = 1, add_upsample: bool = True
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, resnet) for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class UNetMidBlock2D(nn.Module):
    """resnet, then ``num_layers`` x (spatial self-attention, resnet); ``add_attention=False`` leaves attention out.

    The attention GroupNorm has ``attn_groups`` groups; None means the resnets' groups, except with "scale_shift"
    time embedding, where (as in diffusers) the attention has no GroupNorm at all.
    """

    def __init__(
        self,
        in_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        add_attention: bool = True,
        attention_head_dim: int | None = None,
        attn_groups: int | None = None,
    ):
        super().__init__()
        if attn_groups is None and resnet.time_embedding_norm == "default":
            attn_groups = resnet.groups
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels, in_channels, resnet) for _ in range(num_layers + 1)])
        self.attentions = None
        if add_attention:
            self.attentions = nn.ModuleList(
                [
                    SpatialSelfAttention(
                        in_channels,
                        attention_head_dim or in_channels,
                        attn_groups,
                        resnet.eps,
                        resnet.output_scale_factor,
                    )
                    for _ in range(num_layers)
                ]
            )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            if self.attentions is not None:
                x = self.attentions[i](x)
            x = resnet(x, temb)
        return x


class UNetMidBlock2DCrossAttn(nn.Module):
    """resnet, then ``num_layers`` x (Transformer2DModel over the text context, resnet)."""

    def __init__(
        self,
        in_channels: int,
        resnet: ResnetOptions,
        num_layers: int = 1,
        *,
        attention: CrossAttentionOptions,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels, in_channels, resnet) for _ in range(num_layers + 1)])
        self.attentions = attention.transformers(in_channels, num_layers, resnet.groups)

    def forward(self, x, temb=None, context=None):
        x = self.resnets[0](x, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attention(x, context), temb)
        return x
