"""Export a Stable Diffusion 3 or Flux diffusers folder to an engine package: CLIP and T5 text encoders, the MMDiT
transformer and the 16-channel VAE, each checked against its torch module.

The package has the SD packages' layout (``model_index.json``, one folder per graph with its ``config.json``, the
tokenizer folders, ``scheduler/``, ``diffrt.json``). SD3: ``text_encoder`` (CLIP-L) and ``text_encoder_2`` (CLIP-G),
both with projection, and ``text_encoder_3`` (T5) when the source has it (diffusers runs SD3 without T5, feeding
zeros in its place). Flux: ``text_encoder`` (CLIP-L, pooled output) and ``text_encoder_2`` (T5). The VAE's
``shift_factor`` stays in its config: the runtime shifts the latents as diffusers' pipelines do.
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
from ..runtime.errors import ConfigError
from ..runtime.networks import Network, ShapeRange
from ..runtime.schema import CONFIG_NAME, INDEX_NAME, PROVENANCE_NAME, SCHEDULER_CONFIG
from ..staging import staged_folder
from .components import build_text_encoder, build_vae, own_model
from .lora_package import add_slots
from .onnx_export import GraphModule, Reference, check_graphs, export_graph
from .package_files import ONNX_COMPONENT, PackageReport, _provenance, _write_json, _write_tokenizer
from .source import FLUX_PIPELINES, SD3_PIPELINES, TOKENIZERS, Source

MMDIT_PIPELINES = SD3_PIPELINES + FLUX_PIPELINES
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
T5_CLASS = "T5EncoderModel"
DEFAULT_SIDE = 1024  # pixels: diffusers' SD3 / Flux pipelines default to 1024 x 1024


def is_mmdit(source: Source) -> bool:
    return source.pipeline_class in MMDIT_PIPELINES


def is_flux(pipeline_class: str) -> bool:
    return pipeline_class in FLUX_PIPELINES


def size_multiple(source: Source) -> int:
    """Sizes must pass the VAE and the transformer's 2x2 patches (Flux packs 2x2 latent cells per token)."""
    patch = 2 if is_flux(source.pipeline_class) else source.components["transformer"].config.get("patch_size", 2)
    return source.scale_factor * patch


def mmdit_shape_range(source: Source, options) -> ShapeRange:
    """Around the transformer's sample size (1024 x 1024 for the released models), or exactly ``--static``."""
    multiple = size_multiple(source)
    if options.static is not None:
        h, w = options.static
        if h % multiple or w % multiple or h <= 0 or w <= 0:
            raise ConfigError(f"--static {h}x{w}: height and width must be positive multiples of {multiple}.")
        return ShapeRange.around(h, w, batch=options.batch, static=True)
    return ShapeRange.around(*([default_side(source)] * 2), batch=options.batch)


def default_side(source: Source) -> int:
    """The image side (pixels) the model was trained at: SD3's transformer ``sample_size`` (latent cells) times the
    VAE scale; Flux's transformer states none, and its VAE's ``sample_size`` (pixels, 1024 in the released models)
    stands in; 1024 without either."""
    sample = source.components["transformer"].config.get("sample_size")
    if sample:
        return int(sample) * source.scale_factor
    return int(source.components["vae"].config.get("sample_size") or DEFAULT_SIDE)


# ----- the networks ---------------------------------------------------------------------------------------------
def build_transformer(source: Source) -> list[tuple[Network, torch.nn.Module]]:
    from .models import FluxTransformer2DModel, SD3Transformer2DModel

    component = source.components["transformer"]
    scale = source.scale_factor
    if is_flux(source.pipeline_class):
        model = own_model(FluxTransformer2DModel, component.config, component.load_weights(), "transformer")
        network = networks.flux_transformer_network(component.config, scale)
        return [(network, GraphModule(model, network, _call_flux))]
    model = own_model(SD3Transformer2DModel, component.config, component.load_weights(), "transformer")
    network = networks.sd3_transformer_network(component.config, scale)
    return [(network, GraphModule(model, network, _call_sd3))]


def _call_sd3(model, hidden_states, encoder_hidden_states, pooled_projections, timestep, skip_layers):
    return (model(hidden_states, encoder_hidden_states, pooled_projections, timestep, skip_layers),)


def _call_flux(
    model, hidden_states, encoder_hidden_states, pooled_projections, timestep, rotary_cos, rotary_sin, guidance=None
):
    return (
        model(hidden_states, encoder_hidden_states, pooled_projections, timestep, rotary_cos, rotary_sin, guidance),
    )


def build_text_encoders(source: Source) -> list[tuple[Network, torch.nn.Module]]:
    from .t5_encoder import build_t5_encoder

    pairs = []
    for name in TEXT_ENCODERS:
        component = source.components.get(name)
        if component is None:
            continue
        if component.class_name == T5_CLASS:
            length = networks.FLUX_SEQUENCE_LENGTH if is_flux(source.pipeline_class) else 256
            pairs.append(build_t5_encoder(component, sequence_length=length, name=name))
        else:
            pairs.append(build_text_encoder(component))
    return pairs


def build_plan(source: Source) -> list[tuple[str, Any]]:
    return [
        ("text encoders", lambda: build_text_encoders(source)),
        ("transformer", lambda: build_transformer(source)),
        ("vae", lambda: build_vae(source.components["vae"], source.scale_factor)),
    ]


