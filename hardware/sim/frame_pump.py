"""The simulated microscope inside `rig run`: coupled to the Bpod emulator, rendering in its own process.

Two halves:

- In the rig process, `SimScope`: a `WorldCoupling` puts the microscope into the emulator's world (the
  imaging-trigger TTL starts an acquisition, cue outputs mark epochs); the simulated mouse's `on_plan` /
  `on_lick` give it the side the mouse will lick and its licks; the session gives each trial's context
  (`set_trial_context`, when it starts or queues the trial; the mouse does not know the context). These
  calls only append to a queue: nothing heavy runs in the engine thread or the session's process. A light
  thread (the clock) reads the engine's cycle every frame interval of host time and sends the queued
  behaviour, then the cycle, to the microscope process.
- The microscope process (started through a `forkserver` with this module preloaded, so a start costs a
  fork, not an interpreter): owns the `SimMicroscope`, renders every frame that started before the cycle it
  was sent, and publishes each one (`FramePump`). Rendering is numpy work that would otherwise hold the rig
  process's GIL: measured on a 2-core machine, a rendering thread raised another thread's p99 wake-up
  latency from 0.06 ms to 4.7 ms (the GIL's switch interval), enough for a 100x session to miss queueing
  its next trial. It runs niced (`NICE`), so a busy machine slows the pictures, not the behaviour. Its
  log records are forwarded to the rig process's logging. It renders in slices of at most a health interval
  and reads its messages between them, so a renderer that is behind keeps reporting; at stop it renders
  what is left up to the last clock, then sends its final counters, and the rig waits as long as it makes
  progress (`STOP_TIMEOUT_S` without progress is a failure).

`SimScope.for_speed` sizes the microscope with `plan_for_speed` (costs measured once per rig process), so a
session at `--speed X` does not make it fall behind: a reduced size or rate is logged as a warning (by
`plan_for_speed`) and kept in `configured` / `effective` for session.json.

Outputs, per frame:

- lossless path (`QueuedLosslessPath`, optional): numbered and queued; a sender thread pushes the queue
  through a `LosslessSender` (PUSH, connects; the online processor binds `network.frames`).
- display path (`LossyPublisher`, PUB, binds `network.frames_display`): latest-wins, never blocks.
- ScanImage TIFF (optional): one loop-mode file per trial, `<folder>/sim_<trial>_00001.tif`, compact header.

Back-pressure on the lossless path, and why the pump never blocks: the microscope renders on the Bpod clock
and must keep up with it, so it never waits on a socket. Frames wait in a bounded queue (`max_pending_bytes`,
64 MB by default: ~4 s of 512x512 frames at 30 Hz) while the receiver is slow; a sender thread blocks on
the PUSH socket (that is where back-pressure lands) and retries a send nobody takes. When the queue is full
(the receiver is gone, or slower than the microscope for longer than the queue lasts) a new frame is not
queued: it is counted as `undeliverable`, a warning says how many per second, and since its sequence number
was taken it shows as a gap at the receiver too. Nothing is dropped silently. At stop, queued frames get
`flush_timeout_s` to leave (none when nobody takes frames); what is left is counted as undeliverable too.
One blind spot: `sent` counts frames handed to ZeroMQ, and a PUSH socket still connecting to an absent
receiver accepts up to its high-water mark (32) of them; if the path is `stalled` at close, those went
nowhere.

Health counters (`SimScope.health()`): frames made, sent on each path, undeliverable, late (published more
than `late_after_s` of host time after the clock passed the frame's end), the largest lag, how far the
renderer is behind the clock (`render_behind_s`), the rate achieved on the Bpod clock and per host second,
render cost, TIFF files written, the process's state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hardware.scanimage.publish import DiscardableLosslessSender
from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import (
    ImagingPlan,
    MicroscopeConfig,
    SimFrame,
    SimMicroscope,
    measure_frame_cost_s,
    plan_for_speed,
)
from hardware.sim.world_coupling import CYCLE_S, WorldCoupling
from online.transport import LinkSecurity, LossyPublisher, SendTimeout, TransportError
from online.wire import Part, Sender, default_source

if TYPE_CHECKING:
    from hardware.bpod.emulator.world import TrialRecord, World

logger = logging.getLogger(__name__)

DEFAULT_CPU_BUDGET = 0.3
"""Fraction of one core the microscope's rendering may use (`plan_for_speed`); it measures an idle core,
and in a session rendering costs ~1.5-2x that (contention), so ~half a core in practice."""
DEFAULT_MAX_PENDING_BYTES = 64 << 20
LATE_AFTER_S = 0.25
"""A frame published more than this (host seconds) after the clock passed its end counts as late."""
TIFF_STEM = "sim"
NICE = 10
"""The microscope process runs at lower priority than the rig process: when the CPU is short it falls
behind (counted as late frames, caught up later) instead of slowing the behaviour."""
HEALTH_INTERVAL_S = 0.5
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
"""At stop, how long the rig waits for the microscope process to report progress (it renders what is left,
then sends its final counters)."""


class MicroscopeStartError(RuntimeError):
    """The microscope process could not start (e.g. an endpoint could not be bound); says why."""


_frame_costs: dict[MicroscopeConfig, float] = {}
_frame_costs_lock = threading.Lock()


def cached_frame_cost(config: MicroscopeConfig) -> Callable[[int, int], float]:
    """A `frame_cost_s(height, width)` for `plan_for_speed` that measures each size once per process."""

    def cost(height: int, width: int) -> float:
        key = replace(config, height=height, width=width, seed=0)
        with _frame_costs_lock:
            if key not in _frame_costs:
                _frame_costs[key] = measure_frame_cost_s(key, n_frames=30)
            return _frame_costs[key]

    return cost


def _plan_dict(plan: ImagingPlan) -> dict[str, Any]:
    return {"height": plan.height, "width": plan.width, "rate_hz": plan.rate_hz}


# --------------------------------------------------------------------------------------------------------
# microscope process: the lossless path that never blocks its producer


class QueuedLosslessPath:
    """Frames numbered by the producer, queued (bounded), and pushed by a sender thread.

    `offer` never blocks. The sender thread owns the socket; a send nobody takes within `send_timeout_s`
    is retried (the queue then fills). A frame that does not fit the queue is undeliverable: counted,
    logged at most once per second, and visible to the receiver as a sequence gap.
    """

    def __init__(self, endpoint: str, *, source: str | None = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, send_timeout_s: float = 0.25,
                 flush_timeout_s: float = 2.0, allow_remote: bool = False,
                 security: LinkSecurity | None = None, report_interval_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.max_pending_bytes = max_pending_bytes
        self.flush_timeout_s = flush_timeout_s
        self.report_interval_s = report_interval_s
        self._sender = Sender(source or default_source())
        self._socket = DiscardableLosslessSender(endpoint, timeout_s=send_timeout_s,
                                                 source=self._sender.source, allow_remote=allow_remote,
                                                 security=security)
        self._queue: deque[tuple[list[Part], int]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self.offered = 0
        self.sent = 0
        self.undeliverable = 0
        self.send_timeouts = 0
        self.pending_bytes = 0
        self.peak_pending_bytes = 0
        self.stalled = False
        self.error: str | None = None
        self._window_drops = 0
        self._window_start = time.monotonic()
        self._last_report = -math.inf

    def start(self) -> QueuedLosslessPath:
        self._thread = threading.Thread(target=self._run, name="sim-frames-lossless", daemon=True)
        self._thread.start()
        return self

    def offer(self, pixels: np.ndarray, fields: dict[str, Any]) -> bool:
        """Number and queue one frame; False (counted as undeliverable) when the queue is full."""
        parts = self._sender.frame(pixels, **fields)
        nbytes = int(pixels.nbytes)
        with self._cond:
            self.offered += 1
            if self._closing or self.pending_bytes + nbytes > self.max_pending_bytes or self.error:
                self.undeliverable += 1
                self._window_drops += 1
                self._report_drops()
                return False
            self._queue.append((parts, nbytes))
            self.pending_bytes += nbytes
            self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)
            self._cond.notify()
        return True

    def _report_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_report < self.report_interval_s:
            return
        why = self.error or "no receiver (is the online module running?), or one slower than the microscope"
        logger.warning("frames %s: %d frame(s) could not be delivered in the last %.1f s (%d in all; queue "
                       "full at %.0f MB): %s", self.endpoint, self._window_drops, now - self._window_start,
                       self.undeliverable, self.max_pending_bytes / 2**20, why)
        self._last_report, self._window_start, self._window_drops = now, now, 0

    def _run(self) -> None:
        socket = self._socket
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(0.2)
                if not self._queue or time.monotonic() > self._deadline:
                    break
                parts, nbytes = self._queue[0]
            try:
                socket.send_parts(parts)
            except SendTimeout:
                self.send_timeouts += 1
                if self._closing:
                    self.stalled = True
                    break  # closing and nobody takes frames: do not wait for the flush deadline
                if not self.stalled:
                    logger.warning("frames %s: nobody takes frames (no receiver, or a stalled one); queueing "
                                   "up to %.0f MB, then counting frames as undeliverable", self.endpoint,
                                   self.max_pending_bytes / 2**20)
                self.stalled = True
                continue
            except TransportError as exc:
                self.error = f"lossless path failed: {exc}"
                logger.error("frames %s: %s; further frames are undeliverable", self.endpoint, exc)
                break
            with self._cond:
                self._queue.popleft()
                self.pending_bytes -= nbytes
                self.sent += 1
            if self.stalled:
                logger.info("frames %s: the receiver takes frames again", self.endpoint)
                self.stalled = False
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self.pending_bytes = 0
            self.undeliverable += left
        if left:
            logger.warning("frames %s: %d queued frame(s) were not delivered before the path closed",
                           self.endpoint, left)

    def close(self) -> None:
        """Give queued frames `flush_timeout_s` to leave, then close the socket."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.flush_timeout_s
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.flush_timeout_s + self._socket.timeout_s + 1.0)
            if self._thread.is_alive():
                logger.error("frames %s: sender thread did not stop", self.endpoint)
                return
        if self.stalled or self.error:
            self._socket.discard_pending()
        self._socket.close()

    def report(self) -> dict[str, Any]:
        # sent = handed to ZeroMQ; if the path was stalled at close, up to the socket's HWM of those were
        # still queued inside ZeroMQ and were discarded with it (stalled_at_close).
        return {"endpoint": self.endpoint, "offered": self.offered, "sent": self.sent,
                "undeliverable": self.undeliverable, "pending": len(self._queue),
                "send_timeouts": self.send_timeouts,
                "peak_pending_mb": round(self.peak_pending_bytes / 2**20, 2),
                "max_pending_mb": round(self.max_pending_bytes / 2**20, 2),
                "stalled": self.stalled, "error": self.error}


