"""Quantities people type and read on the command line: image sizes (``512x768``) and byte counts (``3.2 GB``).

Shared by the export and runtime commands; imports nothing of either.
"""

from __future__ import annotations

import argparse
import re


def parse_size(text: str) -> tuple[int, int]:
    """``"512x768"`` -> (512, 768): height then width, in pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write HEIGHTxWIDTH, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


def human_bytes(n: float) -> str:
    """A byte count for people: ``512 B``, ``10.5 MB``, ``3.2 GB`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
