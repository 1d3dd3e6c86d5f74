"""Helpers of the server tests (imported by name: tests/serve is on the path while its tests run)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``create_app`` on uvicorn in a thread, on a free local port: real HTTP, in this process (so a test can reach
    the server's state, e.g. to slow a model down)."""

    def __init__(self, models, config=None) -> None:
        import uvicorn

        from diffrt.serve import Server, create_app

        self.server = Server(models, config)
        self.app = create_app(server=self.server)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.uvicorn.started and self.server.ready):
            assert time.monotonic() < deadline, "the server did not start"
            assert self.server.load_error is None, self.server.load_error
            time.sleep(0.05)

    def slow_down(self, model: str, seconds_per_step: float) -> None:
        """Make each UNet step of ``model`` take at least this long more (a model slower than the tiny test one)."""
        hooks = self.server.queues[model].model.base.stage_hooks
        hooks.append(lambda event: time.sleep(seconds_per_step) if event.stage == "unet" else None)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=60)
