"""The torch-free runtime: schedulers, tokenizer and (later) engines and pipelines. Never imports torch."""

from .errors import ConfigError, DiffrtError, PackageError
from .schedulers import SCHEDULERS, SchedulerOutput, scheduler_from_config
from .tokenizer import CLIPTokenizer, TokenizedPrompts

__all__ = [
    "CLIPTokenizer",
    "ConfigError",
    "DiffrtError",
    "PackageError",
    "SCHEDULERS",
    "SchedulerOutput",
    "TokenizedPrompts",
    "scheduler_from_config",
]
