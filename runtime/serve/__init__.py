"""``diffrt serve``: an image server over engine packages (FastAPI on uvicorn; ``pip install diffrt[serve]``).

- :func:`create_app`: the ASGI app (OpenAI Images, AUTOMATIC1111's ``/sdapi/v1``, diffrt's job API with server-sent
  events, ``/healthz``, ``/readyz``, Prometheus ``/metrics``), to run with uvicorn or mount in another app;
- :class:`ServeConfig`: limits, queue size, batching, API keys;
- :class:`StepBatcher`: step-level batching of concurrent calls' UNet runs, usable without the server;
- :mod:`diffrt.serve.ray`: the same app as a Ray Serve deployment.

Names are imported on first use, so ``diffrt --help`` loads neither FastAPI nor prometheus-client.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "create_app": ".app",
    "ServeConfig": ".server",
    "Server": ".server",
    "ServeError": ".errors",
    "StepBatcher": ".batching",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
