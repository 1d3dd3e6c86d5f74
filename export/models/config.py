"""Reading diffusers model configs: per-block values, block types, and the errors for what is not supported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from diffrt.runtime.errors import ConfigError


class NotSupportedError(ConfigError, NotImplementedError):
    """A diffusers config value that is valid in diffusers but that diffrt's own models do not implement (yet)."""


def per_block(value: Any, num_blocks: int, field: str) -> list:
    """A scalar repeated for every block, or a per-block list/tuple checked for length."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_blocks:
            raise ConfigError(f"{field}={list(value)!r} has {len(value)} entries; the UNet has {num_blocks} blocks.")
        return list(value)
    return [value] * num_blocks


def block_types(types: Sequence[str], accepted: Sequence[str], field: str) -> list[str]:
    """Block type names with diffusers' legacy ``UNetRes`` prefix removed; a name not in ``accepted`` raises."""
    names = [name[len("UNetRes") :] if name.startswith("UNetRes") else name for name in types]
    for name in names:
        if name not in accepted:
            raise ConfigError(
                f"{field} contains {name!r}, which is not supported; accepted block types: "
                f"{', '.join(map(repr, accepted))}."
            )
    return names


def check_choice(field: str, value: Any, accepted: Sequence[Any]) -> None:
    if value not in accepted:
        raise ConfigError(f"{field}={value!r} is not supported; accepted values: {', '.join(map(repr, accepted))}.")


def not_supported(field: str, value: Any, why: str) -> NotSupportedError:
    return NotSupportedError(f"{field}={value!r} is not supported by diffrt's models: {why}.")


def check_matching_lengths(down_block_types: Sequence, up_block_types: Sequence, block_out_channels: Sequence) -> None:
    if len(down_block_types) != len(up_block_types):
        raise ConfigError(
            f"down_block_types has {len(down_block_types)} entries and up_block_types {len(up_block_types)}; "
            "they must match."
        )
    if len(block_out_channels) != len(down_block_types):
        raise ConfigError(
            f"block_out_channels has {len(block_out_channels)} entries and down_block_types "
            f"{len(down_block_types)}; they must match."
        )
