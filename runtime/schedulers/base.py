"""The one scheduler base: config handling, step-index bookkeeping and noise draws shared by every scheduler.

Schedulers are built from a diffusers ``scheduler_config.json`` unchanged. Each subclass declares its config
fields as keyword arguments of ``__init__`` with diffusers' names and defaults; the base records the bound values
in ``self.config`` so ``scheduler.config.num_train_timesteps`` reads as in diffusers.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, PackageError

logger = logging.getLogger("diffrt.schedulers")

CONFIG_NAME = "scheduler_config.json"
DEFAULTED = "_use_default_values"  # diffusers' name for the config fields that took their defaults

# Every scheduler class, by diffusers class name; filled by Scheduler.__init_subclass__.
SCHEDULERS: dict[str, type[Scheduler]] = {}

# diffusers' KarrasDiffusionSchedulers: the family whose members swap for one another through from_config (each
# lists the others in ``_compatibles``, as in diffusers).
KARRAS_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)


class SchedulerConfig(dict):
    """The scheduler's configuration: a dict whose keys also read as attributes (``config.prediction_type``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no field {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("scheduler config is read-only; build a new scheduler with from_config(config, **changes)")

    __setattr__ = __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only

    def __reduce__(self):  # copy / deepcopy / pickle rebuild it whole instead of item by item
        return (type(self), (dict(self),))


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the sample at the next (less noisy) timestep and, where defined, the x0 estimate."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray | None = None

    def __iter__(self):  # lets `prev, x0 = scheduler.step(...)` unpack like diffusers' return_dict=False tuples
        yield self.prev_sample
        yield self.pred_original_sample


def as_generator(generator: np.random.Generator | int | None) -> np.random.Generator:
    """Accept a NumPy Generator, an int seed or None (fresh entropy) and return a Generator."""
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None:
        return np.random.default_rng()
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise ConfigError(
        f"generator={generator!r} is not supported; accepted: a numpy.random.Generator, an int seed, or None."
    )


def randn(shape: tuple[int, ...], generator: np.random.Generator | int | None, dtype=np.float32) -> np.ndarray:
    """Standard normal noise of ``shape``: one draw of the whole shape, as diffusers' ``randn_tensor`` makes it."""
    return as_generator(generator).standard_normal(size=tuple(shape), dtype=np.float32).astype(dtype, copy=False)


