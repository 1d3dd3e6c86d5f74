"""Measurements in fresh interpreters: each benchmark child prints one JSON object as its last line."""

from __future__ import annotations

import json
import subprocess
import sys


def json_child(code: str, *args: str) -> dict:
    """Run ``code`` with ``args`` in a new Python process; its last stdout line, parsed, numbers to 2 decimals."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    return {k: round(v, 2) for k, v in json.loads(out.strip().splitlines()[-1]).items()}
