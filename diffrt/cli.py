"""The ``diffrt`` command line. Each subcommand is one entry in COMMANDS; its module is imported only when run,
so ``diffrt --help`` and torch-free commands never load torch."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable

from diffrt import __version__


def _info(args: argparse.Namespace) -> int:
    """Versions and the execution backends this environment can use."""
    import importlib.metadata as md
    import importlib.util

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    report = {
        "diffrt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": version("numpy"),
        "tokenizers": version("tokenizers"),
        "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
        "tensorrt": version("tensorrt") or version("tensorrt-cu12"),
        "torch (export only)": version("torch"),
    }
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        report["onnxruntime providers"] = onnxruntime.get_available_providers()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value if value is not None else 'not installed'}")
    return 0


def _schedulers(args: argparse.Namespace) -> int:
    """List the schedulers, or show the one a package's scheduler config selects and its timesteps."""
    from diffrt.runtime.schedulers import SCHEDULERS, scheduler_from_config
    from diffrt.runtime.schedulers.base import load_config

    if not args.package:
        names = [n for n in sorted(SCHEDULERS) if SCHEDULERS[n].__module__.startswith("diffrt.runtime.schedulers.")]
        if args.json:
            print(json.dumps([_scheduler_entry(SCHEDULERS[n]) for n in names], indent=2))
            return 0
        width = max(map(len, names))
        for name in names:
            entry = _scheduler_entry(SCHEDULERS[name])
            print(f"{name:<{width}}  order {entry['order']}  {entry['summary']}")
        print(f"{len(names)} schedulers; each swaps with those listed in `diffrt schedulers --json` (compatibles)")
        return 0
    from pathlib import Path

    folder = Path(args.package)
    folder = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    config = load_config(folder)
    if args.use:
        config["_class_name"] = args.use
    scheduler = scheduler_from_config(config)
    scheduler.set_timesteps(args.steps)
    print(repr(scheduler))
    print(f"timesteps ({args.steps}): {scheduler.timesteps.tolist()}")
    return 0


def _scheduler_entry(cls) -> dict:
    """A scheduler's listing: name, order, the schedulers it swaps with (diffusers' compatibles), and the first
    paragraph of its module's docstring."""
    import sys

    doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
    return {
        "name": cls.__name__,
        "order": cls.order,
        "compatibles": sorted(c.__name__ for c in cls.compatible_classes() if c is not cls),
        "summary": " ".join(doc.strip().split("\n\n")[0].split()),
    }


def _tokenize(args: argparse.Namespace) -> int:
    """Print CLIP token ids of a prompt with a package's (or tokenizer folder's) tokenizer."""
    from diffrt.runtime.tokenizer import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(args.package)
    ids = tokenizer.encode(args.prompt)
    print(json.dumps({"ids": ids, "tokens": len(ids), "fits": len(ids) <= tokenizer.model_max_length}))
    return 0


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_schedulers(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", nargs="?", help="a package or diffusers folder (or its scheduler/ folder)")
    p.add_argument("--use", metavar="NAME", help="another scheduler class to build from that config")
    p.add_argument("--steps", type=int, default=25, help="number of inference steps (default 25)")
    p.add_argument("--json", action="store_true", help="list the schedulers as JSON (with what each swaps with)")


def _add_tokenize(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", help="a package or diffusers folder, or a tokenizer folder")
    p.add_argument("prompt")


def _add_export(p: argparse.ArgumentParser) -> None:
    from diffrt.export.cli import add_arguments
    from diffrt.runtime.quantize import add_arguments as add_quantize_arguments

    add_arguments(p)
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="then quantize the UNet to int8 for the CPU, calibrated by running the exported pipeline (as `diffrt "
        "quantize OUT OUT` does)",
    )
    add_quantize_arguments(p, export=True)


def _export(args: argparse.Namespace) -> int:
    from diffrt.export.cli import run

    if args.quantize and getattr(args, "lora_slots", None) is not None:
        from diffrt.runtime.errors import ConfigError

        raise ConfigError("--quantize int8 with --lora-slots: accepted: one of them (fuse LoRAs with --lora instead).")
    status = run(args)
    if status == 0 and args.quantize:
        import shutil

        from diffrt.runtime.quantize import run_from_args

        try:
            status = run_from_args(args, args.out, args.out)
        except BaseException:
            # The user asked for an int8 package: a float one left at OUT would pass for it.
            shutil.rmtree(args.out, ignore_errors=True)
            raise
    elif status == 0 and args.warm_cache:
        from diffrt.runtime.quantize import warm_graph_cache

        print(f"graph cache filled for this machine in {warm_graph_cache(args.out):.1f} s")
    return status


def _add_quantize(p: argparse.ArgumentParser) -> None:
    from diffrt.runtime.quantize import add_arguments

    add_arguments(p)


def _quantize(args: argparse.Namespace) -> int:
    from diffrt.runtime.quantize import run

    return run(args)


def _add_generate(p: argparse.ArgumentParser) -> None:
    from diffrt.runtime.cli import add_arguments

    add_arguments(p)


def _generate(args: argparse.Namespace) -> int:
    from diffrt.runtime.cli import run

    return run(args)


def _add_lora(p: argparse.ArgumentParser) -> None:
    from diffrt.export.cli import add_lora_arguments

    add_lora_arguments(p)


def _lora(args: argparse.Namespace) -> int:
    from diffrt.export.cli import run_lora

    return run_lora(args)


def _add_engines(p: argparse.ArgumentParser) -> None:
    from diffrt.runtime.engines.cli import add_arguments

    add_arguments(p)


def _engines(args: argparse.Namespace) -> int:
    from diffrt.runtime.engines.cli import run

    return run(args)


def _add_serve(p: argparse.ArgumentParser) -> None:
    from diffrt.runtime.serve.cli import add_arguments

    add_arguments(p)


def _serve(args: argparse.Namespace) -> int:
    from diffrt.runtime.serve.cli import run

    return run(args)


# name -> (help, add arguments, run). Later stages register export, generate, engines, bench here.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "info": ("show versions and available execution backends", _add_info, _info),
    "schedulers": ("list schedulers, or show a package's schedule", _add_schedulers, _schedulers),
    "tokenize": ("print CLIP token ids of a prompt", _add_tokenize, _tokenize),
    "export": ("export a diffusers folder or single-file checkpoint to an engine package", _add_export, _export),
    "generate": ("generate images with an engine package (torch-free)", _add_generate, _generate),
    "quantize": (
        "make a package's UNet int8 for the CPU, calibrated by its own pipeline (torch-free)",
        _add_quantize,
        _quantize,
    ),
    "lora": ("swap LoRA adapters in an exported package without re-tracing", _add_lora, _lora),
    "engines": ("build, inspect and refit TensorRT plans of a package", _add_engines, _engines),
    "serve": ("serve packages over HTTP: OpenAI and AUTOMATIC1111 APIs, jobs, metrics", _add_serve, _serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrt",
        description="Deploy diffusion models: export once to ONNX / TensorRT, generate without PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"diffrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from diffrt.runtime.errors import DiffrtError

    try:
        return args.run(args)
    except DiffrtError as error:
        print(f"diffrt {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
