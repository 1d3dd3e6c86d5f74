"""Multistep DPM-Solver(++) run backwards, for inversion: DPMSolverMultistepScheduler's update (Lu et al. 2022b,
eq. 14) on an ascending schedule, from the least noisy timestep up to the noisiest one (lambda_min_clipped's).

Each step integrates from sigmas[i] to sigmas[i + 1] exactly as the forward solver does; only the schedule is
reversed (h = lambda_t - lambda_s < 0). The SDE variants' fresh-noise variance, sigma_t^2 (1 - e^-2h), is then
negative, so they are accepted only with flow sigmas, whose schedule diffusers leaves descending.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from . import noise_schedule as ns
from .base import KARRAS_SCHEDULERS, SchedulerOutput, randn
from .dpmsolver_multistep import ALGORITHMS, DPMSolverMultistepScheduler, remap_solver_names


class DPMSolverMultistepInverseScheduler(DPMSolverMultistepScheduler):
    _compatibles = KARRAS_SCHEDULERS
    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ):
        name = type(self).__name__
        remap_solver_names(self, ALGORITHMS)
        algorithm = self.config.algorithm_type
        if algorithm.startswith("sde-") and not use_flow_sigmas:
            # diffusers accepts it and returns NaN from the first step: sqrt(1 - e^-2h) of a negative h
            raise ConfigError(
                f"algorithm_type={algorithm!r} is not supported by {name} (its noise variance is negative on a "
                "rising schedule); accepted: 'dpmsolver++' or 'dpmsolver', or an SDE variant with use_flow_sigmas."
            )
        if algorithm.startswith("sde-") and solver_order >= 3:
            # diffusers' third-order update here takes no noise and fails at the first third-order step
            raise ConfigError(
                f"algorithm_type={algorithm!r} is not supported with solver_order={solver_order} in {name}; "
                "accepted: solver_order 1 or 2."
            )
        if algorithm in ("dpmsolver", "sde-dpmsolver") and prediction_type == "flow_prediction":
            # diffusers fails at the first step: flow outputs convert only to data predictions
            raise ConfigError(
                f"prediction_type='flow_prediction' is not supported with algorithm_type={algorithm!r} in {name}; "
                "accepted: algorithm_type 'dpmsolver++' or 'sde-dpmsolver++'."
            )
        self._setup_tables()
        self.timesteps = self.timesteps[::-1].copy()  # ascending until set_timesteps

    def _noisiest_timestep(self) -> int:
        """The last timestep whose lambda is at least ``lambda_min_clipped`` (cosine schedules' end is clipped)."""
        lambda_min = np.float32(self.config.lambda_min_clipped)
        return self.config.num_train_timesteps - 1 - int(np.searchsorted(self.lambda_t[::-1], lambda_min))

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """n ascending int64 timesteps from 0 to the noisiest: ``linspace`` / ``leading`` place n + 1 points on
        [0, noisiest] and drop the noisiest one; ``trailing`` counts up to it in steps of N / n."""
        cfg = self.config
        top = self._noisiest_timestep()
        if cfg.timestep_spacing == "linspace":
            t = np.linspace(0, top, n + 1).round()[:-1]
        elif cfg.timestep_spacing == "leading":
            t = (np.arange(0, n + 1) * ((top + 1) // (n + 1))).round()[:-1] + cfg.steps_offset
        else:
            t = np.arange(top + 1, 0, -cfg.num_train_timesteps / n).round()[::-1] - 1
        return t.astype(np.int64)

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Ascending timesteps and their sigmas, the last sigma repeated (resampled schedules) or the noisiest
        timestep's. Repeated timesteps are dropped, keeping every sigma, as diffusers does."""
        cfg = self.config
        n = self._check_num_inference_steps(num_inference_steps)
        timesteps = self._spaced_timesteps(n)
        train = self._train_sigmas()
        # karras / exponential / beta between the table's ends, ascending (first = smallest) as diffusers has them
        sigmas = ns.resample_sigmas(cfg, train.astype(np.float64), n)
        if sigmas is not None:
            timesteps = ns.sigma_to_t(sigmas, np.log(train))
            if cfg.use_karras_sigmas:
                timesteps = timesteps.round()
            last = sigmas[-1]
        elif cfg.use_flow_sigmas:  # diffusers keeps the forward (descending) flow schedule here
            sigmas, timesteps = self._flow_sigmas(n)
            last = sigmas[-1]
        else:
            sigmas = self._interpolated_sigmas(timesteps)
            last = train[self._noisiest_timestep()]
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        _, first = np.unique(timesteps, return_index=True)
        self.timesteps = np.asarray(timesteps)[np.sort(first)].astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self._reset_history()

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        generator: np.random.Generator | int | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One multistep update from sigmas[i] to sigmas[i + 1]; as the forward solver, but the last steps drop to
        lower order only for ``euler_at_final`` or short schedules (there is no final sigma of zero here)."""
        self._start_step(timestep)
        cfg, i, n = self.config, self._step_index, len(self.timesteps)
        short = cfg.lower_order_final and n < 15
        first_order_final = i == n - 1 and (cfg.euler_at_final or short)
        second_order_final = i == n - 2 and short
        self._push_model_output(self.convert_model_output(model_output, sample))
        sample = sample.astype(np.float32, copy=False)
        noise = None
        if cfg.algorithm_type.startswith("sde-"):
            noise = randn(model_output.shape, generator) if variance_noise is None else variance_noise
            noise = noise.astype(np.float32, copy=False)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or first_order_final:
            order = 1
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_order_final:
            order = 2
        else:
            order = 3
        prev_sample = self._multistep_update(order, sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(model_output.dtype), None)
