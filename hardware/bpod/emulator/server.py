"""The emulated state machine served on pseudo-terminals, so unmodified clients can open it.

One thread owns the engine. It sleeps in `select` on the pty masters until the engine's next
wakeup (converted to host time through the speed factor, at most 5 ms), stamps incoming bytes
with the current virtual cycle, advances the engine and writes what it produced. The virtual
clock is `cycle = host seconds since start * 10 000 * speed`; timestamps the host sees come
from it, never from the host clock, so they are exact at any speed.

With `usb_frames` the link is modelled too: bytes in either direction are delivered at USB frame
boundaries of the virtual clock (1 ms full-speed frames on the r2 and r1, 125 us micro-frames on
the Teensy 4.1 of the r2.5 and r2+), so latencies measured on the emulator include what a real
link adds. Off by default: bytes then move as soon as the thread serves them.

Other threads reach the engine through `World` calls, which take the server's lock and first
bring the engine up to the present, then wake the thread so a newly scheduled input is served
on time. While no client is connected the main port carries the discovery byte 0xDE every
100 ms of host time; a byte nobody read is not followed by another (no pile-up).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType

from hardware.bpod.emulator.engine import DISCOVERY_BYTE, Firmware
from hardware.bpod.emulator.pty_pair import PtyPair
from hardware.bpod.emulator.world import World
from hardware.bpod.hardware_description import preset

logger = logging.getLogger(__name__)

MAX_SLEEP_S = 0.005
DISCOVERY_INTERVAL_S = 0.1
USB_FRAME_US = {"r1": 1000, "r2": 1000, "r2.5": 125, "r2plus": 125}  # full speed vs high speed


class EmulatorServer:
    """A Bpod state machine on a pty (plus the APP port on firmware 23, and the FlexIO analog port
    on the r2+)."""

    def __init__(self, firmware: int = 23, model: str = "r2", speed: float = 1.0, *,
                 faithful_quirks: bool = False, usb_frames: bool = False) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.hw = preset(model, firmware)
        self.usb_frame_us: int | None = USB_FRAME_US[model] if usb_frames else None
        self._held: deque[tuple[float, PtyPair, bytes]] = deque()  # (host release time, port, bytes)
        self.firmware = Firmware(self.hw, faithful_quirks=faithful_quirks)
        self.world: World = self.firmware.world
        self.speed = speed
        self._cycles_per_s = 1e6 / self.hw.cycle_us * speed
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main: PtyPair | None = None
        self._app: PtyPair | None = None
        self._analog: PtyPair | None = None
        self._wake_r = self._wake_w = -1
        self._t0 = 0.0
        self._cycle0 = 0
        self._last_discovery = float("-inf")
        self._was_connected = False
        self._access_depth = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def port(self) -> str:
        if self._main is None:
            raise RuntimeError("the emulator is not started")
        return self._main.path

    @property
    def app_port(self) -> str | None:
        return self._app.path if self._app is not None else None

    @property
    def analog_port(self) -> str | None:
        """r2+: the FlexIO analog port (it answers `}` with 223)."""
        return self._analog.path if self._analog is not None else None

    def _ports(self) -> list[PtyPair]:
        return [p for p in (self._main, self._app, self._analog) if p is not None]

    def start(self) -> EmulatorServer:
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._main = PtyPair()
        if self.hw.has_app_port:
            self._app = PtyPair()
        if self.hw.has_analog_port:
            self._analog = PtyPair()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._t0 = time.perf_counter()
        self._cycle0 = self.firmware.cycle
        self.world.external_access = self._external_access
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="bpod-emulator", daemon=True)
        self._thread.start()
        logger.info("Bpod emulator (firmware %d, %s) on %s%s", self.hw.firmware_major, self.hw.inputs,
                    self.port, f", APP port {self.app_port}" if self._app else "")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._poke()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            logger.error("emulator thread did not stop")
        self._thread = None
        self.world.external_access = contextlib.nullcontext
        for p in self._ports():
            p.close()
        self._main = self._app = self._analog = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the virtual clock --------------------------------------------------------------------

    def virtual_cycle(self) -> int:
        """The engine cycle that corresponds to the host's present."""
        # The epsilon keeps float rounding from landing a wakeup at its own host time one cycle short.
        return self._cycle0 + int((time.perf_counter() - self._t0) * self._cycles_per_s + 1e-6)

    def host_time(self, cycle: int) -> float:
        """perf_counter() time at which the virtual clock reaches `cycle`."""
        return self._t0 + (cycle - self._cycle0) / self._cycles_per_s

    # -- the thread ---------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._main is not None
        readers = {self._main.master: self.firmware.receive_main}
        if self._app is not None:
            readers[self._app.master] = self.firmware.receive_app
        if self._analog is not None:
            readers[self._analog.master] = lambda data, at: None  # the firmware never reads it
        ports = self._ports()
        try:
            while not self._stop.is_set():
                with self._lock:  # world calls from other threads append to the same buffers
                    self._catch_up()
                    wakeup = self.firmware.next_wakeup_cycle()
                    timeout = min(self._discovery(), self._release_held())
                    for p in ports:
                        p.flush()
                    writers = [p.master for p in ports if p.pending]
                if wakeup is not None:
                    timeout = min(timeout, self.host_time(wakeup) - time.perf_counter())
                ready, writable, _ = select.select([*readers, self._wake_r], writers, [], max(timeout, 0.0))
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                for fd in ready:
                    if fd in readers:
                        data = self._read(fd)
                        if data:
                            with self._lock:
                                self._catch_up()
                                readers[fd](data, self._arrival_cycle())
        except Exception:
            logger.exception("Bpod emulator thread failed")
            raise

    def _read(self, fd: int) -> bytes:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def _catch_up(self) -> None:
        """Advance the engine to the present and queue what it wrote (lock held); with the USB
        model, frame by frame, each frame's bytes held until that frame ends."""
        fw = self.firmware
        target = self.virtual_cycle()
        self._take_output(fw.cycle)  # written by world calls at the current cycle
        while fw.cycle < target:
            wakeup = fw.next_wakeup_cycle()
            if self.usb_frame_us is None or wakeup is None or wakeup > target:
                fw.advance_to(target)
            else:
                last_of_frame = -(-(self._frame_of(wakeup) + 1) * self.usb_frame_us // self.hw.cycle_us) - 1
                fw.advance_to(min(target, last_of_frame))
            self._take_output(fw.cycle)

    def _frame_of(self, cycle: float) -> int:
        assert self.usb_frame_us is not None
        return int(cycle * self.hw.cycle_us // self.usb_frame_us)

    def _take_output(self, cycle: int) -> None:
        """Queue what the firmware wrote by `cycle`: now, or at the end of that cycle's USB frame."""
        fw = self.firmware
        release = None
        if self.usb_frame_us is not None:
            release = self.host_time((self._frame_of(cycle) + 1) * self.usb_frame_us / self.hw.cycle_us)
        for port, data in ((self._main, fw.take_main_output()), (self._app, fw.take_app_output()),
                           (self._analog, fw.take_analog_output())):
            if port is None or not data:
                continue
            if release is None:
                port.queue(data)
            else:
                self._held.append((release, port, data))

    def _release_held(self) -> float:
        """Queue the held bytes whose frame has ended; returns the time until the next one does."""
        now = time.perf_counter()
        while self._held and self._held[0][0] <= now:
            _, port, data = self._held.popleft()
            port.queue(data)
        return self._held[0][0] - now if self._held else MAX_SLEEP_S

    def _arrival_cycle(self) -> int | None:
        """With the USB model: the cycle at whose end bytes the host writes now reach the firmware
        (the end of the next frame's start: the firmware sees them from the first cycle after it)."""
        if self.usb_frame_us is None:
            return None
        now = (time.perf_counter() - self._t0) * self._cycles_per_s + self._cycle0
        boundary = (self._frame_of(now) + 1) * self.usb_frame_us / self.hw.cycle_us
        return max(math.ceil(boundary - 1e-9) - 1, self.firmware.cycle)

    def _discovery(self) -> float:
        """Write 0xDE while unconnected, every 100 ms; returns the time until the next one."""
        assert self._main is not None
        now = time.perf_counter()
        connected = self.firmware.connected
        if self._was_connected and not connected:
            self._last_discovery = now  # the firmware resumes discovery ~100 ms after `Z`
        self._was_connected = connected
        if connected:
            return MAX_SLEEP_S
        if now - self._last_discovery >= DISCOVERY_INTERVAL_S:
            self._last_discovery = now
            # Dropped if the last one is still unread, and held back once the host has spoken.
            if not self._main.pending and self._main.unread() == 0 and not self.firmware.main_input_pending:
                self._main.queue(bytes([DISCOVERY_BYTE]))
        return min(MAX_SLEEP_S, self._last_discovery + DISCOVERY_INTERVAL_S - now)

    @contextlib.contextmanager
    def _external_access(self) -> Iterator[None]:
        """World calls from any thread: under the lock, with the engine at the present."""
        with self._lock:
            outermost = self._access_depth == 0  # nested calls (pulse_input) see one instant
            self._access_depth += 1
            try:
                if outermost and not self.firmware.busy and self._thread is not None:
                    self._catch_up()
                yield
            finally:
                self._access_depth -= 1
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")
