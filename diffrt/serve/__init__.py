"""``diffrt.serve``: the server's public name (its code lives in ``diffrt.runtime.serve``, the runtime's side)."""

from diffrt.runtime.serve import ServeConfig, ServeError, Server, StepBatcher, create_app

__all__ = ["ServeConfig", "ServeError", "Server", "StepBatcher", "create_app"]