class Scheduler:
    """Base of all NumPy schedulers. Subclasses set ``order`` and implement ``set_timesteps`` and ``step``."""

    order: ClassVar[int] = 1
    abstract: ClassVar[bool] = True
    # Names of the schedulers this one swaps with through from_config, as diffusers' ``_compatibles`` lists them.
    _compatibles: ClassVar[tuple[str, ...]] = ()
    config: SchedulerConfig
    timesteps: np.ndarray

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("abstract", False):  # shared bases mark themselves abstract
            SCHEDULERS[cls.__name__] = cls
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_config(cls.__init__)

    # ----- construction from a diffusers config -------------------------------------------------------------
    @classmethod
    def config_fields(cls) -> dict[str, Any]:
        """The config fields this scheduler honours, with their defaults (read once from ``__init__``)."""
        if "_config_fields" not in cls.__dict__:
            params = inspect.signature(cls.__init__).parameters
            cls._config_fields = {
                n: p.default
                for n, p in params.items()
                if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            }
        return dict(cls._config_fields)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> Scheduler:
        """Build from a diffusers scheduler config: a dict, a ``scheduler_config.json`` path, or its folder.

        Fields this scheduler does not use are ignored: silently when another scheduler uses them (configs are
        shared between compatible schedulers, as in diffusers), with a warning when no scheduler knows them.

        As in diffusers, the new ``config`` keeps the fields other schedulers use (``B.from_config(a.config)``
        carries the file's ``clip_sample`` on to B), and lists in ``_use_default_values`` the fields that took
        defaults: a config handed to another scheduler passes on only values that were chosen, never A's defaults.
        """
        if not isinstance(config, Mapping):
            config = load_config(config)
        config = dict(config)
        defaulted = set(config.pop(DEFAULTED, None) or ())
        merged = {**{k: v for k, v in config.items() if k not in defaulted}, **overrides}
        fields = cls.config_fields()
        unknown = sorted(k for k in merged if k not in fields and not k.startswith("_") and k not in _known_fields())
        if unknown:
            logger.warning(
                "%s ignores unknown scheduler config fields %s (not used by any diffrt scheduler).",
                cls.__name__,
                ", ".join(unknown),
            )
        scheduler = cls(**{k: v for k, v in merged.items() if k in fields})
        scheduler._rewrite_config(**{k: v for k, v in merged.items() if k not in fields and k in _known_fields()})
        return scheduler

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = "scheduler") -> Scheduler:
        """Build from a model or engine package folder (``<path>/scheduler/scheduler_config.json``)."""
        folder = Path(path)
        if subfolder and (folder / subfolder / CONFIG_NAME).is_file():
            folder = folder / subfolder
        return cls.from_config(folder)

    def save_config(self, folder: str | os.PathLike) -> Path:
        """Write ``scheduler_config.json`` as diffusers writes it (with ``_class_name``)."""
        out = Path(folder) / CONFIG_NAME
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in self.config.items() if k != DEFAULTED}
        data = {"_class_name": type(self).__name__, **_jsonable(fields)}
        out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return out

    @property
    def compatibles(self) -> list[type[Scheduler]]:
        """This class and the diffrt schedulers diffusers lists as swappable with it (``_compatibles``), by name."""
        return type(self).compatible_classes()

    @classmethod
    def compatible_classes(cls) -> list[type[Scheduler]]:
        names = {cls.__name__, *cls._compatibles}
        return [SCHEDULERS[name] for name in sorted(names) if name in SCHEDULERS]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ----- step-index bookkeeping, as diffusers keeps it -----------------------------------------------------
    _step_index: int | None = None
    _begin_index: int | None = None
    num_inference_steps: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step``; None until the first step or ``scale_model_input``."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index to run, set by image-to-image pipelines with ``set_begin_index``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start denoising at ``timesteps[begin_index]`` (image-to-image: the index ``strength`` selects)."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: float, schedule_timesteps: np.ndarray | None = None) -> int:
        """Position of ``timestep`` in the schedule. When it occurs twice (second-order schedulers repeat
        timesteps), the second occurrence is taken so a run started mid-schedule does not skip a sigma."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = np.flatnonzero(schedule == np.asarray(timestep).reshape(()))
        if len(matches) == 0:
            raise ConfigError(
                f"timestep={float(np.asarray(timestep))} is not in this scheduler's timesteps; pass one of "
                "scheduler.timesteps (after set_timesteps)."
            )
        return int(matches[1] if len(matches) > 1 else matches[0])

    def _init_step_index(self, timestep: float) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _check_num_inference_steps(self, num_inference_steps: Any) -> int:
        limit = self.config.num_train_timesteps
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, (int, np.integer))
            or not 1 <= num_inference_steps <= limit
        ):
            raise ConfigError(
                f"num_inference_steps={num_inference_steps!r} is not supported by {type(self).__name__}; "
                f"accepted: an integer from 1 to num_train_timesteps ({limit})."
            )
        return int(num_inference_steps)

    def scale_model_input(self, sample: np.ndarray, timestep: float | None = None) -> np.ndarray:
        """Input scaling the model expects at ``timestep``; identity unless the scheduler works in sigma space."""
        return sample

    def set_timesteps_for_strength(self, num_inference_steps: int, strength: float, **custom: Any) -> np.ndarray:
        """Image-to-image entry point: ``set_timesteps(num_inference_steps)`` (or ``set_timesteps(**custom)`` for a
        custom ``timesteps=`` / ``sigmas=`` schedule, whose length then counts the steps, as in diffusers), then skip
        the first ``1 - strength`` of the schedule and mark where denoising begins. Returns the timesteps left to
        run; the first of them is the one to ``add_noise`` at."""
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"strength={strength!r} is not supported; accepted: a number from 0 to 1.")
        if custom:
            self.set_timesteps(**custom)
            num_inference_steps = len(self.timesteps)
        else:
            self.set_timesteps(num_inference_steps)
        init_steps = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_steps, 0)
        self.set_begin_index(t_start * self.order)
        return self.timesteps[t_start * self.order :]

    def _rewrite_config(self, **changes: Any) -> None:
        """Change recorded config fields, as diffusers' ``register_to_config`` does when a scheduler remaps a
        choice (e.g. a sibling scheduler's solver name) or adjusts one for the step count."""
        for key, value in changes.items():
            dict.__setitem__(self.config, key, value)

    def _require_timesteps(self) -> None:
        """Schedulers whose step needs the inference schedule refuse to step before ``set_timesteps``."""
        if self.num_inference_steps is None:
            raise ConfigError(f"{type(self).__name__}.step was called before set_timesteps(num_inference_steps).")

    def _start_step(self, timestep) -> int:
        """Index of the step at ``timestep``: refuses a step before ``set_timesteps`` or past the schedule's end."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        self._check_step_in_range()
        return self._step_index

    def _check_step_in_range(self) -> None:
        """A schedule whose first timestep repeats (truncated beta / exponential sigmas) starts at the second copy,
        as diffusers does, and so runs out one step early; say so instead of failing on an index."""
        n = len(self.timesteps)
        if self._step_index >= n:
            raise ConfigError(
                f"step {self._step_index} is past the end of the {n}-step schedule (its first timestep repeats, so "
                "the run started at the second copy, as in diffusers); call set_begin_index(0) or use other steps."
            )

    # ----- the surface every scheduler implements --------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray, generator=None) -> SchedulerOutput:
        raise NotImplementedError  # pragma: no cover - abstract


@functools.cache
def _known_fields_of(*classes: type[Scheduler]) -> frozenset[str]:
    return frozenset().union(*(c.config_fields() for c in classes))


def _known_fields() -> frozenset[str]:
    """Every config field some registered scheduler uses (configs are shared between compatible schedulers)."""
    return _known_fields_of(*SCHEDULERS.values())


def _recording_config(init):
    """Wrap a subclass ``__init__`` so the values it was called with (defaults filled in) become ``self.config``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        if "config" not in self.__dict__:  # the outermost __init__ in a subclass chain records
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as error:
                raise ConfigError(f"{type(self).__name__}: {error}") from None
            given = set(bound.arguments)
            for name in given - {"self"}:
                parameter = signature.parameters[name]
                _check_field(type(self).__name__, name, bound.arguments[name], parameter.annotation)
            bound.apply_defaults()
            values = {k: v for k, v in bound.arguments.items() if k != "self"}
            values[DEFAULTED] = sorted(k for k in values if k not in given)
            object.__setattr__(self, "config", SchedulerConfig(values))
        init(self, *args, **kwargs)

    return wrapper


_FIELD_KINDS = {
    "bool": ("true or false", lambda v: isinstance(v, (bool, np.bool_)) or (isinstance(v, int) and v in (0, 1))),
    "int": ("an integer", lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))),
    # ±infinity is a value some fields take on purpose (DPM-Solver's lambda_min_clipped=-inf); NaN never is
    "float": ("a number", lambda v: _number(v)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "Sequence[float]": ("a list of finite numbers", lambda v: _number_list(v, _finite_number)),
    "Sequence[int]": (
        "a list of integers",
        lambda v: _number_list(v, lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool)),
    ),
}


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and not bool(np.isnan(value))
    )


