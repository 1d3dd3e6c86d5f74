"""``diffrt export``: a diffusers folder or single-file checkpoint -> an ONNX engine package.

Arguments are declared here without importing torch, so ``diffrt --help`` stays light; the work is imported
when the command runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..units import human_bytes, parse_size

DEFAULT_RANK_MAX = 128  # civitai adapters go to rank 128; two rank-64 adapters at once fit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a diffusers pipeline folder, or a single checkpoint file (.safetensors)")
    p.add_argument("out", help="the engine package folder to write")
    p.add_argument("--config", metavar="DIR", help="diffusers folder whose configs describe a single-file checkpoint")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read .ckpt/.bin/.pt files (restricted to tensors with torch.load(weights_only=True))",
    )
    p.add_argument("--variant", metavar="NAME", help='weights variant of a diffusers folder, e.g. "fp16"')
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--static", type=parse_size, metavar="HxW", help="fix the image size in the graphs (pixels)")
    p.add_argument("--batch", type=int, default=4, help="most images per call the package is built for (default 4)")
    p.add_argument("--no-check", action="store_true", help="skip comparing each graph with its torch module")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--vae",
        metavar="DIR",
        help="export this diffusers VAE folder (AutoencoderKL, or AutoencoderTiny for a fast decode) instead of the "
        "source's VAE, as `pipe.vae = ...` does in diffusers",
    )
    p.add_argument(
        "--preview-vae",
        metavar="DIR",
        help="also export this AutoencoderTiny folder's decoder (vae_decoder_preview/), used for progress previews",
    )
    p.add_argument(
        "--deepcache",
        action="store_true",
        help="also export the UNet's shallow path (DeepCache), so `generate --cache-interval N` reuses its deep "
        "features between full steps",
    )
    add_lora_argument(p, "fuse a LoRA adapter into the UNet / text encoder(s) before tracing")
    p.add_argument(
        "--lora-slots",
        type=_rank_max,
        nargs="?",
        const=DEFAULT_RANK_MAX,
        metavar="RANK_MAX",
        help="give every Linear / Conv of the UNet and text encoder(s) inputs for LoRA adapters chosen at run time "
        f"(load_lora_weights, generate --lora); RANK_MAX bounds the summed rank of the adapters one call uses "
        f"(default {DEFAULT_RANK_MAX})",
    )


def _rank_max(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--lora-slots {text!r}: accepted: a positive whole number, such as 64")
    return value


def add_lora_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help=f"{what} (repeat for several; WEIGHT defaults to 1.0)",
    )


def _lora_specs(values: list[str]):
    from ..runtime.lora import LoraSpec

    return tuple(LoraSpec.parse(v) for v in values)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    def progress(name: str, message: str) -> None:
        print(f"  {name:<16} {message}", file=sys.stderr, flush=True)

    from .output import check_output

    loras = _lora_specs(args.lora)
    # Refuse a bad output before reading anything (export_package checks again against every file it reads).
    vaes = [getattr(args, "vae", None), getattr(args, "preview_vae", None)]
    check_output(args.out, args.force, [args.source, *filter(None, [args.config, *vaes]), *(s.path for s in loras)])
    print(f"reading {args.source}", file=sys.stderr, flush=True)
    from .package import ExportOptions, export_package
    from .source import load_source

    options = ExportOptions(
        opset=args.opset,
        static=args.static,
        batch=args.batch,
        check=not args.no_check,
        force=args.force,
        loras=loras,
        lora_slots=args.lora_slots,
        deepcache=args.deepcache,
        allow_pickle=args.allow_pickle,
    )
    source = load_source(args.source, config_dir=args.config, allow_pickle=args.allow_pickle, variant=args.variant)
    if any(vaes):
        from .vae_swap import add_preview_vae, replace_vae

        if vaes[0]:
            source = replace_vae(source, vaes[0], allow_pickle=args.allow_pickle)
        if vaes[1]:
            source = add_preview_vae(source, vaes[1], allow_pickle=args.allow_pickle)
    for note in source.notes:
        print(f"  note: {note}", file=sys.stderr)
    print(f"exporting {source.pipeline_class} to {args.out}", file=sys.stderr, flush=True)
    report = export_package(source, args.out, options, progress=progress)
    print(f"{'network':<16} {'size':>10} {'max rel err':>12} {'max abs err':>12} {'time':>8}")
    for g in report.graphs:
        rel = f"{g.max_rel_error:.1e}" if g.checked else "-"
        err = f"{g.max_abs_error:.1e}" if g.checked else "-"
        print(f"{g.name:<16} {human_bytes(g.bytes):>10} {rel:>12} {err:>12} {g.seconds:>7.1f}s")
    for note in report.notes[len(source.notes) :]:  # what the export itself found (e.g. a VAE kept in fp32)
        print(f"  note: {note}", file=sys.stderr)
    total = sum(g.bytes for g in report.graphs)
    print(
        f"wrote {report.path} ({report.pipeline}, {len(report.graphs)} graphs, {human_bytes(total)}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def add_lora_arguments(p: argparse.ArgumentParser) -> None:
    """``diffrt lora apply PACKAGE OUT --lora FILE[:WEIGHT] ...``"""
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    apply = sub.add_parser(
        "apply",
        help="write OUT: PACKAGE with these adapters fused (none: its base weights), without re-tracing",
        description="Rewrite only the UNet / text-encoder weights the adapters touch. Adapters already in the "
        "package are replaced, not stacked: the package keeps its base weights.",
    )
    apply.add_argument("package", help="an engine package written by `diffrt export`")
    apply.add_argument("out", help="the package to write (PACKAGE itself with --force)")
    add_lora_argument(apply, "an adapter to fuse")
    apply.add_argument("--allow-pickle", action="store_true", help="read .bin/.pt/.ckpt adapters (tensors only)")
    apply.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run_lora(args: argparse.Namespace) -> int:
    from .lora_package import apply_loras

    def progress(name: str, message: str) -> None:
        print(f"  {name:<16} {message}", file=sys.stderr, flush=True)

    report = apply_loras(
        args.package,
        args.out,
        _lora_specs(args.lora),
        force=args.force,
        allow_pickle=args.allow_pickle,
        progress=progress,
    )
    for adapter in report.adapters:
        modules = ", ".join(f"{n} {c}" for n, c in adapter["modules"].items() if c)
        print(f"{adapter['file']} x{adapter['weight']:g} ({adapter['format']}): {modules} modules")
    changed = ", ".join(f"{n} {c}" for n, c in report.rewritten.items())
    print(f"wrote {report.path} ({changed} weights rewritten) in {report.seconds:.1f} s")
    return 0
