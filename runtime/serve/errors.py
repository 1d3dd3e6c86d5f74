"""The server's one error type: an HTTP status, a sentence, and the request field at fault."""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """A request the server answers with ``status`` and a JSON body naming ``field`` (None: no single field)."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape (``error.message``, ``error.param``), which its client raises with, and FastAPI's
        ``detail``, which AUTOMATIC1111 clients print."""
        kind = "invalid_request_error" if 400 <= self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.field, "code": self.status},
            "detail": self.message,
        }


def invalid(field: str, message: str) -> ServeError:
    """A 422 naming ``field``."""
    return ServeError(422, message, field)