# --------------------------------------------------------------------------------------------------------
# microscope process: the pump


class FramePump:
    """Renders and publishes a microscope's frames up to a given engine cycle (no threads of its own).

    Owns its outputs: the lossless path (with its sender thread), the display socket and the TIFF writer.
    """

    def __init__(self, sim: SimMicroscope, speed: float, *, lossless: QueuedLosslessPath | None = None,
                 display: LossyPublisher | None = None, tiff_folder: str | Path | None = None,
                 tiff_stem: str = TIFF_STEM, late_after_s: float = LATE_AFTER_S) -> None:
        self.sim = sim
        self.speed = speed
        self.lossless = lossless
        self.display = display
        self.tiff_folder = Path(tiff_folder) if tiff_folder is not None else None
        self.tiff_stem = tiff_stem
        self.late_after_s = late_after_s
        self._writer: ScanImageWriter | None = None
        self._writer_acquisition: int | None = None
        self._epoch = datetime.now()
        self.frames_made = 0
        self.display_sent = 0
        self.frames_late = 0
        self.max_lag_s = 0.0
        self.render_behind_s = 0.0
        self.event_errors = 0
        self.tiff_files = 0
        self.tiff_frames = 0
        self.tiff_error: str | None = None
        self._first_frame_s: float | None = None
        self._last_frame_end_s: float | None = None
        self._started = time.time()
        self._stopped: float | None = None
        self._trials: set[int] = set()
        if self.lossless is not None:
            self.lossless.start()

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
        fields = {"frame_index": frame.frame_index, "timestamp_s": frame.timestamp_s,
                  "trigger_timestamp_s": frame.trigger_timestamp_s, "trial": trial, "channel": 0, "plane": 0}
        if self.lossless is not None:
            self.lossless.offer(frame.pixels, fields)
        if self.display is not None:
            self.display.send_frame(frame.pixels, **fields)
            self.display_sent += 1
        if self.tiff_folder is not None and self.tiff_error is None:
            try:
                self._write_tiff(frame, trial)
            except (OSError, ValueError) as exc:
                self.tiff_error = f"{type(exc).__name__}: {exc}"
                logger.error("simulated microscope: cannot write TIFF files any more (%s); frames are still "
                             "published", self.tiff_error)
                self._close_writer()

    def _write_tiff(self, frame: SimFrame, trial: int) -> None:
        assert self.tiff_folder is not None
        if self._writer is None or self._writer_acquisition != frame.acquisition:
            self._close_writer()
            sim = self.sim
            self._writer = ScanImageWriter.for_loop_trial(
                self.tiff_folder, self.tiff_stem, trial, height=sim.height, width=sim.width,
                frame_rate_hz=sim.frame_rate_hz, dtype=sim.config.dtype, template="compact",
                first_frame_number=frame.frame_number + 1, epoch=self._epoch,
                acq_trigger_timestamp_s=frame.trigger_timestamp_s, overrides={"SI.extTrigEnable": 1})
            self._writer_acquisition = frame.acquisition
            self.tiff_files += 1
        aux = (frame.aux_trigger_s, (), (), ())
        self._writer.write_frame(frame.pixels, frame.timestamp_s, aux_triggers=aux)
        self.tiff_frames += 1

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()
            self._writer = None
            self._writer_acquisition = None

    def close(self) -> None:
        """Close the TIFF file and the sockets (the lossless path gets its flush time)."""
        self._close_writer()
        if self.lossless is not None:
            self.lossless.close()
        if self.display is not None:
            self.display.close()
        self._stopped = time.time()

    def health(self) -> dict[str, Any]:
        """Counters for the session record (plain JSON)."""
        sim = self.sim
        span = (self._last_frame_end_s - self._first_frame_s
                if self._first_frame_s is not None and self._last_frame_end_s is not None else 0.0)
        host_s = (self._stopped or time.time()) - self._started
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
            "lossless": self.lossless.report() if self.lossless is not None else None,
            "display": {"endpoint": self.display.endpoint, "sent": self.display_sent}
            if self.display is not None else None,
            "tiff": {"folder": str(self.tiff_folder), "files": self.tiff_files, "frames": self.tiff_frames,
                     "error": self.tiff_error} if self.tiff_folder is not None else None,
        }


