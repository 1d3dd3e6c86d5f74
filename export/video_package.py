"""Export a CogVideoX diffusers folder to an engine package: T5 text encoder, transformer and the causal 3D VAE as
encoder and decoder *steps* that carry their convolution cache, each checked against its torch module.

The package has the SD packages' layout (``model_index.json``, one folder per graph with its ``config.json``,
``tokenizer/``, ``scheduler/``, ``diffrt.json``); the VAE's two step graphs sit in ``vae_encoder/`` and
``vae_decoder/`` beside the VAE config. An image-to-video transformer with learned positional embeddings also
gets its table as ``transformer/pos_embedding.npy`` (the runtime feeds positions as a graph input).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..runtime import networks
from ..runtime.networks import Network, ShapeRange
from ..runtime.schema import CONFIG_NAME, INDEX_NAME, LEARNED_POSITIONS, PROVENANCE_NAME, SCHEDULER_CONFIG
from ..staging import staged_folder
from .components import own_model
from .lora_package import add_slots
from .onnx_export import GraphModule, Reference, check_graphs, export_graph
from .package_files import ONNX_COMPONENT, PackageReport, _provenance, _write_json, _write_tokenizer
from .source import Source

VIDEO_PIPELINES = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline")


def is_video(source: Source) -> bool:
    return source.pipeline_class in VIDEO_PIPELINES


def spatial_scale(vae_config: dict[str, Any]) -> int:
    return 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)


def video_shape_range(source: Source, options) -> ShapeRange:
    """Around the transformer's sample size (CogVideoX: 480x720), or exactly ``--static``."""
    config = source.components["transformer"].config
    f = spatial_scale(source.components["vae"].config)
    if options.static is not None:
        return ShapeRange.around(*options.static, batch=options.batch, static=True)
    h, w = config.get("sample_height", 60) * f, config.get("sample_width", 90) * f
    return ShapeRange.around(h, w, batch=options.batch)


# ----- the networks ---------------------------------------------------------------------------------------------
def build_transformer(source: Source) -> list[tuple[Network, torch.nn.Module]]:
    from .models import CogVideoXTransformer3DModel

    component = source.components["transformer"]
    model = own_model(CogVideoXTransformer3DModel, component.config, component.load_weights(), "transformer")
    network = networks.cogvideox_transformer_network(component.config, spatial_scale(source.components["vae"].config))
    return [(network, GraphModule(model, network, _call_transformer))]


def _call_transformer(model, hidden_states, encoder_hidden_states, timestep, **positions):
    return (model(hidden_states, encoder_hidden_states, timestep, **positions),)


def build_vae(source: Source) -> list[tuple[Network, torch.nn.Module]]:
    from .models import AutoencoderKLCogVideoX

    component = source.components["vae"]
    config = component.config
    model = own_model(AutoencoderKLCogVideoX, config, component.load_weights(), "vae")
    encoder = networks.cogvideox_vae_encoder_network(config)
    decoder = networks.cogvideox_vae_decoder_network(config)

    def encode(m, sample, has_cache, **cache):
        return m.encode_step(sample, has_cache, *_ordered(cache))

    def decode(m, latent_sample, has_cache, **cache):
        return m.decode_step(latent_sample, has_cache, *_ordered(cache))

    return [(encoder, GraphModule(model, encoder, encode)), (decoder, GraphModule(model, decoder, decode))]


