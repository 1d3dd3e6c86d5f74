"""``diffrt serve PACKAGE[=NAME] ...``: the image server on uvicorn, with a graceful stop on SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "packages",
        nargs="+",
        metavar="PACKAGE[=NAME]",
        help="engine package folders to serve; NAME defaults to the folder's name (the first is the default model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--provider", default="auto", help="auto, cpu, cuda, tensorrt (default auto)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per operator (default: all cores)")
    p.add_argument("--max-queue", type=int, default=32, help="jobs that may wait per model; more get 429 (default 32)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="jobs of one model that run at once, sharing each UNet step (default 4; 1: one at a time)",
    )
    p.add_argument(
        "--no-step-batching",
        action="store_true",
        help="run concurrent jobs' UNet steps separately instead of in one batch",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file of API keys, one per line; requests then need 'Authorization: Bearer KEY'",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="[MODEL:]NAME=FILE",
        help="load a LoRA adapter into a model exported with --lora-slots; requests pick it by NAME "
        "(adapters={NAME: weight}); repeatable",
    )
    p.add_argument(
        "--max-side", type=int, default=2048, help="largest width or height a request may ask (default 2048)"
    )
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest width x height (default 1048576)")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--max-n", type=int, default=8, help="most images per request (default 8)")
    p.add_argument("--max-body-mb", type=float, default=32.0)
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="most pixels of an uploaded image")
    p.add_argument("--request-timeout", type=float, default=None, help="deadline of every request in seconds")
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running jobs may take to finish before they are cancelled (default 30)",
    )
    p.add_argument("--log-level", default="info")


def _models(entries: list[str]) -> dict[str, Path]:
    from diffrt.runtime.errors import ConfigError

    models: dict[str, Path] = {}
    for entry in entries:
        path, _, name = entry.partition("=")
        folder = Path(path)
        name = name or folder.resolve().name
        if not (folder / "model_index.json").is_file():
            raise ConfigError(
                f"PACKAGE {path!r} is not an engine package (no model_index.json); accepted: a folder "
                "written by `diffrt export`"
            )
        if name in models:
            raise ConfigError(f"model name {name!r} is given twice; accepted: PACKAGE=NAME with distinct names")
        models[name] = folder
    return models


def _loras(entries: list[str], models: dict[str, Path]) -> dict[str, dict[str, str]]:
    from diffrt.runtime.errors import ConfigError

    loras: dict[str, dict[str, str]] = {}
    for entry in entries:
        target, _, file = entry.partition("=")
        model, _, name = target.rpartition(":")
        if not file or not name:
            raise ConfigError(f"--lora {entry!r} is not supported; accepted: [MODEL:]NAME=FILE")
        if not model:
            if len(models) > 1:
                raise ConfigError(
                    f"--lora {entry!r} names no model and {len(models)} are served; accepted: MODEL:NAME=FILE"
                )
            model = next(iter(models))
        if model not in models:
            raise ConfigError(f"--lora {entry!r} names model {model!r}; accepted: one of {', '.join(models)}")
        loras.setdefault(model, {})[name] = file
    return loras


def read_keys(path: Path) -> tuple[str, ...]:
    from diffrt.runtime.errors import ConfigError

    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(
            f"--api-key-file {str(path)!r} cannot be read ({error.strerror}); accepted: a text file"
        ) from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ConfigError(f"--api-key-file {str(path)!r} holds no key; accepted: one key per line")
    return keys


def config_from(args: argparse.Namespace):
    from .server import ServeConfig

    models = _models(args.packages)
    config = ServeConfig(
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        step_batching=not args.no_step_batching,
        api_keys=read_keys(args.api_key_file) if args.api_key_file else (),
        max_side=args.max_side,
        max_pixels=args.max_pixels,
        max_steps=args.max_steps,
        max_n=args.max_n,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_image_pixels=args.max_image_pixels,
        request_timeout_s=args.request_timeout,
        shutdown_deadline_s=args.shutdown_timeout,
        provider=args.provider,
        threads=args.threads,
        loras=_loras(args.lora, models),
    )
    return models, config


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .server import Server

    models, config = config_from(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Server(models, config)
    app = create_app(server=server)

    class GracefulServer(uvicorn.Server):
        """On SIGTERM / SIGINT: refuse new jobs at once and start the deadline for running ones, then let uvicorn
        close its connections."""

        stopping: threading.Thread | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.stopping is None:
                server.drain()
                self.stopping = threading.Thread(target=server.shutdown, name="diffrt-shutdown", daemon=True)
                self.stopping.start()
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured signal once it has stopped (exit status 128 + signal); a stop asked for
            # and carried out in order is a success, so the process exits 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    uv = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(config.shutdown_deadline_s) + 5,
    )
    GracefulServer(uv).run()
    return 0
