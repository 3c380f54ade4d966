"""A one-line progress bar on a terminal stream, for work that takes more than a few seconds."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """`step()` after each item; the line shows done/total, a bar, the elapsed time and an estimate of the
    rest. Off a terminal it writes a line only every `every` items, so a log stays short."""

    def __init__(self, total: int, label: str, stream: TextIO | None, every: int = 10) -> None:
        self.total, self.label, self.stream, self.every = max(0, total), label, stream, max(1, every)
        self.done = 0
        self._started = time.monotonic()
        self._tty = bool(stream is not None and stream.isatty())

    def step(self, what: str = "") -> None:
        self.done += 1
        if self.stream is None or (not self._tty and self.done % self.every and self.done != self.total):
            return
        elapsed = time.monotonic() - self._started
        rest = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = int(20 * self.done / self.total) if self.total else 20
        line = (f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.1f} s, ~{rest:4.0f} s left {what}")
        self.stream.write(("\r" + line.ljust(100)) if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self._tty:
            self.stream.write("\n")
            self.stream.flush()
