"""The torch-free runtime: schedulers, tokenizer and (later) engines and pipelines. Never imports torch."""

from .errors import ConfigError, DiffrtError, PackageError
from .schedulers import SCHEDULERS, SchedulerOutput, scheduler_from_config

__all__ = ["ConfigError", "DiffrtError", "PackageError", "SCHEDULERS", "SchedulerOutput", "scheduler_from_config"]
