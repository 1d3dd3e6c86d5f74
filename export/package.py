"""Write an engine package: ONNX graphs, configs, tokenizer, scheduler and provenance, all or nothing.

Everything goes to a hidden temporary folder beside ``out``, which is renamed to ``out`` only once every graph
is exported and checked; a failure removes it, so no package that looks complete is ever left behind.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..runtime.errors import ConfigError
from ..runtime.lora import LoraSpec
from ..runtime.networks import ShapeRange
from ..runtime.schema import CONFIG_NAME, INDEX_NAME, PROVENANCE_NAME, SCHEDULER_CONFIG, default_size
from ..staging import staged_folder
from .lora_package import LORA_NETWORKS, add_slots, fuse_into_source, write_lora_base
from .onnx_export import (
    DEFAULT_OPSET,
    EXTERNAL_DATA_THRESHOLD,
    GraphReport,
    Reference,
    compare_graph,
    export_graph,
    reference_outputs,
)
from .output import check_output, writing
from .package_files import ONNX_COMPONENT, PackageReport, _provenance, _write_json, _write_tokenizer
from .source import SDXL_PIPELINES, TOKENIZERS, Source


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    static: tuple[int, int] | None = None
    """Fix height x width in the graphs (pixels)."""
    batch: int = 4
    """Most images per call the package is built for (its shape range's max batch)."""
    check: bool = True
    """Compare each graph with its torch module on random inputs after export."""
    force: bool = False
    """Replace an existing ``out`` folder."""
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    loras: tuple[LoraSpec, ...] = ()
    """LoRA adapters fused into the UNet and text encoders (both of SDXL's) before tracing, each with its weight."""
    allow_pickle: bool = False
    """Read pickle LoRA files (restricted to tensors); the source's own pickle opt-in is given to load_source."""
    lora_slots: int | None = None
    """Give the UNet and text encoders LoRA slots (:mod:`diffrt.kernels.lora_slots`) for adapters chosen at run
    time, the number being the most summed rank one call may feed a weight; None: no slots."""
    deepcache: bool = False
    """Also export DeepCache's shallow UNets (``unet_shallow_{b}``) and give the UNet their deep features as outputs,
    so calls may skip the deep UNet between full steps (``cache_interval``)."""

    def __post_init__(self) -> None:
        self.loras = tuple(LoraSpec.parse(s) if isinstance(s, str) else s for s in self.loras)
        slots = self.lora_slots
        if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
            raise ConfigError(f"lora_slots={slots!r} is not accepted; give None or the most rank (an int >= 1).")
        if self.deepcache and slots is not None:
            raise ConfigError(
                "--deepcache cannot be combined with --lora-slots (the shallow UNets have no slots); accepted: "
                "--deepcache with adapters fused at export (--lora FILE), or --lora-slots without --deepcache."
            )
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch} must be at least 1.")
        if not 14 <= self.opset <= 20:
            raise ConfigError(f"opset={self.opset} is not supported; accepted opsets are 14 to 20 (default 17).")


Progress = Callable[[str, str], None]


def shape_range_for(source: Source, options: ExportOptions) -> ShapeRange:
    if options.static is not None:
        h, w = options.static
        factor = _size_multiple(source)
        if h % factor or w % factor or h <= 0 or w <= 0:
            raise ConfigError(f"--static {h}x{w}: height and width must be positive multiples of {factor}.")
        return ShapeRange.around(h, w, batch=options.batch, static=True)
    h, w = default_size(source.components["unet"].config, source.scale_factor)
    return ShapeRange.around(h, w, batch=options.batch)


def _size_multiple(source: Source) -> int:
    """Sizes must pass the VAE and every UNet downsampling evenly."""
    unet = source.components["unet"].config
    factor = source.scale_factor
    return factor * 2 ** (len(unet.get("block_out_channels", (0,))) - 1)


def export_package(
    source: Source, out: str | Path, options: ExportOptions | None = None, progress: Progress | None = None
) -> PackageReport:
    """Export every network of ``source`` into the engine package folder ``out`` (checked first: see
    :mod:`~diffrt.export.output`), holding its writer lock."""
    options = options or ExportOptions()
    progress = progress or (lambda name, message: None)
    sources = [source.path, *source.files, *(spec.path for spec in options.loras)]
    out = check_output(out, options.force, sources)
    with writing(out):
        return _export(source, out, options, progress)


