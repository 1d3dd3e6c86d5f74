"""Torch modules for each network of a package, built from a source component and wrapped to its contract.

UNets and the VAE are diffrt's own definitions (:mod:`diffrt.export.models`); text encoders and the DPT depth
estimator are transformers' classes. Each builder returns ``(network, graph_module)`` pairs: the graph module
takes the network's inputs in order and returns its outputs in order, ready for :func:`export_graph`.
"""

from __future__ import annotations

from typing import Any

import torch

from diffrt.runtime import networks
from diffrt.runtime.errors import CheckpointError, ConfigError
from diffrt.runtime.networks import Network

from .onnx_export import GraphModule
from .source import Component, Source


def load_strict(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str, assign: bool = False
) -> torch.nn.Module:
    """Load float32 weights by exact name and shape; a mismatch names a few of the keys at fault.

    ``assign`` makes the module hold the given tensors instead of copying them (for modules built on the meta
    device: one copy of the weights in memory, not two).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the config ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})."
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"{where}: weights do not fit the config: {len(wrong)} tensors have other shapes than the config "
            f"implies (checkpoint vs config), e.g. {'; '.join(wrong[:3])}."
        )
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    module.load_state_dict(weights, strict=True, assign=assign)
    return module.eval()


def own_model(model_class, config: dict[str, Any], state_dict: dict[str, torch.Tensor], where: str):
    """One of diffrt's models, built on the meta device (no random init, no memory) and given the weights."""
    with torch.device("meta"):
        model = model_class(**config)
    return load_strict(model, state_dict, where, assign=True)


def build_unet(
    component: Component, scale_factor: int, text_embeds_dim: int | None = None, deepcache: bool = False
) -> list[tuple[Network, torch.nn.Module]]:
    """The UNet; ``text_embeds_dim`` (text_encoder_2's projection_dim) is needed by SDXL's text_time UNets.

    ``deepcache``: the UNet also returns each DeepCache branch's deep features, and each branch gets its shallow
    UNet (``unet_shallow_{b}``), which shares the UNet's weights (:meth:`UNet2DConditionModel.shallow`)."""
    from .models import UNet2DConditionModel, UNet2DModel

    config = component.config
    if component.class_name == "UNet2DModel":
        if deepcache:
            raise ConfigError(
                "--deepcache needs a text-conditioned UNet (UNet2DConditionModel: Stable Diffusion 1.x/2.x/XL); "
                "this checkpoint's UNet is an unconditional UNet2DModel (DDPM): export it without --deepcache."
            )
        model = own_model(UNet2DModel, config, component.load_weights(), "unet")
        network = networks.unconditional_unet_network(config)
        return [(network, GraphModule(model, network, _call_unconditional))]
    model = own_model(UNet2DConditionModel, config, component.load_weights(), "unet")
    branches = networks.deepcache_branches(config) if deepcache else ()
    network = networks.unet_network(config, scale_factor, text_embeds_dim=text_embeds_dim, deepcache_branches=branches)
    pairs = [(network, GraphModule(model, network, _with_deep_features(branches)))]
    for branch in branches:
        shallow = networks.unet_shallow_network(config, scale_factor, branch, text_embeds_dim=text_embeds_dim)
        pairs.append((shallow, GraphModule(model, shallow, _shallow(branch))))
    return pairs


def _call_conditional(
    model,
    sample,
    timestep,
    encoder_hidden_states,
    timestep_cond=None,
    class_labels=None,
    text_embeds=None,
    time_ids=None,
):
    out = model(
        sample,
        timestep,
        encoder_hidden_states,
        class_labels=class_labels,
        timestep_cond=timestep_cond,
        text_embeds=text_embeds,
        time_ids=time_ids,
    )
    return (out,)


def _with_deep_features(branches: tuple[int, ...]):
    """The UNet graph's call: ``out_sample``, then ``deep_features.{b}`` per DeepCache branch (none: the plain UNet)."""
    if not branches:
        return _call_conditional

    def call(model, sample, timestep, encoder_hidden_states, **conditioning):
        out, features = model.with_deep_features(sample, timestep, encoder_hidden_states, branches, **conditioning)
        return (out, *features)

    return call


def _shallow(branch: int):
    def call(model, sample, timestep, encoder_hidden_states, deep_features, **conditioning):
        return (model.shallow(sample, timestep, encoder_hidden_states, deep_features, branch, **conditioning),)

    return call


def _call_unconditional(model, sample, timestep, class_labels=None):
    return (model(sample, timestep, class_labels=class_labels),)


def build_vae(component: Component, scale_factor: int) -> list[tuple[Network, torch.nn.Module]]:
    """The VAE's encoder and decoder graphs: an AutoencoderKL's (posterior parameters out) or an AutoencoderTiny's
    (latents out)."""
    from .models import AutoencoderKL, AutoencoderTiny

    model_class = AutoencoderTiny if networks.is_tiny_vae(component.config) else AutoencoderKL
    model = own_model(model_class, component.config, component.load_weights(), "vae")
    encoder = networks.vae_encoder_network(component.config, scale_factor)
    decoder = networks.vae_decoder_network(component.config, scale_factor)
    return [
        (encoder, GraphModule(model, encoder, lambda m, sample: (m.encode(sample),))),
        (decoder, GraphModule(model, decoder, lambda m, latent_sample: (m.decode(latent_sample),))),
    ]


