"""The T5 text encoder of CogVideoX pipelines as a torch module under its contract, ready for ``export_graph``.

transformers' ``T5EncoderModel`` is built from the component's config on the meta device (no random init: the
real encoder, T5 v1.1 XXL, holds 4.8 B parameters) and given the float32 weights by exact name. Checkpoints keep
the token embedding once, as ``shared.weight`` (transformers' save) or ``encoder.embed_tokens.weight``; the other
name is filled from it. Attention is transformers' eager softmax(QK^T + position bias)V, which traces to plain
ONNX ops with a dynamic sequence axis (T5's relative-position buckets are computed in the graph).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from diffrt.runtime.errors import CheckpointError
from diffrt.runtime.networks import T5_SEQUENCE_LENGTH as DEFAULT_SEQUENCE_LENGTH
from diffrt.runtime.networks import Network, t5_encoder_network

from . import weights
from .components import load_strict
from .onnx_export import GraphModule
from .source import Component

T5_CLASS = "T5EncoderModel"
EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")


def build_t5_encoder(
    folder_or_model: str | os.PathLike | Component | torch.nn.Module,
    sequence_length: int = DEFAULT_SEQUENCE_LENGTH,
    name: str = "text_encoder",
) -> tuple[Network, GraphModule]:
    """(network, graph module) of a T5 encoder given as a component folder (config.json + safetensors, local
    files only), a source :class:`Component`, or a loaded ``transformers.T5EncoderModel``."""
    import transformers

    if isinstance(folder_or_model, transformers.T5EncoderModel):
        model = folder_or_model.float().eval()
        model.config._attn_implementation = "eager"
        config = model.config.to_dict()
    else:
        config, state_dict, where = _config_and_weights(folder_or_model)
        model = _t5_encoder(config, state_dict, where)
    network = t5_encoder_network(config, sequence_length, name=name)
    return network, GraphModule(model, network, _last_hidden_state)


def _last_hidden_state(model, input_ids):
    return (model(input_ids=input_ids).last_hidden_state,)


def _config_and_weights(source: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    if isinstance(source, Component):
        if source.class_name != T5_CLASS:
            raise CheckpointError(f"{source.name} is a {source.class_name}; accepted: a {T5_CLASS}.")
        return source.config, source.load_weights(), source.name
    if not isinstance(source, (str, os.PathLike)):
        raise CheckpointError(
            f"T5 encoder source {source!r} is not supported; accepted: a folder, a Component or a {T5_CLASS}."
        )
    folder = Path(source)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"T5 encoder folder {str(folder)!r} has no config.json; accepted: a {T5_CLASS} folder.")
    config = weights.read_json(config_path)
    architectures = config.get("architectures") or [T5_CLASS]
    if config.get("model_type", "t5") != "t5" or T5_CLASS not in architectures:
        raise CheckpointError(
            f"{str(config_path)!r} describes {architectures} (model_type {config.get('model_type')!r}); accepted: "
            f"a {T5_CLASS}."
        )
    return config, weights.load_component_weights(folder, allow_pickle=False), str(folder)


def _t5_encoder(config: dict[str, Any], state_dict: dict[str, torch.Tensor], where: str):
    import transformers

    t5_config = transformers.T5Config.from_dict(config)
    t5_config._attn_implementation = "eager"  # explicit softmax(QK^T + bias)V traces to plain ONNX ops
    state_dict = dict(state_dict)
    present = [k for k in EMBEDDING_NAMES if k in state_dict]
    if present:
        for key in EMBEDDING_NAMES:
            state_dict.setdefault(key, state_dict[present[0]])
    with torch.device("meta"):
        model = transformers.T5EncoderModel(t5_config)
    return load_strict(model, state_dict, where, assign=True)
