"""The simulated microscope's loop inside its process: behaviour in, frames rendered up to the clock, out.

`ScopeRenderer` applies the behaviour events the rig process sends (`SimMicroscope` calls), renders every
frame that started before the newest engine cycle, and sends each one through a `FramePublisher`
(`hardware/frames/`: lossless path and display path) and, optionally, into loop-mode TIFF files
(`LoopTiffFiles`). It keeps the health counters: frames made, late (published more than `late_after_s` of
host time after the clock passed the frame's end), the largest lag, how far the renderer is behind the
clock (`render_behind_s`), the rate achieved on the Bpod clock and per host second, render cost.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from hardware.frames.publisher import FramePublisher
from hardware.sim.loop_tiff import LoopTiffFiles
from hardware.sim.microscope import SimFrame, SimMicroscope
from hardware.sim.world_coupling import CYCLE_S

logger = logging.getLogger(__name__)

LATE_AFTER_S = 0.25
"""A frame published more than this (host seconds) after the clock passed its end counts as late."""


class ScopeRenderer:
    """Renders and publishes a microscope's frames up to a given engine cycle (no threads of its own).

    Owns its outputs: the publisher (lossless path with its sender thread, display socket) and the TIFF
    files.
    """

    def __init__(self, sim: SimMicroscope, speed: float, *, publisher: FramePublisher | None = None,
                 tiff: LoopTiffFiles | None = None, late_after_s: float = LATE_AFTER_S) -> None:
        self.sim = sim
        self.speed = speed
        self.publisher = publisher
        self.tiff = tiff
        self.late_after_s = late_after_s
        self.frames_made = 0
        self.frames_late = 0
        self.max_lag_s = 0.0
        self.render_behind_s = 0.0
        self.event_errors = 0
        self._first_frame_s: float | None = None
        self._last_frame_end_s: float | None = None
        self._started = time.time()
        self._stopped: float | None = None
        self._trials: set[int] = set()

    def apply(self, event: tuple[Any, ...]) -> None:
        """One behaviour event from the rig process: (method name, *arguments) of `SimMicroscope`."""
        name, *args = event
        try:
            getattr(self.sim, name)(*args)
        except (ValueError, RuntimeError) as exc:  # a bad event is logged and skipped, never fatal
            self.event_errors += 1
            logger.warning("simulated microscope: %s%s skipped: %s", name, tuple(args), exc)

    def advance(self, cycle: int, clock_time: float, budget_s: float = math.inf) -> bool:
        """Render and publish every frame that started before engine cycle `cycle`, which the engine
        reached at host time `clock_time` (`time.time()`), for at most `budget_s` of host time; True when
        caught up. The budget keeps a renderer that is behind (starved of CPU) reading its messages and
        reporting, instead of disappearing into a backlog of many seconds."""
        sim = self.sim
        clock_s = cycle * CYCLE_S
        dt = 1.0 / sim.frame_rate_hz
        deadline = time.monotonic() + budget_s
        while True:
            start = sim.next_frame_time_s
            if start is None or start >= clock_s:
                sim.frames_until(clock_s)  # nothing left to render; the horizon moves up to the clock
                self.render_behind_s = 0.0
                return True
            self.render_behind_s = clock_s - start
            if time.monotonic() >= deadline:
                return False
            for frame in sim.frames_until(math.nextafter(start, math.inf)):  # the one frame starting then
                end = frame.bpod_time_s + dt
                self._emit(frame)
                lag = time.time() - (clock_time - (clock_s - end) / self.speed)
                if lag > self.late_after_s:
                    self.frames_late += 1
                self.max_lag_s = max(self.max_lag_s, lag)
                if self._first_frame_s is None:
                    self._first_frame_s = frame.bpod_time_s
                self._last_frame_end_s = end

    def _emit(self, frame: SimFrame) -> None:
        self.frames_made += 1
        trial = frame.trial if frame.trial is not None else frame.acquisition
        self._trials.add(trial)
        if self.publisher is not None:
            self.publisher.publish(frame.pixels, frame_index=frame.frame_index, timestamp_s=frame.timestamp_s,
                                   trigger_timestamp_s=frame.trigger_timestamp_s, trial=trial, channel=0,
                                   plane=frame.plane)
        if self.tiff is not None:
            self.tiff.write(frame, trial)

    def close(self) -> None:
        """Close the TIFF file and the sockets (the lossless path gets its flush time)."""
        if self.tiff is not None:
            self.tiff.close()
        if self.publisher is not None:
            self.publisher.close()
        self._stopped = time.time()

    def health(self) -> dict[str, Any]:
        """Counters for the session record (plain JSON)."""
        sim = self.sim
        span = (self._last_frame_end_s - self._first_frame_s
                if self._first_frame_s is not None and self._last_frame_end_s is not None else 0.0)
        host_s = (self._stopped or time.time()) - self._started
        publisher = self.publisher
        lossless = publisher.lossless if publisher is not None else None
        display = publisher.display if publisher is not None else None
        return {
            "frames_made": self.frames_made,
            "trials_imaged": len(self._trials),
            "frames_late": self.frames_late,
            "late_after_s": self.late_after_s,
            "max_lag_s": round(self.max_lag_s, 4),
            "render_behind_s": round(self.render_behind_s, 4),
            "late_events": sim.late_events,
            "event_errors": self.event_errors,
            "achieved_rate_hz": round(self.frames_made / span, 3) if span > 0 else None,
            "host_frames_per_s": round(self.frames_made / host_s, 1) if host_s > 0 else None,
            "render_ms_mean": None if not sim.stats.frames else round(sim.stats.mean_ms, 3),
            "render_ms_max": round(1e3 * sim.stats.max_s, 3),
            "lossless": lossless.report() if lossless is not None else None,
            "display": {"endpoint": display.endpoint, "sent": publisher.display_sent}
            if display is not None and publisher is not None else None,
            "tiff": self.tiff.report() if self.tiff is not None else None,
        }
