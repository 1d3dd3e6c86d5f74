"""Where each module of a diffusers ``UNet2DConditionModel`` sits in the original LDM / SGM UNet (CompVis, Stability).

The LDM UNet numbers its modules in one run per side, from the block structure alone: ``input_blocks.0`` is conv_in,
then each down block gives one input block per resnet (the resnet at ``.0``, its attention at ``.1``) and one for its
downsampler (``.0.op``); ``middle_block`` runs resnet, attention, resnet; each up block gives one output block per
resnet, its last also holding the upsampler (``.2.conv``, or ``.1.conv`` without attention). Inside a resnet the
layers have other names (:data:`RESNET_LAYERS`); inside an attention they are the same.

Single-file conversion (:mod:`~diffrt.export.single_file`) takes the block structure from the diffusers config, LoRA
(:mod:`~diffrt.export.lora`, for kohya's SDXL names) from the model's parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A ResBlock's layers, diffusers -> LDM name (in_layers: norm, SiLU, conv; out_layers: norm, SiLU, dropout, conv).
RESNET_LAYERS = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
)
RESNET_SHORTCUT = ("conv_shortcut", "skip_connection")  # only in resnets that change the channel count

# The layers outside the blocks, diffusers name -> LDM name. time_embed and SGM's label_emb (SDXL's added embedding of
# pooled text and time ids) are Sequential(Linear, SiLU, Linear); out is Sequential(GroupNorm, SiLU, Conv2d).
EMBEDDINGS = (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"))
ADDED_EMBEDDING = (("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"))
CONV_IN = ("conv_in", "input_blocks.0.0")
OUTPUT = (("conv_norm_out", "out.0"), ("conv_out", "out.2"))


@dataclass(frozen=True)
class UNetModule:
    """One module of the UNet under both names."""

    diffusers: str  # "down_blocks.1.attentions.0"
    ldm: str  # "input_blocks.5.1"
    kind: str  # "resnet", "attention", "downsampler", "upsampler", or "layer" (outside the blocks)
    part: str = ""  # "down", "mid" or "up"; "" outside the blocks
    block: int = 0  # the down or up block it belongs to


@dataclass(frozen=True)
class UNetBlocks:
    """The block structure the LDM numbering follows: every block but the last samples, up blocks mirror the down
    blocks with one resnet more each."""

    layers: tuple[int, ...]  # resnets per down block
    down_attention: tuple[bool, ...]  # per down block: cross-attention after each resnet
    up_attention: tuple[bool, ...]  # per up block
    mid_attention: bool = True
    added_embedding: bool = False  # SDXL's text_time embedding (SGM's label_emb)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetBlocks:
        """From a ``UNet2DConditionModel`` config's ``down_block_types``, ``up_block_types``, ``layers_per_block``
        (one number, or one per block), ``mid_block_type`` and ``addition_embed_type``."""
        down = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
        layers = config["layers_per_block"]
        return cls(
            layers=tuple([layers] * len(down) if isinstance(layers, int) else layers),
            down_attention=tuple(down),
            up_attention=tuple(kind.startswith("CrossAttn") for kind in config["up_block_types"]),
            mid_attention="CrossAttn" in (config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"),
            added_embedding=config.get("addition_embed_type") == "text_time",
        )

    @property
    def input_blocks(self) -> int:
        """How many ``input_blocks`` the LDM UNet has: conv_in, one per resnet, one per downsampler."""
        return 1 + sum(self.layers) + (len(self.layers) - 1)

    def modules(self) -> list[UNetModule]:
        """Every module, in the order of the LDM state dict: embeddings, conv_in, input, middle and output blocks,
        then the output layers."""
        found = [UNetModule(new, old, "layer") for new, old in EMBEDDINGS]
        if self.added_embedding:
            found += [UNetModule(new, old, "layer") for new, old in ADDED_EMBEDDING]
        found.append(UNetModule(*CONV_IN, "layer"))
        found += self._down()
        found += self._middle()
        found += self._up()
        found += [UNetModule(new, old, "layer") for new, old in OUTPUT]
        return found

    def _down(self) -> list[UNetModule]:
        found, k, last = [], 1, len(self.layers) - 1
        for i, (count, attention) in enumerate(zip(self.layers, self.down_attention, strict=True)):
            for j in range(count):
                found.append(UNetModule(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", "resnet", "down", i))
                if attention:
                    new = f"down_blocks.{i}.attentions.{j}"
                    found.append(UNetModule(new, f"input_blocks.{k}.1", "attention", "down", i))
                k += 1
            if i < last:
                new = f"down_blocks.{i}.downsamplers.0.conv"
                found.append(UNetModule(new, f"input_blocks.{k}.0.op", "downsampler", "down", i))
                k += 1
        return found

    def _middle(self) -> list[UNetModule]:
        found = [UNetModule("mid_block.resnets.0", "middle_block.0", "resnet", "mid")]
        if self.mid_attention:
            found.append(UNetModule("mid_block.attentions.0", "middle_block.1", "attention", "mid"))
        found.append(UNetModule("mid_block.resnets.1", f"middle_block.{len(found)}", "resnet", "mid"))
        return found

    def _up(self) -> list[UNetModule]:
        found, k, last = [], 0, len(self.layers) - 1
        for i, attention in enumerate(self.up_attention):
            count = self.layers[last - i] + 1
            for j in range(count):
                found.append(UNetModule(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", "resnet", "up", i))
                if attention:
                    new = f"up_blocks.{i}.attentions.{j}"
                    found.append(UNetModule(new, f"output_blocks.{k}.1", "attention", "up", i))
                if j == count - 1 and i < last:
                    old = f"output_blocks.{k}.{2 if attention else 1}.conv"
                    found.append(UNetModule(f"up_blocks.{i}.upsamplers.0.conv", old, "upsampler", "up", i))
                k += 1
        return found


def resnet_layers(shortcut: bool) -> tuple[tuple[str, str], ...]:
    """A resnet's layers, diffusers name -> LDM name, with its shortcut convolution or without."""
    return (*RESNET_LAYERS, RESNET_SHORTCUT) if shortcut else RESNET_LAYERS
