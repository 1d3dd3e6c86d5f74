"""LoRA adapters fused into a CogVideoX transformer before it is traced (diffusers/PEFT files, as diffusers'
``CogVideoXPipeline.load_lora_weights`` + ``fuse_lora`` read them: the transformer is the only target)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..runtime.errors import CheckpointError
from ..runtime.lora import LoraSpec, lora_deltas, read_lora
from .lora_package import _once, lora_pickle_loader


def fuse_into_video_source(source, specs: Sequence[LoraSpec], allow_pickle: bool = False) -> tuple[Any, list]:
    """``source`` with each adapter's ``weight * alpha / rank * up @ down`` added to the transformer's weights,
    and one summary per adapter for the package's provenance."""
    import torch

    adapters = [read_lora(spec, pickle_loader=lora_pickle_loader(allow_pickle)) for spec in specs]
    for adapter in adapters:
        others = sorted(set(adapter.modules) - {"transformer"})
        if others:
            raise CheckpointError(
                f"LoRA file {adapter.path.name} targets {', '.join(others)}; a CogVideoX adapter may target only "
                "the transformer (diffusers loads CogVideoX LoRAs into the transformer alone)."
            )
    component = source.components["transformer"]
    state_dict = component.load_weights()
    targets = {"transformer": {k: tuple(v.shape) for k, v in state_dict.items() if getattr(v, "ndim", 0) >= 2}}
    deltas, summaries = lora_deltas(adapters, targets)
    for key, delta in deltas.get("transformer", {}).items():
        state_dict[key] = state_dict[key].float() + torch.from_numpy(np.ascontiguousarray(delta, dtype=np.float32))
    components = dict(source.components)
    components["transformer"] = replace(component, load_weights=_once(state_dict))
    return replace(source, components=components), summaries
