"""``diffrt.serve.ray``: the server as a Ray Serve deployment (see ``diffrt.runtime.serve.ray``)."""

from diffrt.runtime.serve.ray import build_app, deployment

__all__ = ["build_app", "deployment"]