# ----- sizes and reference outputs ------------------------------------------------------------------------------
def check_sizes(network: Network, shape_range: ShapeRange) -> tuple[tuple, list[tuple]]:
    """The (batch, height, width) to trace at, and those to check at (another batch and, if dynamic, size)."""
    m = network.batch_multiplier
    opt = (shape_range.batch[1] * m, shape_range.height[1], shape_range.width[1])
    trace = (max(2, opt[0]), opt[1], opt[2])  # batch >= 2: a batch of 1 lets the tracer fold broadcasts
    sizes = [(1, opt[1], opt[2])]
    if not shape_range.static_size:
        sizes.append((2, shape_range.height[0], shape_range.width[2]))
    return trace, sizes


def references(module, network: Network, sizes: list[tuple], seed: int = 1) -> list[Reference]:
    """The torch module's outputs on seeded inputs at each size, with the transformer's inputs in their real ranges:
    Flux's timestep in [0, 1], a guidance scale, SD3's layers run (one skipped in the second check)."""
    out = []
    for i, size in enumerate(sizes):
        feeds = network.sample_feeds(*size[:3], seed=seed + i)
        rng = np.random.default_rng(seed + 100 + i)
        if "skip_layers" in feeds:
            skip = np.zeros_like(feeds["skip_layers"])
            skip[min(1, skip.size - 1)] = i % 2 == 1
            feeds["skip_layers"] = skip
        if "rotary_cos" in feeds:
            feeds["timestep"] = rng.uniform(0, 1, feeds["timestep"].shape).astype(np.float32)
        if "guidance" in feeds:
            feeds["guidance"] = rng.uniform(1, 8, feeds["guidance"].shape).astype(np.float32)
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(feeds[n]) for n in network.input_names))
        out.append(Reference(size, feeds, [o.float().numpy() for o in outputs]))
    return out


# ----- the package ----------------------------------------------------------------------------------------------
def export_mmdit(source: Source, out: Path, options, progress, loras: list | None = None) -> Any:
    """Export every graph of an SD3 / Flux ``source`` into ``out`` (staged; renamed only when all are checked)."""
    if options.deepcache:
        raise ConfigError(
            f"--deepcache applies to Stable Diffusion UNets; {source.pipeline_class} has a transformer: export it "
            "without --deepcache."
        )
    shape_range = mmdit_shape_range(source, options)
    start = time.perf_counter()
    report = PackageReport(out, source.pipeline_class, notes=list(source.notes))
    with staged_folder(out) as staging:
        for group, build in build_plan(source):
            progress(group, "loading weights")
            pairs = build()
            checks = []
            for network, module in pairs:
                progress(network.name, "exporting")
                trace, sizes = check_sizes(network, shape_range)
                graph = export_graph(
                    module,
                    network,
                    staging / network.name,
                    trace,
                    opset=options.opset,
                    static_size=shape_range.static_size,
                    external_data_threshold=options.external_data_threshold,
                    map_weights=not network.name.startswith("vae"),
                )
                if options.lora_slots is not None and takes_slots(network.name, source):
                    graph = add_slots(graph, options.lora_slots)  # adapters chosen per call (load_lora_weights)
                progress(network.name, f"exported in {graph.seconds:.1f} s")
                checks.append((graph, network, references(module, network, sizes) if options.check else []))
            del pairs
            gc.collect()
            check_graphs(checks, report, progress)
        _write_support_files(source, staging, shape_range, options, report, loras or [])
    report.seconds = time.perf_counter() - start
    for graph in report.graphs:
        graph.path = out / graph.path.relative_to(staging)
    return report


def _write_support_files(source: Source, staging: Path, shape_range: ShapeRange, options, report, loras) -> None:
    comps = source.components
    index: dict[str, Any] = {"_class_name": source.pipeline_class, "_diffrt_version": __version__}
    for encoder in TEXT_ENCODERS:
        tokenizer = TOKENIZERS[encoder]
        if encoder not in comps:
            if encoder in networks_of(source):
                index[encoder] = index[tokenizer] = [None, None]  # SD3 without T5, as diffusers saves it
            continue
        _write_json(staging / encoder / CONFIG_NAME, comps[encoder].config)
        index[encoder] = ONNX_COMPONENT
        _write_tokenizer(*source.tokenizer(tokenizer), staging / tokenizer)
        t5 = comps[encoder].class_name == T5_CLASS
        index[tokenizer] = ["transformers", "T5TokenizerFast" if t5 else "CLIPTokenizer"]
    _write_json(staging / "transformer" / CONFIG_NAME, comps["transformer"].config)
    index["transformer"] = ONNX_COMPONENT
    for part in ("vae_encoder", "vae_decoder"):
        _write_json(staging / part / CONFIG_NAME, comps["vae"].config)
        index[part] = ONNX_COMPONENT
    _write_json(staging.joinpath(*SCHEDULER_CONFIG), source.scheduler_config)
    index["scheduler"] = ["diffusers", source.scheduler_config.get("_class_name", "FlowMatchEulerDiscreteScheduler")]
    _write_json(staging / INDEX_NAME, index)
    _write_json(staging / PROVENANCE_NAME, _provenance(source, shape_range, options, report, loras))


def takes_slots(network: str, source: Source) -> bool:
    """LoRA slots go where diffusers loads SD3 / Flux adapters: the transformer and the CLIP encoders (not T5)."""
    component = source.components.get(network)
    return network == "transformer" or (component is not None and component.class_name != T5_CLASS)


def networks_of(source: Source) -> tuple[str, ...]:
    from .source import PIPELINES

    return PIPELINES[source.pipeline_class]
