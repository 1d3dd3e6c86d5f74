"""A small progress bar over denoising steps, written to stderr (diffusers shows tqdm's; we avoid the dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``with ProgressBar(total=n) as bar: bar.update()`` draws ``desc  40%|####      | 4/10 [1.2s, 3.3 it/s]``.

    Redrawn in place on a terminal; elsewhere (logs, pipes) only the finished line is written, once.
    """

    def __init__(self, total: int, desc: str = "", disable: bool = False, file: TextIO | None = None, width: int = 24):
        self.total, self.desc, self.disable, self.width = max(int(total), 0), desc, disable, width
        self.file = file if file is not None else sys.stderr
        self.count = 0
        self._start = time.perf_counter()
        self._live = bool(getattr(self.file, "isatty", lambda: False)())

    def __enter__(self) -> ProgressBar:
        self._start = time.perf_counter()
        if self._live:
            self._draw(end="")
        return self

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._live:
            self._draw(end="")

    def __exit__(self, *exc) -> None:
        self._draw(end="\n")

    def line(self) -> str:
        elapsed = time.perf_counter() - self._start
        done = min(self.count / self.total, 1.0) if self.total else 1.0
        filled = int(round(done * self.width))
        rate = f"{self.count / elapsed:.2f} it/s" if elapsed > 0 and self.count else "-- it/s"
        prefix = f"{self.desc} " if self.desc else ""
        bar = "#" * filled + " " * (self.width - filled)
        return f"{prefix}{done:4.0%}|{bar}| {self.count}/{self.total} [{elapsed:.1f}s, {rate}]"

    def _draw(self, end: str) -> None:
        if self.disable:
            return
        self.file.write(("\r" if self._live else "") + self.line() + end)
        self.file.flush()
