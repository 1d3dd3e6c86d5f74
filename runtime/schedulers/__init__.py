"""NumPy schedulers built from diffusers ``scheduler_config.json`` files, with diffusers' names and behaviour."""

from .base import SCHEDULERS, Scheduler, SchedulerConfig, SchedulerOutput, as_generator, randn, scheduler_from_config
from .euler import EulerDiscreteScheduler

__all__ = [
    "SCHEDULERS",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "as_generator",
    "randn",
    "scheduler_from_config",
    "EulerDiscreteScheduler",
]
