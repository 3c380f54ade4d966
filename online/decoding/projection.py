"""The closed-loop fast path: the mean projection of the current window's frames on a CD, one dot product
per frame."""

from __future__ import annotations

import bisect

import numpy as np

from online.decoding.boundary import Decode
from online.decoding.directions import CodingDirection


class RunningProjection:
    """Mean projection on a CD of the frames of the current window, updated per frame (one dot product).

    `window_s=None` averages every frame since the last `reset()` (call it at the window's start, e.g. on
    each DelayPeriod entry, since an early lick restarts the delay); a number keeps a sliding window of the
    frames within `window_s` of the newest one. Frames may come out of order; a frame older than the window
    is ignored. Because projection is linear, the result equals `cd.project(mean of the same frames)`."""

    def __init__(self, cd: CodingDirection, window_s: float | None = None) -> None:
        if window_s is not None and window_s <= 0:
            raise ValueError(f"window_s must be positive or None, got {window_s}")
        self.cd = cd
        self.window_s = window_s
        self._vector = np.ascontiguousarray(cd.vector)
        self._frames: list[tuple[float, float]] = []
        self._sum = 0.0
        self._count = 0

    def reset(self) -> None:
        self._frames.clear()
        self._sum = 0.0
        self._count = 0

    def add(self, time_s: float, values: np.ndarray) -> float:
        """Add one frame's activity (neurons,); returns the window's mean projection so far."""
        p = float(self._vector @ values)
        if self.window_s is None:
            self._sum += p
            self._count += 1
            return self._sum / self._count
        frames = self._frames
        if frames and time_s <= frames[-1][0] - self.window_s:
            return self._sum / self._count
        bisect.insort(frames, (time_s, p))
        self._sum += p
        self._count += 1
        oldest = frames[-1][0] - self.window_s
        while frames[0][0] <= oldest:
            self._sum -= frames.pop(0)[1]
            self._count -= 1
        return self._sum / self._count

    @property
    def n_frames(self) -> int:
        return self._count

    @property
    def value(self) -> float | None:
        """Mean projection over the window's frames (None before the first frame)."""
        return self._sum / self._count if self._count else None

    def decode(self) -> Decode | None:
        value = self.value
        return None if value is None else self.cd.boundary.decode(value)
