"""The simulated microscope's own process: its entry point and how it is started.

Started through a `forkserver` with this module preloaded (so a start costs a fork, not an interpreter),
it owns the `SimMicroscope` and a `ScopeRenderer`, and talks to the rig process (`SimScope`,
`hardware/sim/scope.py`) over a pipe: it receives behaviour events, clock readings and "stop"; it sends
"ready" or "error", its log records, and health reports (the last one "final"). It runs niced (`NICE`), so
a busy machine slows the pictures, not the behaviour. It renders in slices of at most a health interval and
reads its messages between them, so a renderer that is behind keeps reporting; at stop it renders what is
left up to the last clock, then sends its final counters.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hardware.frames.lossless import QueuedLosslessPath
from hardware.frames.publisher import FramePublisher
from hardware.sim.loop_tiff import LoopTiffFiles
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from hardware.sim.scope_renderer import ScopeRenderer
from online.transport import LossyPublisher

logger = logging.getLogger(__name__)

NICE = 10
"""The microscope process runs at lower priority than the rig process: when the CPU is short it falls
behind (counted as late frames, caught up later) instead of slowing the behaviour."""
HEALTH_INTERVAL_S = 0.5


class _PipeLogHandler(logging.Handler):
    """Sends log records to the rig process, which logs them under the same logger name."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the rig process is gone: nobody to tell
            self._send(("log", record.levelno, record.name, record.getMessage()))


def run_microscope_process(conn: Connection, config: MicroscopeConfig, speed: float, outputs: dict[str, Any],
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
    lossless: QueuedLosslessPath | None = None
    display: LossyPublisher | None = None
    try:
        sim = SimMicroscope(config)
        if outputs.get("frames"):
            lossless = QueuedLosslessPath(outputs["frames"], source=outputs["source"],
                                          max_pending_bytes=outputs["max_pending_bytes"],
                                          allow_remote=outputs["allow_remote"], security=outputs["security"])
        if outputs.get("frames_display"):
            display = LossyPublisher(outputs["frames_display"], source=outputs["source"],
                                     allow_remote=outputs["allow_remote"], security=outputs["security"])
        tiff = None
        if outputs.get("tiff_folder"):
            Path(outputs["tiff_folder"]).mkdir(parents=True, exist_ok=True)
            tiff = LoopTiffFiles(outputs["tiff_folder"], sim)
        publisher = FramePublisher(lossless=lossless, display=display) if lossless or display else None
        pump = ScopeRenderer(sim, speed, publisher=publisher, tiff=tiff)
        if lossless is not None:
            lossless.start()
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


_context_lock = threading.Lock()


def process_context() -> Any:
    """A forkserver context (safe with the rig's threads, and a start is one fork of a server that has
    already imported this module); plain spawn where forkserver does not exist."""
    with _context_lock:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
