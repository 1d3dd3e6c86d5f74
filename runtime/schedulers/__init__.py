"""NumPy schedulers built from diffusers ``scheduler_config.json`` files, with diffusers' names and behaviour.

Three family bases sit under the one ``Scheduler`` base: ``AlphaBarScheduler`` (DDPM, DDIM, PNDM, LCM, TCD step on
the discrete alpha_bar table), ``SigmaScheduler`` (Euler, Euler ancestral, LMS, Heun, KDPM2, KDPM2 ancestral work in
sigma space) and ``ExponentialIntegratorScheduler`` (DPM-Solver multistep / singlestep, UniPC, DEIS integrate in
log-SNR time). Shared math lives in ``noise_schedule``.
"""

from .base import SCHEDULERS, Scheduler, SchedulerConfig, SchedulerOutput, as_generator, randn, scheduler_from_config
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .kdpm2_ancestral import KDPM2AncestralDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .tcd import TCDScheduler
from .unipc import UniPCMultistepScheduler

__all__ = [
    "SCHEDULERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "TCDScheduler",
    "UniPCMultistepScheduler",
    "as_generator",
    "randn",
    "scheduler_from_config",
]
