"""NumPy schedulers built from diffusers ``scheduler_config.json`` files, with diffusers' names and behaviour.

Three family bases sit under the one ``Scheduler`` base: ``AlphaBarScheduler`` (DDPM, DDIM, PNDM, LCM, TCD, UnCLIP
and their variants step on the discrete alpha_bar table), ``SigmaScheduler`` (Euler, Euler ancestral, LMS, Heun,
KDPM2, KDPM2 ancestral work in sigma space) and ``ExponentialIntegratorScheduler`` (DPM-Solver multistep /
singlestep / inverse, UniPC, DEIS, SA-Solver integrate in log-SNR time). The rest (consistency models, sCM, IPNDM,
Wuerstchen, score-SDE VE, LTX's rectified flow, flow matching, EDM) stand on ``Scheduler`` directly. Shared math
lives in ``noise_schedule``.
"""

from .base import SCHEDULERS, Scheduler, SchedulerConfig, SchedulerOutput, as_generator, randn, scheduler_from_config
from .cogvideox_ddim import CogVideoXDDIMScheduler
from .cogvideox_dpm import CogVideoXDPMScheduler
from .consistency_models import CMStochasticIterativeScheduler
from .ddim import DDIMScheduler
from .ddim_inverse import DDIMInverseScheduler
from .ddim_parallel import DDIMParallelScheduler
from .ddpm import DDPMScheduler
from .ddpm_parallel import DDPMParallelScheduler
from .ddpm_wuerstchen import DDPMWuerstchenScheduler
from .deis import DEISMultistepScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_multistep_inverse import DPMSolverMultistepInverseScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .edm_dpmsolver_multistep import EDMDPMSolverMultistepScheduler
from .edm_euler import EDMEulerScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .flow_match_euler import FlowMatchEulerDiscreteScheduler, calculate_shift
from .flow_match_heun import FlowMatchHeunDiscreteScheduler
from .flow_match_lcm import FlowMatchLCMScheduler
from .heun import HeunDiscreteScheduler
from .ipndm import IPNDMScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .kdpm2_ancestral import KDPM2AncestralDiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .ltx_euler_ancestral_rf import LTXEulerAncestralRFScheduler
from .pndm import PNDMScheduler
from .sasolver import SASolverScheduler
from .scm import SCMScheduler
from .sde_ve import ScoreSdeVeScheduler
from .tcd import TCDScheduler
from .unclip import UnCLIPScheduler
from .unipc import UniPCMultistepScheduler

__all__ = [
    "SCHEDULERS",
    "CMStochasticIterativeScheduler",
    "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMScheduler",
    "DDPMParallelScheduler",
    "DDPMScheduler",
    "DDPMWuerstchenScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMDPMSolverMultistepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
    "HeunDiscreteScheduler",
    "IPNDMScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "LTXEulerAncestralRFScheduler",
    "PNDMScheduler",
    "SASolverScheduler",
    "SCMScheduler",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "ScoreSdeVeScheduler",
    "TCDScheduler",
    "UnCLIPScheduler",
    "UniPCMultistepScheduler",
    "as_generator",
    "calculate_shift",
    "randn",
    "scheduler_from_config",
]