def _finite_number(value: Any) -> bool:
    return _number(value) and bool(np.isfinite(value))


def _number_list(value: Any, item_ok) -> bool:
    items = value.tolist() if isinstance(value, np.ndarray) else value
    return isinstance(items, (list, tuple)) and all(item_ok(x) for x in items)


def _check_field(owner: str, name: str, value: Any, annotation: Any) -> None:
    """A config value of the kind the scheduler declares (from its ``__init__`` annotation), or a ConfigError
    naming the field: a string where a number belongs would otherwise fail deep inside NumPy."""
    if not isinstance(annotation, str):
        return
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return
        accepted = _FIELD_KINDS.get(kinds[0], (kinds[0],))[0]
    else:
        known = [kind for kind in kinds if kind in _FIELD_KINDS]
        if not known or any(_FIELD_KINDS[kind][1](value) for kind in known):
            return
        accepted = " or ".join(_FIELD_KINDS[kind][0] for kind in known)
    if "None" in kinds:
        accepted += " (or null)"
    raise ConfigError(f"{owner}: scheduler config field {name}={value!r} is not accepted; accepted: {accepted}.")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a diffusers ``scheduler_config.json`` (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.is_file():
        raise PackageError(f"scheduler config {str(p)!r} does not exist; expected a diffusers {CONFIG_NAME}.")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"scheduler config {str(p)!r} is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"scheduler config {str(p)!r} must hold a JSON object of fields.")
    return data


def scheduler_from_config(config: Mapping[str, Any] | str | os.PathLike, **overrides: Any) -> Scheduler:
    """Build the scheduler a config names in ``_class_name`` (as a package's scheduler folder records it)."""
    if not isinstance(config, Mapping):
        config = load_config(config)
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ConfigError(
            f"scheduler _class_name={name!r} is not supported; accepted: {', '.join(sorted(SCHEDULERS))}."
        )
    return SCHEDULERS[name].from_config(config, **overrides)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in values.items()}
