"""Euler's method on a rectified-flow ODE (SD3, Flux, CogVideoX-style models; Esser et al. 2024).

The model predicts a velocity v under x_sigma = (1 - sigma) x0 + sigma noise, so one Euler step is
x_next = x + (sigma_next - sigma) v. Sigmas are a shifted grid on (0, 1]: a fixed ``shift`` (SD3), or a
resolution-dependent one from ``mu`` (Flux: ``calculate_shift`` of the image's token count).

Precision, as diffusers computes it:
- training table (``__init__``): torch float32 (sigmas = t / N, then the shift), so float32 here;
- default inference grid (``set_timesteps(n)``): NumPy float64 linspace, shift, shift_terminal and karras /
  exponential / beta resampling, rounded to float32 once at the end;
- custom ``timesteps`` or ``sigmas``: NumPy float32 arrays, so the shift and shift_terminal run in float32;
- ``timesteps = sigmas * N``, ``invert_sigmas`` and every step: torch float32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, check_choice
from . import noise_schedule as ns
from .base import Scheduler, SchedulerOutput, randn

logger = logging.getLogger("diffrt.schedulers")

f32 = np.float32


def calculate_shift(
    image_seq_len: float,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu for ``set_timesteps(mu=...)`` as SD3 / Flux pipelines choose it: linear in the image's token count,
    from ``base_shift`` at ``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len``."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept  # this order of operations, for bit-equal mu


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """SD3's fixed timestep shift shift * s / (1 + (shift - 1) s) under NumPy's promotion, as diffusers' inference
    grid computes it: a Python number keeps ``sigmas``' dtype, a NumPy float64 shift widens float32 sigmas."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_sigmas(num_train_timesteps: int, shift: float | None) -> np.ndarray:
    """(N,) float32 sigmas N/N .. 1/N, shifted unless ``shift`` is None (torch float32 in diffusers)."""
    n = num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"num_train_timesteps={n!r} is not supported; accepted: a positive integer.")
    sigmas = np.linspace(1, n, n, dtype=f32)[::-1] / f32(n)
    return sigmas if shift is None else shift_sigmas(sigmas, float(shift))  # torch: any scalar shift is weak


# torch evaluates a float16 tensor times a 0-d float32 tensor differently by operand order; diffusers' steps use both
def scalar_times(c, x: np.ndarray) -> np.ndarray:
    """c * x as torch computes (0-d float32 tensor) * tensor: c is first rounded to x's dtype."""
    return x.dtype.type(c) * x


def times_scalar(x: np.ndarray, c) -> np.ndarray:
    """x * c as torch computes tensor * (0-d float32 tensor or Python number): in float32 (or x's wider dtype),
    rounded once to x's dtype."""
    return (x * f32(c)).astype(x.dtype, copy=False)


def check_integer_timestep(timestep, owner: str) -> None:
    """diffusers refuses loop indices (ints) passed where a schedule timestep belongs."""
    if isinstance(timestep, (bool, np.bool_)):
        return
    if isinstance(timestep, (int, np.integer)) or (
        isinstance(timestep, np.ndarray) and np.issubdtype(timestep.dtype, np.integer)
    ):
        raise ConfigError(
            f"{owner}.step got timestep={timestep!r}, an integer index (e.g. from enumerate(timesteps)); "
            "accepted: one of scheduler.timesteps."
        )


