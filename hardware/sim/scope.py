"""The simulated microscope inside `rig run`, as the rig process sees it: coupled to the Bpod emulator,
rendering in its own process.

`SimScope`: a `WorldCoupling` puts the microscope into the emulator's world (the imaging-trigger TTL starts
an acquisition, cue outputs mark epochs); the simulated mouse's `on_plan` / `on_lick` give it the side the
mouse will lick and its licks; the session gives each trial's context (`set_trial_context`, when it starts
or queues the trial; the mouse does not know the context). These calls only append to a queue: nothing
heavy runs in the engine thread or the session's process. A light thread (the clock) reads the engine's
cycle every frame interval of host time and sends the queued behaviour, then the cycle, to the microscope
process (`hardware/sim/scope_process.py`), which renders and publishes (`hardware/sim/scope_renderer.py`).
Rendering is numpy work that would otherwise hold the rig process's GIL: measured on a 2-core machine, a
rendering thread raised another thread's p99 wake-up latency from 0.06 ms to 4.7 ms (the GIL's switch
interval), enough for a 100x session to miss queueing its next trial. Its log records are forwarded to the
rig process's logging. At stop the rig waits as long as the process makes progress (`STOP_TIMEOUT_S`
without progress is a failure).

`SimScope.for_speed` sizes the microscope with `plan_for_speed` (costs measured once per rig process,
`hardware/sim/scope_plan.py`), so a session at `--speed X` does not make it fall behind: a reduced size or
rate is logged as a warning (by `plan_for_speed`) and kept in `configured` / `effective` for session.json.

Outputs, per frame:

- lossless path (`QueuedLosslessPath`, `hardware/frames/lossless.py`, optional): numbered and queued; a
  sender thread pushes the queue through a `LosslessSender` (PUSH, connects; the online processor binds
  `network.frames`).
- display path (`LossyPublisher`, PUB, binds `network.frames_display`): latest-wins, never blocks.
- ScanImage TIFF (optional, `hardware/sim/loop_tiff.py`): one loop-mode file per trial,
  `<folder>/sim_<trial>_00001.tif`, compact header.

Back-pressure on the lossless path, and why the microscope never blocks: it renders on the Bpod clock and
must keep up with it, so it never waits on a socket. Frames wait in a bounded queue (`max_pending_bytes`,
64 MB by default: ~4 s of 512x512 frames at 30 Hz) while the receiver is slow; a sender thread blocks on
the PUSH socket (that is where back-pressure lands) and retries a send nobody takes. When the queue is full
(the receiver is gone, or slower than the microscope for longer than the queue lasts) a new frame is not
queued: it is counted as `undeliverable`, a warning says how many per second, and since its sequence number
was taken it shows as a gap at the receiver too. Nothing is dropped silently. At stop, queued frames get
`flush_timeout_s` to leave (none when nobody takes frames); what is left is counted as undeliverable too.
One blind spot: `sent` counts frames handed to ZeroMQ, and a PUSH socket still connecting to an absent
receiver accepts up to its high-water mark (32) of them; if the path is `stalled` at close, those went
nowhere.

Health counters (`SimScope.health()`): frames made, sent on each path, undeliverable, late, the largest
lag, how far the renderer is behind the clock, the rate achieved on the Bpod clock and per host second,
render cost, TIFF files written, the process's state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardware.frames.lossless import DEFAULT_MAX_PENDING_BYTES
from hardware.sim.microscope import ImagingPlan, MicroscopeConfig, plan_for_speed
from hardware.sim.scope_plan import DEFAULT_CPU_BUDGET, cached_frame_cost, plan_dict
from hardware.sim.scope_process import process_context, run_microscope_process
from hardware.sim.world_coupling import WorldCoupling
from online.transport import LinkSecurity

if TYPE_CHECKING:
    from hardware.bpod.emulator.world import TrialRecord, World

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
"""At stop, how long the rig waits for the microscope process to report progress (it renders what is left,
then sends its final counters)."""


class MicroscopeStartError(RuntimeError):
    """The microscope process could not start (e.g. an endpoint could not be bound); says why."""


class _EventQueue:
    """Stands in for the `SimMicroscope` in `WorldCoupling`: each call becomes a queued event."""

    def __init__(self) -> None:
        self.events: deque[tuple[Any, ...]] = deque()

    def start_trial(self, bpod_time_s: float, context: str | None = None, upcoming_side: str | None = None,
                    epochs: Any = None, trial: int | None = None) -> None:
        self.events.append(("start_trial", bpod_time_s, context, upcoming_side, epochs, trial))

    def set_trial_info(self, context: str | None = None, upcoming_side: str | None = None,
                       cue: str | None = None) -> None:
        self.events.append(("set_trial_info", context, upcoming_side, *((cue,) if cue is not None else ())))

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

    def define_pattern(self, key: str, recipe: dict[str, float]) -> None:
        """A pattern the trials may name from now on (`SimMicroscope.define_pattern`)."""
        self._queue.events.append(("define_pattern", key, dict(recipe)))

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
        context = process_context()
        parent, child = context.Pipe(duplex=True)
        level = min(logging.getLogger().getEffectiveLevel(), logger.getEffectiveLevel())
        process = context.Process(target=run_microscope_process, name="sim-microscope", daemon=True,
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
        return {"configured": plan_dict(self.configured), "effective": plan_dict(self.effective),
                "reduced": self.reduced, "speed": self.speed, "cpu_budget_fraction": self.cpu_budget,
                "seed": self.config.seed, "n_neurons": self.config.n_neurons}

    def health(self) -> dict[str, Any]:
        """The plan, the latest counters from the microscope process (final ones after `stop()`), and the
        link's own: events and clock messages sent, errors."""
        return {**self.describe(), "running": self.running, **self._health, "final": self._final,
                "events_sent": self.events_sent, "clock_messages": self.clock_messages,
                "clock_ms": round(1e3 * self.poll_s, 2), "error": self.error}


def _summary(health: dict[str, Any]) -> str:
    lossless = health.get("lossless") or {}
    effective = health["effective"]
    return (f"{health.get('frames_made', 0)} frames over {health.get('trials_imaged', 0)} trial(s) at "
            f"{effective['height']}x{effective['width']}, achieved {health.get('achieved_rate_hz')} Hz (Bpod "
            f"clock), {health.get('frames_late', 0)} late, lossless sent {lossless.get('sent', '-')} / "
            f"undeliverable {lossless.get('undeliverable', '-')}")
