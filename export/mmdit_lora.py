"""LoRA adapters fused into an SD3 / Flux source before it is traced, with the numbers of diffusers'
``load_lora_weights`` + ``set_adapters`` + ``fuse_lora`` (formats and the kohya Flux mapping:
:mod:`diffrt.runtime.mmdit_lora`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..runtime.lora import LoraSpec, lora_deltas, read_lora
from ..runtime.mmdit_lora import TEXT_ENCODERS, diffusers_layout
from .lora_package import _once, lora_pickle_loader


def fuse_into_mmdit_source(source, specs: Sequence[LoraSpec], allow_pickle: bool = False) -> tuple[Any, list]:
    """``source`` with each adapter's ``weight * scale * up @ down`` added to the transformer's and the CLIP text
    encoders' weights, and one summary per adapter for the package's provenance."""
    import torch

    from .mmdit_package import is_flux

    flux = is_flux(source.pipeline_class)
    adapters = [read_lora(spec, pickle_loader=lora_pickle_loader(allow_pickle)) for spec in specs]
    loaded = {name: source.components[name].load_weights() for name in ("transformer", *TEXT_ENCODERS)}
    config = source.components["transformer"].config
    adapters = [diffusers_layout(a, flux, config, source.pipeline_class) for a in adapters]
    targets = {
        name: {k: tuple(v.shape) for k, v in sd.items() if getattr(v, "ndim", 0) >= 2} for name, sd in loaded.items()
    }
    deltas, summaries = lora_deltas(adapters, targets)
    components = dict(source.components)
    for name, state_dict in loaded.items():
        for key, delta in deltas.get(name, {}).items():
            state_dict[key] = state_dict[key].float() + torch.from_numpy(np.ascontiguousarray(delta, np.float32))
        components[name] = replace(components[name], load_weights=_once(state_dict))
    return replace(source, components=components), summaries
