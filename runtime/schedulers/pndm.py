"""Pseudo numerical methods for diffusion models (Liu et al. 2022): a DDIM-style transfer step driven by a linear
multistep (PLMS) estimate of eps, warmed up with pseudo Runge-Kutta (PRK) steps unless ``skip_prk_steps``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .alpha_bar import AlphaBarScheduler
from .base import KARRAS_SCHEDULERS, SchedulerOutput


class PNDMScheduler(AlphaBarScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1
    pndm_order = 4  # PRK warm-up covers the last 4 leading timesteps, PLMS then runs 4th order

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        ns.check_prediction_type(prediction_type, name, accepted=("epsilon", "v_prediction"))
        check_choice("timestep_spacing", timestep_spacing, ns.TIMESTEP_SPACINGS, name)
        self._setup_tables()
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self._reset_history()

    def _reset_history(self) -> None:
        self.counter = 0  # steps taken since set_timesteps; selects PRK stage / PLMS order
        self.ets: list[np.ndarray] = []  # eps history, newest last (one per full step)
        self.cur_model_output = 0  # running RK4 weighted sum of eps within a PRK step
        self.cur_sample: np.ndarray | None = None  # x at the start of the current PRK / first PLMS step

    def set_timesteps(self, num_inference_steps: int) -> None:
        cfg = self.config
        n = self._check_num_inference_steps(num_inference_steps)
        if not cfg.skip_prk_steps and n < self.pndm_order:  # diffusers fails broadcasting its PRK table here
            raise ConfigError(
                f"num_inference_steps={n} is not supported by PNDMScheduler with skip_prk_steps=False; accepted: "
                f"{self.pndm_order} or more (the Runge-Kutta warm-up needs {self.pndm_order} steps)."
            )
        self.num_inference_steps = n
        base = ns.spaced_timesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps, cfg.steps_offset)
        base = base[::-1].astype(np.int64)  # ascending
        if cfg.skip_prk_steps:
            # the first PLMS step runs twice at the top timestep (once to predict, once to correct)
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        else:
            # each of the top 4 timesteps t expands to t, t - h/2, t - h/2, t - h (RK4 stages)
            half = cfg.num_train_timesteps // n // 2
            prk = base[-self.pndm_order :].repeat(2) + np.tile([0, half], self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = base[:-3][::-1].copy()
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._reset_history()

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
    ) -> SchedulerOutput:
        """One PRK stage while the warm-up lasts, then PLMS steps (``generator`` is unused: PNDM is deterministic)."""
        self._check_ready()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample)
        return self.step_plms(model_output, timestep, sample)

    def _check_ready(self) -> None:
        self._require_timesteps()

    def step_prk(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> SchedulerOutput:
        """One of the four stages of a pseudo Runge-Kutta step (Liu et al. 2022, eq. 13): eps weights 1/6, 1/3,
        1/3, 1/6; every stage transfers from the step's starting sample."""
        self._check_ready()
        stage = self.counter % 4
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_t = int(timestep) - (0 if self.counter % 2 else half)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        start = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._transfer(start, t, prev_t, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype))

    def step_plms(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> SchedulerOutput:
        """A pseudo linear multistep step (Liu et al. 2022, eq. 12): Adams-Bashforth over the eps history; the
        very first step (no history) is a Heun-like predictor-corrector pair at the same timestep."""
        self._check_ready()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ConfigError("PNDMScheduler.step_plms runs only after the 12 Runge-Kutta warm-up steps (step_prk).")
        stride = self.config.num_train_timesteps // self.num_inference_steps
        t, prev_t = int(timestep), int(timestep) - stride
        if self.counter != 1:
            self.ets = self.ets[-3:] + [model_output]
        else:  # the corrector half of the first step: go back to the start and step from t + stride again
            t, prev_t = t + stride, t
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev_sample = self._transfer(sample, t, prev_t, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype))

    def _transfer(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """The transfer function phi (Liu et al. 2022, eq. 11): x_t to x_{t'} given eps, as a DDIM step."""
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) x
            model_output = ns.torch_sqrt32(alpha_bar) * model_output + ns.torch_sqrt32(1 - alpha_bar) * sample
        denom = alpha_bar * ns.torch_sqrt32(1 - alpha_bar_prev) + ns.torch_sqrt32(
            alpha_bar * (1 - alpha_bar) * alpha_bar_prev
        )
        return (
            ns.torch_sqrt32(alpha_bar_prev / alpha_bar) * sample - (alpha_bar_prev - alpha_bar) * model_output / denom
        )