def _ordered(cache: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [cache[f"cache_in.{i}"] for i in range(len(cache))]


def build_text_encoder(source: Source) -> list[tuple[Network, torch.nn.Module]]:
    from .t5_encoder import build_t5_encoder

    return [build_t5_encoder(source.components["text_encoder"])]


def build_video_networks(source: Source) -> list[tuple[str, Any]]:
    return [
        ("text_encoder", lambda: build_text_encoder(source)),
        ("transformer", lambda: build_transformer(source)),
        ("vae", lambda: build_vae(source)),
    ]


# ----- sizes each graph is traced and checked at ----------------------------------------------------------------
PROBE = 128  # pixels: the largest side a dynamic VAE step is traced and checked at


def trace_sizes(network: Network, shape_range: ShapeRange, patch_t: int) -> list[tuple]:
    """(batch, height, width, dims) to trace at first, then two to check at (other batches, frame counts and,
    for dynamic graphs, sizes).

    A dynamic graph is the same whatever size it is traced at, so each is traced small: the transformer at the
    range's smallest size, the VAE steps at most :data:`PROBE` pixels a side (at CogVideoX's 480x720 the encoder's
    8-frame trace alone needs over 23 GB). The VAE steps are traced at a later frame batch (2 latent frames, 8
    frames, with a cache) and checked at the first batch's odd count too."""
    if shape_range.static_size:
        th = vh = vh2 = shape_range.height[1]
        tw = vw = vw2 = shape_range.width[1]
    else:
        th, tw = shape_range.height[0], shape_range.width[0]
        vh, vw = _probe(th), _probe(tw)
        vh2, vw2 = _probe(vh // 2), _probe(vw * 3 // 4)
    if network.name == "transformer":
        return [
            (2, th, tw, {"latent_frames": 2 * patch_t}),
            (1, th, tw, {"latent_frames": patch_t}),
            (2, vh2, vw2, {"latent_frames": 3 * patch_t}),
        ]
    if network.name == "vae_decoder":
        return [
            (1, vh, vw, {"latent_frames": 2}),
            (1, vh, vw, {"latent_frames": 3}),
            (2, vh2, vw2, {"latent_frames": 1}),
        ]
    if network.name == "vae_encoder":
        return [(1, vh, vw, {"frames": 8}), (1, vh, vw, {"frames": 9}), (2, vh2, vw2, {"frames": 1})]
    return [(2, th, tw), (1, th, tw), (2, vh2, vw2)]


def _probe(side: int) -> int:
    """A side of at most :data:`PROBE` pixels, a multiple of 16 (the VAE's 8 x the transformer's patch of 2)."""
    return max(16, min(side, PROBE) // 16 * 16)


def references(module, network: Network, sizes: list[tuple], seed: int = 1) -> list[Reference]:
    """The torch module's outputs at each size; a VAE step is checked both as a first batch and as a later one."""
    out = []
    for i, size in enumerate(sizes):
        feeds = network.sample_feeds(*size[:3], seed=seed + i, **(size[3] if len(size) > 3 else {}))
        if "has_cache" in feeds:
            feeds["has_cache"] = np.array([i % 2 == 1])
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(feeds[n]) for n in network.input_names))
        out.append(Reference(size, feeds, [o.float().numpy() for o in outputs]))
    return out


# ----- the package ----------------------------------------------------------------------------------------------
def export_video(source: Source, out: Path, options, progress, loras: list | None = None) -> Any:
    """Export every graph of a CogVideoX ``source`` into ``out`` (staged; renamed only when all are checked)."""
    shape_range = video_shape_range(source, options)
    patch_t = source.components["transformer"].config.get("patch_size_t") or 1
    start = time.perf_counter()
    report = PackageReport(out, source.pipeline_class, notes=list(source.notes))
    with staged_folder(out) as staging:
        for group, build in build_video_networks(source):
            progress(group, "loading weights")
            pairs = build()
            checks = []
            for network, module in pairs:
                progress(network.name, "exporting")
                sizes = trace_sizes(network, shape_range, patch_t)
                graph = export_graph(
                    module,
                    network,
                    staging / network.name,
                    sizes[0],
                    opset=options.opset,
                    static_size=shape_range.static_size,
                    external_data_threshold=options.external_data_threshold,
                    map_weights=network.name == "transformer",
                )
                if options.lora_slots is not None and network.name == "transformer":
                    graph = add_slots(graph, options.lora_slots)  # adapters chosen per call, as for the UNet
                progress(network.name, f"exported in {graph.seconds:.1f} s")
                checks.append((graph, network, references(module, network, sizes[1:]) if options.check else []))
                if network.name == "transformer":
                    _write_learned_positions(module.model, source, staging)
            del pairs
            gc.collect()
            check_graphs(checks, report, progress)
        _write_support_files(source, staging, shape_range, options, report, loras or [])
    report.seconds = time.perf_counter() - start
    for graph in report.graphs:
        graph.path = out / graph.path.relative_to(staging)
    return report


def _write_learned_positions(model, source: Source, staging: Path) -> None:
    """An I2V transformer's learned joint table (text rows, then image rows), fed by the runtime."""
    config = source.components["transformer"].config
    if not config.get("use_learned_positional_embeddings"):
        return
    table = model.patch_embed.pos_embedding.detach().float().numpy()  # (1, text + image tokens, inner_dim)
    np.save(staging / "transformer" / LEARNED_POSITIONS, np.ascontiguousarray(table), allow_pickle=False)


def _write_support_files(source: Source, staging: Path, shape_range: ShapeRange, options, report, loras) -> None:
    comps = source.components
    index: dict[str, Any] = {"_class_name": source.pipeline_class, "_diffrt_version": __version__}
    _write_json(staging / "text_encoder" / CONFIG_NAME, comps["text_encoder"].config)
    index["text_encoder"] = ONNX_COMPONENT
    _write_tokenizer(*source.tokenizer("tokenizer"), staging / "tokenizer")
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    _write_json(staging / "transformer" / CONFIG_NAME, comps["transformer"].config)
    index["transformer"] = ONNX_COMPONENT
    for part in ("vae_encoder", "vae_decoder"):
        _write_json(staging / part / CONFIG_NAME, comps["vae"].config)
        index[part] = ONNX_COMPONENT
    _write_json(staging.joinpath(*SCHEDULER_CONFIG), source.scheduler_config)
    index["scheduler"] = ["diffusers", source.scheduler_config.get("_class_name", "CogVideoXDDIMScheduler")]
    _write_json(staging / INDEX_NAME, index)
    provenance = _provenance(source, shape_range, options, report, loras)
    _write_json(staging / PROVENANCE_NAME, provenance)
