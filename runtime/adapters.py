"""LoRA adapters chosen at run time, fed through the LoRA slots of a package exported with ``--lora-slots``.

A slotted graph (:mod:`diffrt.kernels.lora_slots`) takes, beside each Linear / Conv weight, two inputs ``down`` and
``up`` whose default is rank 0. :class:`AdapterRegistry` holds the adapters loaded into one package (shared by every
pipeline over it, as diffusers' ``from_pipe`` shares modules), each converted once into the slots' layout; for a set
of adapters with weights it builds the feeds of every network: per slot, the adapters' factors concatenated along
the rank, each adapter's ``weight * alpha / rank`` folded into its ``up`` rows. That is what diffusers' PEFT layers
compute (``base(x) + sum_i w_i * s_i * B_i(A_i(x))``), one product per slot. Feeds are cached per adapter set, so a
call pays the concatenation once per set, and the registry's lock keeps concurrent loads, deletes and calls apart.

The state diffusers keeps (loaded adapters, the active set and its weights, enabled or not) lives here; a call
takes a snapshot of it when it starts (:meth:`AdapterRegistry.snapshot`), so changing adapters while other calls run
changes only later calls, and ``pipe(..., adapters={...})`` overrides it for one call without touching it.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.lora_slots import Slot, read_slots
from .errors import CheckpointError, ConfigError, PackageError
from .lora import DIFFUSERS_LORA_FILE, MAX_WEIGHT, LoraAdapter, LoraSpec, lora_from_tensors, read_lora, resolve_modules

__all__ = ["AdapterFeeds", "AdapterRegistry", "ActiveAdapters", "LORA_NETWORKS", "NO_SLOTS", "check_adapter_weights"]

LORA_NETWORKS = ("unet", "text_encoder", "text_encoder_2", "transformer")
NO_SLOTS = (
    "was exported without LoRA slots, so adapters cannot be loaded at run time; export it with "
    "`diffrt export SOURCE OUT --lora-slots`, or fuse the adapter into a copy with `diffrt lora apply`"
)
FEEDS_CACHED = 16  # adapter sets whose feeds are kept (a server cycling through styles reuses them)

Weight = float | Mapping[str, float]
ActiveAdapters = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
"""A resolved adapter set: ((name, ((network, weight), ...)), ...), hashable; the key of the feeds cache."""


def _weight(owner: str, value: Any) -> float:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise ConfigError(
            f"{owner}={value!r} is not supported; accepted: a finite number from -{MAX_WEIGHT:g} to {MAX_WEIGHT:g} "
            "(1.0 applies the adapter as trained), or a dict of such numbers by component."
        )
    return float(value)


def check_adapter_weights(owner: str, weight: Any) -> Weight:
    """An adapter's weight as ``set_adapters`` and ``adapters=`` take it: a number, or ``{component: number}``
    (``"unet"``, ``"text_encoder"``, ``"text_encoder_2"``; components left out get 1.0)."""
    if isinstance(weight, Mapping):
        unknown = [key for key in weight if key not in LORA_NETWORKS]
        if unknown:
            raise ConfigError(
                f"{owner} names {unknown[0]!r}; accepted: a number, or a dict whose keys are among "
                f"{', '.join(LORA_NETWORKS)} (diffusers' per-block UNet weights are not supported)."
            )
        return {key: _weight(f"{owner}[{key!r}]", value) for key, value in weight.items()}
    return _weight(owner, weight)


def _per_network(weight: Weight) -> tuple[tuple[str, float], ...]:
    if isinstance(weight, Mapping):
        return tuple((network, float(weight.get(network, 1.0))) for network in LORA_NETWORKS)
    return tuple((network, float(weight)) for network in LORA_NETWORKS)


@dataclass(frozen=True)
class _Factors:
    """One adapter module in its slot's layout (linear: down (in, r), up (r, out); conv: down (r, in, kh, kw),
    up (out, r, 1, 1)), unscaled, and its ``alpha / rank``."""

    down: np.ndarray
    up: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[1] if self.down.ndim == 2 else self.down.shape[0])


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    source: str
    format: str
    factors: dict[str, dict[str, _Factors]]
    """network -> slot parameter -> factors."""


@dataclass(frozen=True)
class AdapterFeeds:
    """What one call feeds each slotted network: ``feeds[network]`` = {input name: array} (empty: base weights)."""

    adapters: ActiveAdapters
    feeds: Mapping[str, Mapping[str, np.ndarray]]

    def of(self, network: str) -> dict[str, np.ndarray]:
        return dict(self.feeds.get(network, {}))


EMPTY_FEEDS = AdapterFeeds((), {})


def _slot_factors(slot: Slot, down: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rank = down.shape[0]
    if slot.kind == "linear":
        return (
            np.ascontiguousarray(down.reshape(rank, -1).T, dtype=np.float32),
            np.ascontiguousarray(up.reshape(up.shape[0], rank).T, dtype=np.float32),
        )
    kernel_down = down if down.ndim == 4 else down.reshape(rank, -1, 1, 1)
    return (
        np.ascontiguousarray(kernel_down, dtype=np.float32),
        np.ascontiguousarray(up.reshape(up.shape[0], rank, 1, 1), dtype=np.float32),
    )


class AdapterRegistry:
    """The adapters loaded into one package and the active set, with diffusers' names for what can be done."""

    def __init__(self, package: str | os.PathLike, slots: Mapping[str, Sequence[Slot]], rank_max: int):
        self.package = Path(package)
        self.slots = {network: {slot.parameter: slot for slot in found} for network, found in slots.items()}
        self.rank_max = int(rank_max)
        self._lock = threading.RLock()
        self._adapters: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._active: tuple[tuple[str, Weight], ...] = ()
        self._enabled = True
        self._feeds: OrderedDict[ActiveAdapters, AdapterFeeds] = OrderedDict()
        self._loads = 0  # adapters ever loaded: diffusers names unnamed ones default_0, default_1, ...

    @classmethod
    def for_package(cls, path: str | os.PathLike, networks: Iterable[str]) -> AdapterRegistry | None:
        """The registry of the package at ``path`` whose networks are ``networks``; None when it has no slots."""
        found: dict[str, list[Slot]] = {}
        rank_max = 0
        for network in networks:
            if network not in LORA_NETWORKS:
                continue
            try:
                read = read_slots(Path(path) / network)
            except ValueError as error:
                raise PackageError(
                    f"{error}; export the package again with `diffrt export ... --lora-slots`."
                ) from None
            if read is not None:
                found[network], rank = read
                rank_max = max(rank_max, rank)
        return cls(path, found, rank_max) if found else None

    # ----- loading ------------------------------------------------------------------------------------------------
    def targets(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Each slotted network's weights by torch parameter name and shape, what adapters are resolved against."""
        shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        for network, slots in self.slots.items():
            shapes[network] = {
                name: (s.out_features, s.in_features, *s.kernel)
                if s.kind == "conv"
                else (s.out_features, s.in_features)
                for name, s in slots.items()
            }
        return shapes

    def read(self, source: Any, weight_name: str | None = None) -> LoraAdapter:
        """A LoRA file, a save_lora_weights folder (``weight_name``: the file in it) or a state dict, read (and, for
        an SD3 / Flux package, put in the layout diffusers loads it in: :mod:`.mmdit_lora`)."""
        return self._layout(self._read(source, weight_name))

    def _layout(self, adapter: LoraAdapter) -> LoraAdapter:
        from .mmdit_lora import FLUX_PIPELINES, SD3_PIPELINES, diffusers_layout
        from .schema import INDEX_NAME, read_json

        pipeline = read_json(self.package / INDEX_NAME).get("_class_name", "")
        if pipeline not in (*SD3_PIPELINES, *FLUX_PIPELINES):
            return adapter
        config = read_json(self.package / "transformer" / "config.json")
        return diffusers_layout(adapter, pipeline in FLUX_PIPELINES, config, pipeline)

    def _read(self, source: Any, weight_name: str | None = None) -> LoraAdapter:
        if isinstance(source, Mapping):
            return lora_from_tensors(source)
        if not isinstance(source, (str, os.PathLike)):
            raise CheckpointError(
                f"pretrained_model_name_or_path_or_dict={type(source).__name__} is not accepted; accepted: a LoRA "
                "file, a folder holding one, or a state dict of arrays."
            )
        path = Path(source)
        if weight_name is not None:
            path = path / weight_name
        elif path.is_dir() and not (path / DIFFUSERS_LORA_FILE).is_file():
            found = sorted(path.glob("*.safetensors"))
            if len(found) == 1:  # diffusers picks a folder's only safetensors file too
                path = found[0]
        if not path.exists():
            raise CheckpointError(
                f"LoRA path {str(path)!r} does not exist; accepted: a local LoRA file, a folder holding one, or a "
                "state dict (nothing is downloaded from a model hub at run time)."
            )
        return read_lora(LoraSpec(path))

    def convert(self, name: str, adapter: LoraAdapter) -> LoadedAdapter:
        """``adapter`` resolved against the slots (diffrt export --lora's checks and messages) in slot layout."""
        resolved = resolve_modules(adapter, self.targets())
        factors: dict[str, dict[str, _Factors]] = {}
        for (network, parameter), module in resolved.items():
            slot = self.slots[network][parameter]
            down, up = _slot_factors(slot, np.asarray(module.down), np.asarray(module.up))
            factors.setdefault(network, {})[parameter] = _Factors(down, up, module.scale)
        return LoadedAdapter(name, str(adapter.path), adapter.format, factors)

    def load(self, source: Any, adapter_name: str | None = None, weight_name: str | None = None) -> str:
        """Read, check and register an adapter; it becomes the active set (as diffusers activates a new adapter).
        Returns its name (``default_N`` when none is given)."""
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name):
            raise ConfigError(f"adapter_name={adapter_name!r} is not accepted; accepted: None or a non-empty string.")
        with self._lock:
            name = adapter_name if adapter_name is not None else f"default_{self._loads}"
            self._check_free(name)
        loaded = self.convert(name, self.read(source, weight_name))  # the slow part runs outside the lock
        with self._lock:
            self._check_free(name)
            self._adapters[name] = loaded
            self._loads += 1
            self._active = ((name, 1.0),)
        return name

    def _check_free(self, name: str) -> None:
        if name in self._adapters:
            raise ConfigError(
                f"adapter_name={name!r} is already loaded; accepted: a new name (loaded: {', '.join(self._adapters)}), "
                "or delete_adapters first."
            )

    # ----- the active set -----------------------------------------------------------------------------------------
    def _known(self, names: Sequence[str], owner: str) -> None:
        missing = [name for name in names if name not in self._adapters]
        if missing:
            loaded = ", ".join(map(repr, self._adapters)) or "none"
            raise ConfigError(f"{owner} names {', '.join(map(repr, missing))}, not loaded; loaded adapters: {loaded}.")

    def set_active(self, names: str | Sequence[str], weights: Any = None) -> None:
        """diffusers' ``set_adapters``: ``weights`` None (1.0 each), one weight for all, or one per name."""
        names = [names] if isinstance(names, str) else list(names)
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"adapter_names={names!r} is not accepted; accepted: distinct adapter names.")
        if weights is None:
            weights = [1.0] * len(names)
        elif not isinstance(weights, (list, tuple)):
            weights = [weights] * len(names)
        if len(weights) != len(names):
            raise ConfigError(
                f"adapter_weights has {len(weights)} weights for {len(names)} adapters; accepted: None, one weight "
                "for all, or one per adapter name."
            )
        checked = [check_adapter_weights(f"adapter_weights[{i}]", w) for i, w in enumerate(weights)]
        with self._lock:
            self._known(names, "set_adapters")
            self._active = tuple(zip(names, checked))

    def active_names(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self._active]

    def listing(self) -> dict[str, list[str]]:
        """diffusers' ``get_list_adapters``: component -> the adapters that touch it."""
        with self._lock:
            listed: dict[str, list[str]] = {}
            for name, loaded in self._adapters.items():
                for network in LORA_NETWORKS:
                    if loaded.factors.get(network):
                        listed.setdefault(network, []).append(name)
            return listed

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self._enabled = enabled

    def delete(self, names: str | Sequence[str]) -> None:
        names = [names] if isinstance(names, str) else list(names)
        with self._lock:
            self._known(names, "delete_adapters")
            for name in names:
                del self._adapters[name]
            self._active = tuple((n, w) for n, w in self._active if n not in names)
            self._feeds.clear()

    def unload(self) -> None:
        with self._lock:
            self._adapters.clear()
            self._active = ()
            self._feeds.clear()

    # ----- what a call runs with ----------------------------------------------------------------------------------
    def snapshot(self, override: Mapping[str, Any] | None = None) -> ActiveAdapters:
        """The set a call runs with: ``override`` ({name: weight}, {} for none) or the pipeline's active set (none
        while disabled), checked against the loaded adapters, resolved to per-network weights."""
        with self._lock:
            if override is None:
                chosen = self._active if self._enabled else ()
            else:
                self._known(list(override), "adapters")
                chosen = tuple(override.items())
            return tuple((name, _per_network(weight)) for name, weight in chosen)

    def feeds(self, adapters: ActiveAdapters) -> AdapterFeeds:
        """Every slotted network's feeds for ``adapters`` (cached per set)."""
        if not adapters:
            return EMPTY_FEEDS
        with self._lock:
            cached = self._feeds.get(adapters)
            if cached is not None:
                self._feeds.move_to_end(adapters)
                return cached
            loaded = [(self._adapters[name], dict(weights)) for name, weights in adapters]
        built = AdapterFeeds(adapters, {net: self._network_feeds(net, loaded) for net in self.slots})
        with self._lock:
            if all(name in self._adapters for name, _ in adapters):  # not deleted meanwhile
                self._feeds[adapters] = built
                while len(self._feeds) > FEEDS_CACHED:
                    self._feeds.popitem(last=False)
        return built

    def _network_feeds(self, network: str, loaded: list[tuple[LoadedAdapter, dict[str, float]]]) -> dict[str, Any]:
        parts: dict[str, list[tuple[_Factors, float]]] = {}
        for adapter, weights in loaded:
            weight = weights.get(network, 1.0)
            if weight == 0.0:
                continue
            for parameter, factors in adapter.factors.get(network, {}).items():
                parts.setdefault(parameter, []).append((factors, weight))
        feeds: dict[str, np.ndarray] = {}
        for parameter, pieces in parts.items():
            slot = self.slots[network][parameter]
            rank = sum(f.rank for f, _ in pieces)
            if rank > self.rank_max:
                names = ", ".join(a.name for a, _ in loaded)
                raise ConfigError(
                    f"adapters {names} give {network} {slot.module} rank {rank}, more than the {self.rank_max} the "
                    f"package's slots were exported for; accepted: adapters whose ranks add up to at most "
                    f"{self.rank_max}, or a package exported with a larger --lora-slots RANK_MAX."
                )
            # One float32 multiply of each up by weight * alpha / rank, as PEFT's scaling does.
            ups = [f.up * np.float32(weight * f.scale) for f, weight in pieces]
            axis_down, axis_up = (1, 0) if slot.kind == "linear" else (0, 1)
            feeds[slot.down] = np.ascontiguousarray(np.concatenate([f.down for f, _ in pieces], axis=axis_down))
            feeds[slot.up] = np.ascontiguousarray(np.concatenate(ups, axis=axis_up))
        return feeds
