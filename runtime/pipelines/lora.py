"""diffusers' LoRA methods on the runtime pipelines, over the package's adapter registry (:mod:`..adapters`).

``load_lora_weights``, ``set_adapters``, ``get_active_adapters``, ``get_list_adapters``, ``disable_lora``,
``enable_lora``, ``delete_adapters`` and ``unload_lora_weights`` take diffusers' arguments and change the state every
later call of every pipeline over the same package starts from (``from_pipe`` shares it, as diffusers shares the
modules). A call's own ``adapters={name: weight}`` replaces that state for the call alone. Adapters reach the
graphs through LoRA slots, so the package must have been exported with ``--lora-slots``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..adapters import EMPTY_FEEDS, NO_SLOTS, AdapterFeeds, AdapterRegistry
from ..errors import ConfigError

# diffusers' load_lora_weights keywords that change nothing here (memory strategies of torch modules).
_IGNORED_LOAD_KEYWORDS = ("low_cpu_mem_usage", "local_files_only")


class LoraLoaderMixin:
    """Run-time LoRA for pipelines over a package exported with LoRA slots."""

    package: Any

    def _lora_registry(self) -> AdapterRegistry:
        registry = self.package.adapters
        if registry is None:
            raise ConfigError(f"the engine package {str(self.package.path)!r} {NO_SLOTS}.")
        return registry

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        adapter_name: str | None = None,
        weight_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Load a LoRA (file, ``save_lora_weights`` folder with ``weight_name``, or state dict) into the UNet and
        text encoder(s) it has modules for; it becomes the active adapter. Formats: diffusers / PEFT, the older
        attention-processor keys, kohya (LoCon and SDXL's LDM names included), as ``diffrt export --lora`` reads."""
        unknown = [key for key in kwargs if key not in _IGNORED_LOAD_KEYWORDS]
        if unknown:
            raise ConfigError(
                f"load_lora_weights got {', '.join(map(repr, unknown))}; accepted: adapter_name, weight_name "
                f"(and {', '.join(_IGNORED_LOAD_KEYWORDS)}, which change nothing here)."
            )
        self._lora_registry().load(pretrained_model_name_or_path_or_dict, adapter_name, weight_name)

    def set_adapters(
        self, adapter_names: str | Sequence[str], adapter_weights: float | Sequence[Any] | None = None
    ) -> None:
        """Make ``adapter_names`` the active set, each with its weight (None: 1.0 each; a number: all; a list: one
        per name; a weight may also be ``{"unet": w, "text_encoder": w}``)."""
        self._lora_registry().set_active(adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        registry = self.package.adapters
        return registry.active_names() if registry is not None else []

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Component -> the loaded adapters that have modules for it."""
        registry = self.package.adapters
        return registry.listing() if registry is not None else {}

    def disable_lora(self) -> None:
        """Generate with the base weights until :meth:`enable_lora`; the active set is kept."""
        self._lora_registry().set_enabled(False)

    def enable_lora(self) -> None:
        self._lora_registry().set_enabled(True)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        self._lora_registry().delete(adapter_names)

    def unload_lora_weights(self) -> None:
        """Remove every loaded adapter: calls run on the base weights again."""
        registry = self.package.adapters
        if registry is not None:
            registry.unload()

    def fuse_lora(self, *args: Any, **kwargs: Any) -> None:
        """Not offered: a slotted package adds adapters per call, and its weights are never rewritten in place."""
        raise ConfigError(
            "fuse_lora is not supported on a running pipeline (a slotted package adds adapters per call and never "
            "rewrites its weights); accepted: set_adapters for run-time adapters, or `diffrt lora apply PACKAGE OUT "
            "--lora FILE:WEIGHT` (or export with --lora) for a package with the adapters fused, at no per-step cost."
        )

    def unfuse_lora(self, *args: Any, **kwargs: Any) -> None:
        self.fuse_lora()

    # ----- per call ---------------------------------------------------------------------------------------------
    def adapter_feeds(self, adapters: Mapping[str, Any] | AdapterFeeds | None = None) -> AdapterFeeds:
        """What the networks are fed for ``adapters``: a call's resolved set as it is, ``{name: weight}`` for those
        adapters alone (``{}``: none), or None for the pipeline's active set."""
        if isinstance(adapters, AdapterFeeds):
            return adapters
        registry = self.package.adapters
        if registry is None:
            if adapters:
                raise ConfigError(f"adapters={dict(adapters)!r}: the engine package {NO_SLOTS}.")
            return EMPTY_FEEDS
        return registry.feeds(registry.snapshot(adapters))