class FlowMatchEulerDiscreteScheduler(Scheduler):
    """``sigmas`` holds the sigma of each ``timesteps`` entry (timestep = sigma * N), then 0 (1 when
    ``invert_sigmas``)."""

    _compatibles = ()
    order = 1
    # diffusers' class has no init_noise_sigma (its pipelines draw unit noise); 1.0 says the same to ours
    init_noise_sigma = 1.0
    sigmas: np.ndarray

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        self._setup_flow_tables()

    def _setup_flow_tables(self) -> None:
        cfg, name = self.config, type(self).__name__
        ns.check_sigma_schedule(cfg)
        check_choice("time_shift_type", cfg.time_shift_type, ("exponential", "linear"), name)
        n = cfg.num_train_timesteps
        self._shift = cfg.shift
        # with dynamic shifting the shift comes from mu at set_timesteps, so the table stays unshifted
        self.sigmas = training_sigmas(n, None if cfg.use_dynamic_shifting else cfg.shift)
        self.timesteps = self.sigmas * f32(n)
        self.sigma_min, self.sigma_max = float(self.sigmas[-1]), float(self.sigmas[0])
        self.num_inference_steps = None
        self._step_index = None
        self._begin_index = None

    # ----- the shift ----------------------------------------------------------------------------------------
    @property
    def shift(self) -> float:
        """The fixed shift ``set_timesteps`` applies (the config's, or the last ``set_shift``)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Use ``shift`` from the next ``set_timesteps`` on (the training table keeps the config's)."""
        self._shift = shift

    def _sigma_to_t(self, sigma):
        return sigma * self.config.num_train_timesteps

    def time_shift(self, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
        """Resolution-dependent shift of sigmas ``t`` (Esser et al. 2024, eq. 23): exponential
        e^mu / (e^mu + (1/t - 1)^sigma), or linear mu / (mu + (1/t - 1)^sigma). t = 0 maps to 0."""
        with np.errstate(divide="ignore"):
            odds = (1 / t - 1) ** sigma
        weight = math.exp(mu) if self.config.time_shift_type == "exponential" else mu
        return weight / (weight + odds)

    def stretch_shift_to_terminal(self, t: np.ndarray) -> np.ndarray:
        """Scale 1 - t so the schedule ends at ``shift_terminal`` instead of t[-1] (LTX-Video's rule)."""
        one_minus = 1 - t
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = one_minus[-1] / (1 - self.config.shift_terminal)
            return 1 - one_minus / scale

    # ----- the inference schedule ---------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """Choose the inference schedule: ``num_inference_steps`` evenly spaced sigmas, or explicit ``sigmas``
        and/or ``timesteps`` (one per step, no terminal value), each then shifted per config. ``mu`` is the
        resolution-dependent shift (required with ``use_dynamic_shifting``; see ``calculate_shift``). Explicit
        ``timesteps`` are kept as given; without ``sigmas`` they also give the sigmas (timesteps / N, shifted)."""
        cfg, name = self.config, type(self).__name__
        n_train = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting:
            if mu is None:
                raise ConfigError(f"{name}.set_timesteps needs mu when use_dynamic_shifting is true.")
            if not _finite(mu):
                raise ConfigError(f"mu={mu!r} is not supported; accepted: a finite number.")
        sigmas = _schedule_array("sigmas", sigmas)
        timesteps = _schedule_array("timesteps", timesteps)
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ConfigError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must have the same length.")
        given = sigmas if sigmas is not None else timesteps
        if num_inference_steps is None:
            if given is None:
                raise ConfigError(f"{name}.set_timesteps needs num_inference_steps, sigmas or timesteps.")
            num_inference_steps = len(given)
        elif isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ConfigError(f"num_inference_steps={num_inference_steps!r} is not supported; accepted: an integer.")
        elif num_inference_steps < 1:
            raise ConfigError(f"num_inference_steps={num_inference_steps!r} is not supported; accepted: 1 or more.")
        elif given is not None and len(given) != num_inference_steps:
            raise ConfigError(
                f"num_inference_steps={num_inference_steps} does not match the {len(given)} sigmas/timesteps given; "
                "pass as many sigmas/timesteps as steps, or leave num_inference_steps out."
            )
        n = int(num_inference_steps)
        if timesteps is not None and sigmas is None:
            logger.warning(
                "%s: timesteps were given without sigmas; the timesteps are used as given while the sigmas made "
                "from them are shifted, so the two may disagree. Pass sigmas too to set both.",
                name,
            )

        if sigmas is None:
            if timesteps is None:  # float64 from here until the float32 cast below
                sigmas = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min), n) / n_train
            else:
                sigmas = timesteps / n_train
        if cfg.use_dynamic_shifting:
            with np.errstate(divide="ignore"):
                sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, self.shift)
        if cfg.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        try:
            resampled = ns.resample_sigmas(cfg, sigmas, len(sigmas))
        except ValueError:  # diffusers fails the same way: math.log of a sigma bound <= 0
            raise ConfigError(
                f"use_exponential_sigmas spaces sigmas in log space, so the schedule's first and last sigmas (or the "
                f"config's sigma_max / sigma_min) must be above 0; this one runs from {sigmas[0]} to {sigmas[-1]}. "
                "End custom sigmas above 0, keep timesteps within num_train_timesteps and mu positive, or turn "
                "use_exponential_sigmas off."
            ) from None
        sigmas = (sigmas if resampled is None else resampled).astype(f32)
        if not np.isfinite(sigmas).all():  # diffusers carries the NaNs on and fails at the first step
            raise ConfigError(
                f"shift_terminal={cfg.shift_terminal} stretches a schedule whose last sigma is 1 (a single step or "
                "sigmas ending at 1) into NaNs; use more steps, lower final sigmas, or shift_terminal=null."
            )

        if timesteps is None:
            timesteps = sigmas * f32(n_train)
        end = f32(0)
        if cfg.invert_sigmas:  # Mochi: the model takes inverted sigmas; timesteps follow them
            sigmas = f32(1) - sigmas
            timesteps = sigmas * f32(n_train)
            end = f32(1)
        self.sigmas = np.append(sigmas, end).astype(f32)
        self.timesteps = timesteps.astype(f32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    # ----- forward process and step -------------------------------------------------------------------------
    def scale_noise(self, sample: np.ndarray, timestep, noise: np.ndarray | None = None) -> np.ndarray:
        """Flow-matching forward process x_sigma = sigma noise + (1 - sigma) sample at each of ``timestep`` (one
        per batch item, or one for all). With ``set_begin_index`` (image-to-image) the sigma is the begin / current
        step's, whatever the timestep, as in diffusers."""
        if noise is None:
            raise ConfigError(f"{type(self).__name__}.scale_noise needs noise (an array of the sample's shape).")
        timestep = np.atleast_1d(np.asarray(timestep))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timestep]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timestep)
        sigma = self.sigmas.astype(sample.dtype)[indices]
        sigma = sigma.reshape(sigma.shape + (1,) * (sample.ndim - 1))
        return sigma * noise + (1 - sigma) * sample

    def _step_sigmas(self, timestep) -> tuple[int, np.float32, np.float32]:
        """Index of this step and its (sigma, next sigma); refuses an index, a step before set_timesteps or past
        the end."""
        name = type(self).__name__
        check_integer_timestep(timestep, name)
        if self.num_inference_steps is None:
            raise ConfigError(f"{name}.step was called before set_timesteps.")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i + 1 >= len(self.sigmas):
            raise ConfigError(f"{name}.step: step {i} is past the end of the {len(self.timesteps)}-step schedule.")
        return i, self.sigmas[i], self.sigmas[i + 1]

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: np.random.Generator | int | None = None,
        per_token_timesteps: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One Euler step from sigmas[i] to sigmas[i + 1] with velocity ``model_output``. ``stochastic_sampling``
        instead re-noises the x0 estimate to the next sigma with fresh noise. ``per_token_timesteps`` (B, T) steps
        each token of a (B, T, C) sample from its own sigma to the next lower scheduled one (LTX conditioning; the
        model output is then the negated velocity, and the result stays float32). s_churn / s_tmin / s_tmax /
        s_noise are accepted and ignored, as in diffusers."""
        _, sigma, sigma_next = self._step_sigmas(timestep)
        x = sample.astype(f32)
        if per_token_timesteps is not None:
            token_sigmas = np.asarray(per_token_timesteps) / self.config.num_train_timesteps
            below = self.sigmas[:, None, None] < token_sigmas[None] - 1e-6
            sigma = token_sigmas[..., None]
            sigma_next = (below * self.sigmas[:, None, None]).max(axis=0)[..., None]
            if self.config.stochastic_sampling:
                x0 = x - sigma * model_output
                prev = (1 - sigma_next) * x0 + sigma_next * randn(x.shape, generator, f32)
            else:
                prev = x + (sigma - sigma_next) * model_output
            self._step_index += 1
            return SchedulerOutput(prev)
        if self.config.stochastic_sampling:
            x0 = x - scalar_times(sigma, model_output)
            prev = (f32(1) - sigma_next) * x0 + sigma_next * randn(x.shape, generator, f32)
        else:
            prev = x + scalar_times(sigma_next - sigma, model_output)
        self._step_index += 1
        return SchedulerOutput(prev.astype(model_output.dtype))


def _finite(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and bool(np.isfinite(value))
    )


def _schedule_array(what: str, values) -> np.ndarray | None:
    """Custom ``sigmas`` / ``timesteps`` as the 1-D float32 array diffusers makes of them."""
    if values is None:
        return None
    try:
        array = np.asarray(values).astype(f32)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise ConfigError(f"{what}={values!r} is not supported; accepted: a non-empty 1-D list of finite numbers.")
    return array
