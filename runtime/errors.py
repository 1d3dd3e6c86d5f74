"""Errors raised to users of the runtime. Each message names the input at fault and what is accepted."""

from __future__ import annotations


class DiffrtError(Exception):
    """Base class of every error diffrt raises on purpose."""


class ConfigError(DiffrtError, ValueError):
    """A configuration value (scheduler config, call argument) that diffrt cannot accept."""


class PackageError(DiffrtError, FileNotFoundError):
    """A model or engine package folder that lacks a file diffrt needs, or holds one it cannot read."""


class BackendUnavailable(ConfigError):
    """An execution backend asked for by name that this machine cannot run: its library is not installed, there is
    no GPU, or no engine was built for this GPU. The message names what is missing and what to install or run."""


class NonFiniteError(DiffrtError, FloatingPointError):
    """A computation that turned NaN or infinite (a network overflowing in fp16, a callback's tensor, extreme
    settings): raised at the step it happened, naming it, instead of returning a black image."""


class CheckpointError(DiffrtError, ValueError):
    """A checkpoint file or folder (weights, config, LoRA) that diffrt refuses or cannot read."""


def check_choice(field: str, value: object, accepted: tuple, owner: str = "") -> None:
    """Raise ConfigError unless ``value`` is one of ``accepted``."""
    if value not in accepted:
        where = f" for {owner}" if owner else ""
        raise ConfigError(
            f"{field}={value!r} is not supported{where}; accepted values: {', '.join(repr(a) for a in accepted)}."
        )
