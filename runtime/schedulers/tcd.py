"""Trajectory Consistency Distillation's strategic stochastic sampling (Zheng et al. 2024, "Trajectory Consistency
Distillation", sec. 4.3, eq. 12): the LCM schedule, but each step jumps to an intermediate time s = (1 - gamma) t_prev
and re-noises from there, so ``eta`` (gamma) trades determinism (0) for LCM-like stochasticity (1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import SchedulerOutput, randn
from .lcm import LCMScheduler


@dataclass
class TCDSchedulerOutput(SchedulerOutput):
    """TCD gives no x0 estimate; its second output is the sample predicted at the intermediate time s."""

    pred_noised_sample: np.ndarray | None = None

    def __iter__(self):  # unpacks like diffusers' (prev_sample, pred_noised_sample) tuple
        yield self.prev_sample
        yield self.pred_noised_sample


class TCDScheduler(LCMScheduler):
    """Same config fields as LCMScheduler; diffusers' TCD ignores clip_sample and thresholding, and so does this."""

    def _origin_timesteps(self, original_inference_steps: int | None, strength: float) -> tuple[np.ndarray, int]:
        """As LCM, except that an explicit ``original_inference_steps`` selects from every training timestep
        (diffusers' TCD behaviour), and only bounds the number of steps."""
        if original_inference_steps is None:
            return super()._origin_timesteps(None, strength)
        if isinstance(original_inference_steps, bool) or not isinstance(original_inference_steps, (int, np.integer)):
            raise ConfigError(
                f"original_inference_steps={original_inference_steps!r} is not supported; accepted: an integer."
            )
        total = self.config.num_train_timesteps
        return np.arange(int(total * strength), dtype=np.int64), int(original_inference_steps)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        eta: float = 0.3,
        generator: np.random.Generator | int | None = None,
    ) -> TCDSchedulerOutput:
        """Predict x0 and eps at t, move deterministically to s = floor((1 - eta) t_prev), then (eta > 0, not the
        last step) forward-diffuse from s back up to t_prev with fresh noise."""
        i = self._start_step(timestep)
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta={eta!r} is not supported by TCDScheduler; accepted: a number from 0 to 1.")
        t = int(timestep)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else 0
        s = int(np.floor(np.float32(1 - eta) * np.float32(prev_t)))  # float32 product, as diffusers' tensor math
        alpha_prod_t, alpha_prod_s = self.alphas_cumprod[t], self.alphas_cumprod[s]
        alpha_prod_prev, beta_prod_t = self._prev_alpha_prod(prev_t), 1 - alpha_prod_t
        sample = sample.astype(np.float32, copy=False)
        out = model_output.astype(np.float32, copy=False)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (sample - ns.torch_sqrt32(beta_prod_t) * out) / ns.torch_sqrt32(alpha_prod_t), out
        elif kind == "sample":
            x0 = out
            eps = (sample - ns.torch_sqrt32(alpha_prod_t) * x0) / ns.torch_sqrt32(beta_prod_t)
        else:  # v_prediction
            x0 = ns.torch_sqrt32(alpha_prod_t) * sample - ns.torch_sqrt32(beta_prod_t) * out
            eps = ns.torch_sqrt32(alpha_prod_t) * out + ns.torch_sqrt32(beta_prod_t) * sample
        x_s = ns.torch_sqrt32(alpha_prod_s) * x0 + ns.torch_sqrt32(1 - alpha_prod_s) * eps
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn(model_output.shape, generator, model_output.dtype).astype(np.float32, copy=False)
            ratio = alpha_prod_prev / alpha_prod_s
            prev_sample = ns.torch_sqrt32(ratio) * x_s + ns.torch_sqrt32(1 - ratio) * noise
        else:
            prev_sample = x_s
        self._step_index += 1
        return TCDSchedulerOutput(prev_sample.astype(model_output.dtype), None, x_s.astype(model_output.dtype))
