"""A byte-progress line on stderr, shown only on a terminal and only once work takes over a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .sizes import format_size

__all__ = ["Progress"]


class Progress:
    """Call with a byte count as work advances; use as a context manager to end the line.

    Nothing is printed when `enabled` is false, when the stream is not a
    terminal, or before `delay` seconds have passed: short jobs stay silent.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None, delay: float = 1.0) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.start = time.monotonic()
        self.delay = delay
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and now - self.start >= self.delay and now - self._last_draw >= 0.1:
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {share:4.0%} {format_size(self.done)}/{format_size(self.total)} {format_size(int(rate))}/s"
        )
        self.stream.flush()
        self._last_draw, self._drawn = now, True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
