"""A log line at most once per interval, for warnings a frame source would otherwise repeat per frame."""

from __future__ import annotations

import logging
import math
import time
from typing import Any


class EverySecond:
    """Log to `logger` at most once per interval; the next line says how many were held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -math.inf
        self._held = 0

    def __call__(self, level: int, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return
        if self._held:
            text += f" (+{self._held} more like it)"
        self.logger.log(level, text, *args)
        self._last, self._held = now, 0
