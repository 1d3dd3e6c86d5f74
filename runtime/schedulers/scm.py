"""Multistep sampling of continuous-time consistency models in TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing
and Scaling Continuous-Time Consistency Models", sCM; used by SANA-Sprint).

TrigFlow puts a sample at angle t in [0, pi/2]: x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_data^2 I). The model
predicts the velocity F = d x_t / dt, so x0 = cos(s) x_s - sin(s) F; each step jumps to that estimate and re-noises
it to the next, smaller angle (the paper's Algorithm 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

PREDICTION_TYPES = ("trigflow",)


class SCMScheduler(Scheduler):
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, prediction_type: str = "trigflow", sigma_data: float = 0.5):
        # diffusers accepts any prediction type here and fails at the first step; refuse it up front
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES, type(self).__name__)
        self.timesteps = np.arange(num_train_timesteps, dtype=np.int64)[::-1].copy()
        self.num_inference_steps = None

    def set_timesteps(
        self,
        num_inference_steps: int,
        timesteps: Sequence[float] | None = None,
        max_timesteps: float | None = 1.57080,
        intermediate_timesteps: float | None = 1.3,
    ) -> None:
        """n + 1 float32 angles, from the first down to 0: custom ``timesteps`` (then ``max_timesteps=None``), or
        [max_timesteps, intermediate_timesteps, 0] (two steps only), or evenly spaced from max_timesteps."""
        n = self._check_num_inference_steps(num_inference_steps)
        if timesteps is not None and len(timesteps) != n + 1:
            raise ConfigError(
                f"timesteps has {len(timesteps)} values; accepted: num_inference_steps + 1 ({n + 1}) angles."
            )
        if timesteps is not None and max_timesteps is not None:
            raise ConfigError("timesteps and max_timesteps were both given; accepted: max_timesteps=None with them.")
        if timesteps is None and max_timesteps is None:
            raise ConfigError("set_timesteps needs timesteps or max_timesteps; accepted: one of them.")
        if intermediate_timesteps is not None and n != 2:
            raise ConfigError(
                f"intermediate_timesteps is only supported with num_inference_steps=2 (got {n}); accepted: "
                "intermediate_timesteps=None for other step counts."
            )
        if timesteps is not None:
            self.timesteps = np.asarray(timesteps, dtype=np.float32)
        elif intermediate_timesteps is not None:
            self.timesteps = np.array([max_timesteps, intermediate_timesteps, 0], dtype=np.float32)
        else:
            self.timesteps = ns.torch_linspace(max_timesteps, 0, n + 1)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """x0 = cos(s) x - sin(s) F at this angle s, then cos(t) x0 + sin(t) sigma_data z at the next angle t.
        Draws one float32 noise array of ``model_output``'s shape every step (the last is scaled by sin(0) = 0)."""
        self._start_step(timestep)
        i = self._step_index
        if i + 1 >= len(self.timesteps):
            raise ConfigError(f"step {i} is past the end of the {len(self.timesteps) - 1}-step schedule.")
        s, t = self.timesteps[i], self.timesteps[i + 1]
        dtype = model_output.dtype
        model_output, sample = model_output.astype(np.float32, copy=False), sample.astype(np.float32, copy=False)
        x0 = ns.torch_cos32(s) * sample - ns.torch_sin32(s) * model_output
        noise = randn(model_output.shape, generator) * np.float32(self.config.sigma_data)
        prev_sample = ns.torch_cos32(t) * x0 + ns.torch_sin32(t) * noise
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(dtype), x0.astype(dtype))