def build_preview_decoder(component: Component, scale_factor: int) -> tuple[Network, torch.nn.Module]:
    """A tiny VAE's decoder alone, as the package's progress-preview graph (``vae_decoder_preview``)."""
    from .models import AutoencoderTiny

    model = own_model(AutoencoderTiny, component.config, component.load_weights(), "preview vae")
    decoder = networks.preview_decoder_network(component.config, scale_factor)
    return decoder, GraphModule(model, decoder, lambda m, latent_sample: (m.decode(latent_sample),))


TEXT_ENCODER_PREFIX = "text_model."


def build_text_encoder(component: Component) -> tuple[Network, torch.nn.Module]:
    """A transformers CLIP text encoder; checkpoints from transformers 4 (``text_model.`` names) load too."""
    import transformers

    projection = component.class_name == "CLIPTextModelWithProjection"
    config = transformers.CLIPTextConfig.from_dict(component.config)
    config._attn_implementation = "eager"  # explicit softmax(QK^T)V traces to plain ONNX ops
    model_class = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    model = model_class(config).float()  # a config saved from an fp16 model builds fp16 layers
    state_dict = _match_prefix(component.load_weights(), model.state_dict().keys())
    state_dict.pop("embeddings.position_ids", None)
    state_dict.pop("text_model.embeddings.position_ids", None)
    load_strict(model, state_dict, component.name)
    network = networks.text_encoder_network(component.config, name=component.name, projection=projection)
    return network, GraphModule(model, network, _clip_outputs(model, projection))


def _match_prefix(state_dict: dict[str, Any], expected) -> dict[str, Any]:
    """Add or strip ``text_model.`` so checkpoint names match the model's (transformers 4 and 5 differ)."""
    expected = set(expected)
    has = any(k.startswith(TEXT_ENCODER_PREFIX) for k in state_dict)
    wants = any(k.startswith(TEXT_ENCODER_PREFIX) for k in expected)
    if has and not wants:
        return {k.removeprefix(TEXT_ENCODER_PREFIX): v for k, v in state_dict.items()}
    if wants and not has:
        return {(k if k in expected else TEXT_ENCODER_PREFIX + k): v for k, v in state_dict.items()}
    return dict(state_dict)


def _final_layer_norm(model) -> torch.nn.Module:
    inner = getattr(model, "text_model", model)
    return inner.final_layer_norm


def _clip_outputs(model, projection: bool):
    """The text encoder contract's outputs: last state, pooled (or projected) embedding, clip_skip.*, hidden_states.*"""
    norm = _final_layer_norm(model)

    def call(m, input_ids):
        out = m(input_ids=input_ids, output_hidden_states=True)
        hidden = out.hidden_states
        pooled = out.text_embeds if projection else out.pooler_output
        skips = [norm(hidden[-(k + 1)]) for k in range(1, len(hidden) - 1)]
        return (out.last_hidden_state, pooled, *skips, *hidden)

    return call


def build_depth_estimator(component: Component, preprocessor: dict[str, Any]) -> tuple[Network, torch.nn.Module]:
    import transformers

    config = transformers.DPTConfig.from_dict(component.config)
    config._attn_implementation = "eager"
    model = load_strict(transformers.DPTForDepthEstimation(config), component.load_weights(), "depth_estimator")
    network = networks.depth_estimator_network(networks.depth_input_size(preprocessor))
    return network, GraphModule(model, network, lambda m, pixel_values: (m(pixel_values=pixel_values).predicted_depth,))


def build_networks(source: Source, deepcache: bool = False) -> list[tuple[str, Any]]:
    """(network name, builder) pairs in export order; each builder returns [(Network, module), ...].
    ``deepcache`` adds the UNet's DeepCache outputs and shallow graphs (see :func:`build_unet`)."""
    comps = source.components
    scale = source.scale_factor
    plan: list[tuple[str, Any]] = []
    for name in ("text_encoder", "text_encoder_2"):
        if name in comps:
            plan.append((name, lambda name=name: [build_text_encoder(comps[name])]))
    text_embeds_dim = comps["text_encoder_2"].config.get("projection_dim") if "text_encoder_2" in comps else None
    plan.append(("unet", lambda: build_unet(comps["unet"], scale, text_embeds_dim, deepcache)))
    if "vae" in comps:
        plan.append(("vae", lambda: build_vae(comps["vae"], scale)))
    if source.preview_vae is not None:
        plan.append((networks.PREVIEW_DECODER, lambda: [build_preview_decoder(source.preview_vae, scale)]))
    if "depth_estimator" in comps:
        plan.append(
            (
                "depth_estimator",
                lambda: [build_depth_estimator(comps["depth_estimator"], source.preprocessor_config or {})],
            )
        )
    return plan