def _export(source: Source, out: Path, options: ExportOptions, progress: Progress) -> PackageReport:
    from .components import build_networks
    from .mmdit_package import export_mmdit, is_mmdit
    from .video_package import export_video, is_video

    if is_mmdit(source):
        if options.loras:
            from .mmdit_lora import fuse_into_mmdit_source

            source, summaries = fuse_into_mmdit_source(source, options.loras, allow_pickle=options.allow_pickle)
            return export_mmdit(source, out, options, progress, loras=summaries)
        return export_mmdit(source, out, options, progress)
    if is_video(source):
        if options.deepcache:
            raise ConfigError(
                f"--deepcache applies to Stable Diffusion UNets; {source.pipeline_class} has a transformer: "
                "export it without --deepcache."
            )
        if options.loras:
            from .video_lora import fuse_into_video_source

            source, summaries = fuse_into_video_source(source, options.loras, allow_pickle=options.allow_pickle)
            return export_video(source, out, options, progress, loras=summaries)
        return export_video(source, out, options, progress)
    shape_range = shape_range_for(source, options)
    start = time.perf_counter()
    fused = None
    if options.loras:
        progress("lora", f"fusing {len(options.loras)} adapter(s)")
        fused = fuse_into_source(source, options.loras, allow_pickle=options.allow_pickle)
        source = fused.source
    report = PackageReport(out, source.pipeline_class, notes=list(source.notes))
    with staged_folder(out) as staging:
        for group, build in build_networks(source, deepcache=options.deepcache):
            progress(group, "loading weights")
            pairs = build()
            exported: list[tuple[GraphReport, Any, list[Reference]]] = []
            module = None
            for network, module in pairs:
                progress(network.name, "exporting")
                graph, references = _export_one(module, network, staging, shape_range, options)
                progress(network.name, f"exported in {graph.seconds:.1f} s")
                exported.append((graph, network, references))
            # The torch modules go before ONNX Runtime loads the graphs: both at once would double peak memory.
            del pairs, module
            gc.collect()
            for graph, network, references in exported:
                if references:
                    progress(network.name, "checking against torch")
                    graph.max_abs_error, graph.max_rel_error = compare_graph(graph.path, network, references)
                    graph.checked = tuple(r.size for r in references)
                report.graphs.append(graph)
        for name, base in (fused.bases if fused else {}).items():
            write_lora_base(staging / name, base)
        _write_support_files(source, staging, shape_range, options, report, fused.summaries if fused else [])
    report.seconds = time.perf_counter() - start
    for graph in report.graphs:
        graph.path = out / graph.path.relative_to(staging)
    return report


def _export_one(
    module, network, staging: Path, shape_range: ShapeRange, options: ExportOptions
) -> tuple[GraphReport, list[Reference]]:
    """Export one graph and, when checking, the torch module's outputs to compare it with."""
    m = network.batch_multiplier
    opt = (shape_range.batch[1] * m, shape_range.height[1], shape_range.width[1])
    # Trace at batch 2 or more: a batch of 1 lets the tracer fold broadcasts that a larger batch needs.
    trace = (max(2, opt[0]), opt[1], opt[2])
    folder = staging / network.name
    graph = export_graph(
        module,
        network,
        folder,
        trace,
        opset=options.opset,
        static_size=shape_range.static_size,
        external_data_threshold=options.external_data_threshold,
        map_weights=network.name in LORA_NETWORKS,
    )
    if options.lora_slots is not None and network.name in LORA_NETWORKS:
        graph = add_slots(graph, options.lora_slots)
    if not options.check:
        return graph, []
    sizes = [(1, shape_range.height[1], shape_range.width[1])]
    if not shape_range.static_size and not network.fixed_dims:
        sizes.append((2, shape_range.height[0], shape_range.width[2]))
    return graph, reference_outputs(module, network, sizes)


def _write_support_files(
    source: Source,
    staging: Path,
    shape_range: ShapeRange,
    options: ExportOptions,
    report: PackageReport,
    loras: list[dict[str, Any]],
) -> None:
    comps = source.components
    index: dict[str, Any] = {"_class_name": source.pipeline_class, "_diffrt_version": __version__}
    index.update(source.pipeline_config)
    for encoder, tokenizer in TOKENIZERS.items():
        if encoder in comps:
            _write_json(staging / encoder / CONFIG_NAME, comps[encoder].config)
            index[encoder] = ONNX_COMPONENT
            _write_tokenizer(*source.tokenizer(tokenizer), staging / tokenizer)
            index[tokenizer] = ["transformers", "CLIPTokenizer"]
    _write_json(staging / "unet" / CONFIG_NAME, comps["unet"].config)
    index["unet"] = ONNX_COMPONENT
    if "vae" in comps:
        for part in ("vae_encoder", "vae_decoder"):
            _write_json(staging / part / CONFIG_NAME, comps["vae"].config)
            index[part] = ONNX_COMPONENT
        if comps["vae"].config.get("force_upcast") and source.pipeline_class in SDXL_PIPELINES:
            report.notes.append(
                "vae: force_upcast is set (the VAE overflows in fp16), so vae_encoder and vae_decoder run in fp32 "
                "on GPUs under precision auto"
            )
    if source.preview_vae is not None:  # not in model_index.json: no diffusers pipeline has such a component
        _write_json(staging / source.preview_vae.name / CONFIG_NAME, source.preview_vae.config)
    if "depth_estimator" in comps:
        _write_json(staging / "depth_estimator" / CONFIG_NAME, comps["depth_estimator"].config)
        _write_json(staging / "depth_estimator" / "preprocessor_config.json", source.preprocessor_config or {})
        index["depth_estimator"] = ONNX_COMPONENT
    scheduler_class = source.scheduler_config.get("_class_name", "PNDMScheduler")
    _write_json(staging.joinpath(*SCHEDULER_CONFIG), source.scheduler_config)
    index["scheduler"] = ["diffusers", scheduler_class]
    _write_json(staging / INDEX_NAME, index)
    _write_json(staging / PROVENANCE_NAME, _provenance(source, shape_range, options, report, loras))