class _PipeLogHandler(logging.Handler):
    """Sends log records to the rig process, which logs them under the same logger name."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the rig process is gone: nobody to tell
            self._send(("log", record.levelno, record.name, record.getMessage()))


def _microscope_process(conn: Connection, config: MicroscopeConfig, speed: float, outputs: dict[str, Any],
                        log_level: int) -> None:
    """Entry point of the microscope process: set up, say ready, then apply behaviour and render on the
    clock until told to stop (or the rig process is gone)."""
    send_lock = threading.Lock()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the rig decides
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(NICE)  # behaviour first: when the CPU is short, this process yields to the rig's

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_PipeLogHandler(send))
    root.setLevel(log_level)
    lossless = display = None
    try:
        sim = SimMicroscope(config)
        if outputs.get("frames"):
            lossless = QueuedLosslessPath(outputs["frames"], source=outputs["source"],
                                          max_pending_bytes=outputs["max_pending_bytes"],
                                          allow_remote=outputs["allow_remote"], security=outputs["security"])
        if outputs.get("frames_display"):
            display = LossyPublisher(outputs["frames_display"], source=outputs["source"],
                                     allow_remote=outputs["allow_remote"], security=outputs["security"])
        if outputs.get("tiff_folder"):
            Path(outputs["tiff_folder"]).mkdir(parents=True, exist_ok=True)
        pump = FramePump(sim, speed, lossless=lossless, display=display,
                         tiff_folder=outputs.get("tiff_folder"))
    except Exception as exc:
        for sock in (lossless, display):
            if sock is not None:
                sock.close()
        send(("error", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    send(("ready", os.getpid()))
    last_health = time.monotonic()
    clock: tuple[int, float] | None = None
    stopping = caught_up = False
    try:
        while not (stopping and caught_up):
            # Messages first (all of them, without waiting while frames are due), then frames up to the
            # newest clock for at most one health interval: behind or not, this loop keeps reading and
            # reporting, and after "stop" it renders what is left, then reports its final counters.
            if not stopping and conn.poll(0.0 if clock is not None and not caught_up else 0.1):
                while conn.poll(0):
                    message = conn.recv()
                    kind = message[0]
                    if kind == "event":
                        pump.apply(message[1])
                    elif kind == "clock":
                        clock = (message[1], message[2])
                    elif kind == "stop":
                        stopping = True
                        if clock is not None and pump.render_behind_s > 1.0:
                            logger.info("simulated microscope: stopping; %.1f s of Bpod time still to render "
                                        "(the renderer is behind)", pump.render_behind_s)
                        break
            caught_up = clock is None or pump.advance(*clock, budget_s=HEALTH_INTERVAL_S)
            if time.monotonic() - last_health >= HEALTH_INTERVAL_S:
                send(("health", pump.health()))
                last_health = time.monotonic()
    except (EOFError, OSError):
        pass  # the rig process is gone: close quietly
    except Exception:
        logger.exception("simulated microscope process failed")
    finally:
        pump.close()
        with contextlib.suppress(OSError, ValueError):
            send(("final", pump.health()))
            conn.close()


# --------------------------------------------------------------------------------------------------------
# rig process: the microscope in the emulator's world


class _EventQueue:
    """Stands in for the `SimMicroscope` in `WorldCoupling`: each call becomes a queued event."""

    def __init__(self) -> None:
        self.events: deque[tuple[Any, ...]] = deque()

    def start_trial(self, bpod_time_s: float, context: str | None = None, upcoming_side: str | None = None,
                    epochs: Any = None, trial: int | None = None) -> None:
        self.events.append(("start_trial", bpod_time_s, context, upcoming_side, epochs, trial))

    def set_trial_info(self, context: str | None = None, upcoming_side: str | None = None) -> None:
        self.events.append(("set_trial_info", context, upcoming_side))

    def mark_epoch(self, bpod_time_s: float, event: str) -> None:
        self.events.append(("mark_epoch", bpod_time_s, event))

    def lick(self, bpod_time_s: float, side: str) -> None:
        self.events.append(("lick", bpod_time_s, side))


class _ContextCoupling(WorldCoupling):
    """WorldCoupling that, at each trial start, announces the context the session gave for that trial."""

    def __init__(self, scope: SimScope, sim: Any, world: World, **wiring: Any) -> None:
        self._scope = scope  # before super().__init__, which registers the listeners
        super().__init__(sim, world, **wiring)

    def _on_trial(self, record: TrialRecord) -> None:
        super()._on_trial(record)
        if record.kind == "start":
            self._scope.current_trial = record.trial
            # Not triggered yet, so this is kept for the trigger; the side follows from the mouse's plan.
            self.announce_trial(self._scope.context_for(record.trial), None)


class SimScope:
    """The simulated microscope as seen from the rig process (see the module docstring).

    Build it with the emulator's world (it listens from then on), `start(...)` it with its outputs when
    the session has a folder, `stop()` it for the final counters, `close()` it when the world goes away.
    Behaviour callbacks (`on_plan`, `on_lick`, the world's listeners) run in the engine thread and only
    queue; `set_trial_context` may be called from any thread.
    """

    def __init__(self, config: MicroscopeConfig, world: World, *, clock: Callable[[], int] | None = None,
                 imaging_trigger: str = "BNC1", sample_cues: Iterable[str] = ("BNC2", "PWM2", "PWM3"),
                 go_cue: str | None = "PWM4", configured: ImagingPlan | None = None, speed: float = 1.0,
                 cpu_budget: float = DEFAULT_CPU_BUDGET) -> None:
        self.config = config
        self.world = world
        self.speed = speed
        self.cpu_budget = cpu_budget
        self.effective = ImagingPlan(config.height, config.width, config.frame_rate_hz)
        self.configured = configured or self.effective
        self.current_trial: int | None = None
        self._clock = clock
        self._contexts: dict[int, str] = {}
        self._last_context: str | None = None
        self._lock = threading.Lock()
        self._queue = _EventQueue()
        self.coupling = _ContextCoupling(self, self._queue, world, imaging_trigger=imaging_trigger,
                                         sample_cues=sample_cues, go_cue=go_cue)
        frame_interval = 1.0 / (config.frame_rate_hz * speed)
        self.poll_s = min(max(frame_interval, 0.002), 0.05)
        self._process: Any = None
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._health: dict[str, Any] = {}
        self._final = False
        self._outputs: dict[str, Any] = {}
        self.events_sent = 0
        self.clock_messages = 0
        self.error: str | None = None

    @classmethod
    def for_speed(cls, config: MicroscopeConfig, world: World, speed: float,
                  cpu_budget: float = DEFAULT_CPU_BUDGET, **kwargs: Any) -> SimScope:
        """Sized by `plan_for_speed` (frame costs measured once per process); a reduction is logged."""
        plan = plan_for_speed(speed, cpu_budget, config, frame_cost_s=cached_frame_cost(config))
        configured = ImagingPlan(config.height, config.width, config.frame_rate_hz)
        effective = replace(config, height=plan.height, width=plan.width, frame_rate_hz=plan.rate_hz)
        return cls(effective, world, configured=configured, speed=speed, cpu_budget=cpu_budget, **kwargs)

    @property
    def reduced(self) -> bool:
        return self.effective != self.configured

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- behaviour in ---------------------------------------------------------------------------------

    def set_trial_context(self, trial: int, context: str) -> None:
        """The context of Bpod trial `trial` (call before the trial starts: when it is started or queued)."""
        with self._lock:
            self._contexts[trial] = context
            self._last_context = context
            for old in [t for t in self._contexts if t < trial - 16]:
                del self._contexts[old]

    def context_for(self, trial: int | None) -> str | None:
        with self._lock:
            if trial is not None and trial in self._contexts:
                return self._contexts[trial]
            return self._last_context

    def on_plan(self, cue: str | None, side: str | None) -> None:
        """`SimulatedMouse.on_plan`: the side the mouse will lick in the current trial."""
        self.coupling.announce_trial(self.context_for(self.current_trial), side)

    def on_lick(self, cycle: int, side: str) -> None:
        """`SimulatedMouse.on_lick`: a lick at an engine cycle (scheduled, so possibly in the future)."""
        self.coupling.lick(cycle, side)

    def now_cycle(self) -> int:
        """The engine cycle up to which every event has been reported.

        With `clock` (the emulator's `lambda: server.firmware.cycle`): read without the server's lock; the
        engine sets it before it processes that cycle, so everything before it is done, and the emulator
        thread keeps it within ~5 ms of host time of the present. Without: `World.now_cycle`, which takes
        the server's lock and brings the engine up to the present first. (Not used with the pty server:
        its output flush runs outside that lock, and a `World` call overlapping it fails with BufferError.)
        """
        return self._clock() if self._clock is not None else self.world.now_cycle

    # -- the microscope process ---------------------------------------------------------------------------

    def start(self, *, frames: str | None = None, frames_display: str | None = None,
              tiff_folder: str | Path | None = None, allow_remote: bool = False,
              security: LinkSecurity | None = None,
              max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, source: str = "sim-microscope") -> None:
        """Start the microscope process with its outputs and the clock thread; raises if it cannot start
        (e.g. an endpoint cannot be bound)."""
        if self._thread is not None:
            raise RuntimeError("the simulated microscope is already running")
        self._outputs = {"frames": frames, "frames_display": frames_display,
                         "tiff_folder": str(tiff_folder) if tiff_folder is not None else None,
                         "allow_remote": allow_remote, "security": security,
                         "max_pending_bytes": max_pending_bytes, "source": source}
        context = _process_context()
        parent, child = context.Pipe(duplex=True)
        level = min(logging.getLogger().getEffectiveLevel(), logger.getEffectiveLevel())
        process = context.Process(target=_microscope_process, name="sim-microscope", daemon=True,
                                  args=(child, self.config, self.speed, self._outputs, level))
        process.start()
        child.close()
        self._process, self._conn = process, parent
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            message = self._receive(max(remaining, 0.0)) if remaining > 0 else None
            if message is None:
                self._kill()
                raise MicroscopeStartError(f"its process did not start in {START_TIMEOUT_S:g} s")
            if message[0] == "ready":
                break
            if message[0] == "error":
                self._kill()
                raise MicroscopeStartError(f"cannot start: {message[1]}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_clock, name="sim-microscope-clock", daemon=True)
        self._thread.start()
        eff = self.effective
        logger.info("simulated microscope: %dx%d at %.2f Hz on the Bpod clock (%gx), process %d, clock every "
                    "%.1f ms; lossless %s, display %s, TIFF %s", eff.height, eff.width, eff.rate_hz,
                    self.speed, process.pid, 1e3 * self.poll_s, frames or "off", frames_display or "off",
                    tiff_folder or "off")

    def _receive(self, timeout_s: float) -> tuple[Any, ...] | None:
        """One message from the microscope process (logs and health are handled here); None on timeout."""
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    return None
                message = conn.recv()
            except (EOFError, OSError):
                if self.error is None and not self._final:
                    self.error = "the simulated microscope process ended unexpectedly"
                    logger.error("%s (exit code %s)", self.error, getattr(self._process, "exitcode", None))
                return ("gone",)
            kind = message[0]
            if kind == "log":
                logging.getLogger(message[2]).log(message[1], "%s", message[3])
                continue
            if kind in ("health", "final"):
                self._health = message[1]
                self._final = self._final or kind == "final"
            return message

    def _send_pending(self) -> None:
        """Behaviour queued so far, then the clock (read first, so every event before it is in the batch)."""
        assert self._conn is not None
        cycle = self.now_cycle()
        now = time.time()
        events = self._queue.events
        while events:
            self._conn.send(("event", events.popleft()))
            self.events_sent += 1
        self._conn.send(("clock", cycle, now))
        self.clock_messages += 1

    def _run_clock(self) -> None:
        try:
            while not self._stop.is_set():
                began = time.perf_counter()
                self._send_pending()
                while True:  # logs and health reports, without waiting
                    message = self._receive(0.0)
                    if message is None:
                        break
                    if message[0] == "gone":
                        return
                self._stop.wait(max(0.0, self.poll_s - (time.perf_counter() - began)))
            self._send_pending()  # up to the moment of stopping
        except (OSError, ValueError) as exc:
            self.error = self.error or f"lost the simulated microscope process: {exc}"
            logger.error("%s", self.error)

    def stop(self) -> None:
        """Render up to the present, close the outputs, end the process; keeps the final counters."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5.0)
        stuck = self._thread.is_alive()  # blocked sending to a process that no longer reads
        self._thread = None
        conn = self._conn
        assert conn is not None
        if stuck:
            logger.error("simulated microscope: its process does not take messages; terminating it")
            self._kill(terminate=True)
            return
        with contextlib.suppress(OSError, ValueError):
            conn.send(("stop",))
        # A renderer that is behind (starved of CPU: it runs niced) renders the rest before its final
        # report, and reports its progress meanwhile: wait as long as it makes progress.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        made = self._health.get("frames_made")
        while not self._final and time.monotonic() < deadline:
            message = self._receive(deadline - time.monotonic())
            if message is None or message[0] == "gone":
                break
            if message[0] == "health" and self._health.get("frames_made") != made:
                made = self._health.get("frames_made")
                deadline = time.monotonic() + STOP_TIMEOUT_S
        if not self._final:
            logger.error("simulated microscope: no final report from its process (no progress for %g s); "
                         "counters may be incomplete", STOP_TIMEOUT_S)
        self._kill()
        logger.info("simulated microscope: %s", _summary(self.health()))

    def _kill(self, terminate: bool = False) -> None:
        process, self._process = self._process, None
        if process is not None:
            if terminate:
                process.terminate()
            process.join(5.0)
            if process.is_alive():
                logger.error("simulated microscope process %d did not exit; terminating it", process.pid)
                process.terminate()
                process.join(2.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Stop (if running) and stop listening to the world."""
        self.stop()
        self.coupling.close()

    # -- reports ------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"configured": _plan_dict(self.configured), "effective": _plan_dict(self.effective),
                "reduced": self.reduced, "speed": self.speed, "cpu_budget_fraction": self.cpu_budget,
                "seed": self.config.seed, "n_neurons": self.config.n_neurons}

    def health(self) -> dict[str, Any]:
        """The plan, the latest counters from the microscope process (final ones after `stop()`), and the
        link's own: events and clock messages sent, errors."""
        return {**self.describe(), "running": self.running, **self._health, "final": self._final,
                "events_sent": self.events_sent, "clock_messages": self.clock_messages,
                "clock_ms": round(1e3 * self.poll_s, 2), "error": self.error}


_context_lock = threading.Lock()


def _process_context() -> Any:
    """A forkserver context (safe with the rig's threads, and a start is one fork of a server that has
    already imported this module); plain spawn where forkserver does not exist."""
    with _context_lock:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context


def _summary(health: dict[str, Any]) -> str:
    lossless = health.get("lossless") or {}
    effective = health["effective"]
    return (f"{health.get('frames_made', 0)} frames over {health.get('trials_imaged', 0)} trial(s) at "
            f"{effective['height']}x{effective['width']}, achieved {health.get('achieved_rate_hz')} Hz (Bpod "
            f"clock), {health.get('frames_late', 0)} late, lossless sent {lossless.get('sent', '-')} / "
            f"undeliverable {lossless.get('undeliverable', '-')}")
