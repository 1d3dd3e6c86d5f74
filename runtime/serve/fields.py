"""Reading request fields: each value checked for type and range, each refusal a 422 naming the field.

JSON bodies and multipart forms both come through :class:`Fields`; form values arrive as strings and are parsed
as the field's type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import invalid

_MISSING = object()


class Fields:
    def __init__(self, body: Mapping[str, Any], form: bool = False) -> None:
        self.body = body
        self.form = form
        self.used: set[str] = set()

    def raw(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        value = self.body.get(name, _MISSING)
        return default if value is _MISSING or value is None else value

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def str(
        self,
        name: str,
        default: str | None = None,
        choices: tuple[str, ...] | None = None,
        required: bool = False,
        max_len: int = 10000,
    ) -> str | None:
        value = self.raw(name, _MISSING)
        if value is _MISSING:
            if required:
                raise invalid(name, f"{name} is missing; accepted: a string")
            return default
        if not isinstance(value, str):
            raise invalid(name, f"{name}={value!r} is not a string; accepted: a string")
        if len(value) > max_len:
            raise invalid(name, f"{name} holds {len(value)} characters; accepted: at most {max_len}")
        if choices is not None and value not in choices:
            raise invalid(name, f"{name}={value!r} is not supported; accepted: {', '.join(map(repr, choices))}")
        return value

    def int(self, name: str, default: int | None, low: int, high: int) -> int | None:
        value = self.raw(name, _MISSING)
        if value is _MISSING:
            return default
        if self.form and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise invalid(
                    name, f"{name}={value!r} is not an integer; accepted: an integer from {low} to {high}"
                ) from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(name, f"{name}={value!r} is not supported; accepted: an integer from {low} to {high}")
        return value

    def float(self, name: str, default: float | None, low: float, high: float) -> float | None:
        value = self.raw(name, _MISSING)
        if value is _MISSING:
            return default
        if self.form and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise invalid(
                    name, f"{name}={value!r} is not a number; accepted: a number from {low:g} to {high:g}"
                ) from None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high:
            raise invalid(name, f"{name}={value!r} is not supported; accepted: a number from {low:g} to {high:g}")
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw(name, _MISSING)
        if value is _MISSING:
            return default
        if self.form and isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise invalid(name, f"{name}={value!r} is not a boolean; accepted: true or false")
        return value

    def adapters(self, name: str = "adapters") -> dict[str, Any] | None:
        """``{"adapter name": weight}`` (weights: numbers or ``{"unet": w, "text_encoder": w}``)."""
        value = self.raw(name, _MISSING)
        if value is _MISSING:
            return None
        if self.form and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise invalid(name, f"{name} is not JSON; accepted: a JSON object {{adapter name: weight}}") from None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise invalid(name, f"{name}={value!r} is not supported; accepted: an object {{adapter name: weight}}")
        return value

    def seed(self, name: str = "seed") -> int | None:
        """A seed from 0 to 2**63 - 1; -1 or absent: the server draws one (and reports it)."""
        value = self.int(name, None, -1, 2**63 - 1)
        return None if value is None or value == -1 else value

    def accept_defaults(self, defaults: Mapping[str, tuple[Any, ...]], what: str) -> None:
        """Fields this server cannot honour: accepted at their default values, refused otherwise."""
        for name, accepted in defaults.items():
            if name not in self.body:
                continue
            self.used.add(name)
            value = self.body[name]
            if value is None or any(_same(value, a) for a in accepted):
                continue
            raise invalid(
                name,
                f"{name}={value!r} is not supported by {what}; accepted: "
                f"{' or '.join(json.dumps(a) for a in accepted)} (its default)",
            )

    def refuse_unknown(self, what: str) -> None:
        """Fields nobody asked for: accepted when empty (null, false, 0, "", [], {}), refused otherwise."""
        for name, value in self.body.items():
            if name in self.used or not value:
                continue
            raise invalid(name, f"{name} is not a field of {what} that this server knows; accepted: leave it out")


def _same(value: Any, accepted: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, accepted))
    return value == accepted if numbers else type(value) is type(accepted) and value == accepted


def parse_size(field: str, value: Any) -> tuple[int, int] | None:
    """OpenAI's ``size``: "WIDTHxHEIGHT" (or "auto" / absent: the model's default)."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and "x" in value:
        w, _, h = value.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    raise invalid(field, f'{field}={value!r} is not supported; accepted: "WIDTHxHEIGHT" (e.g. "512x512") or "auto"')
