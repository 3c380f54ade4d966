"""Bpod state machine client over USB serial (pyserial), for firmware 22 and 23.

One process owns the port. After the handshake a reader thread owns all reads and parses the
trial stream, so the host can queue the next trial (RunASAP) while the current one runs, send
soft codes, virtual inputs and overrides mid-trial, and get event callbacks with low latency.
Every reply the host waits for has a timeout: a silent or unplugged device is one clear error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import serial

from hardware.bpod.codec import (
    CodecError,
    SoftCodeReceived,
    TrialStreamParser,
    decode_firmware_minor,
    decode_firmware_version,
    encode_state_machine,
)
from hardware.bpod.compiler import CompiledStateMachine, compile_state_machine
from hardware.bpod.hardware_description import (
    SUPPORTED_FIRMWARE,
    EventTable,
    HardwareDescription,
    input_channel_names,
    output_channel_names,
    read_hardware_description,
)
from hardware.bpod.module_info import (
    ModuleInfo,
    ModuleRecordError,
    allocate_module_events,
    read_module_records,
)
from hardware.bpod.trial import TrialEvent, TrialRecorder, TrialResult

log = logging.getLogger(__name__)

DISCOVERY_BYTE = 0xDE
APP_PORT_REPLY = 222
DEFAULT_BAUDRATE = 1_312_500
READ_POLL_S = 0.05
# A queued trial's start arrives a cycle plus the USB link after the previous trial ends. Firmware 23 never
# starts one whose transfer was still being read when that trial ended (its `startFlag == true` typo): it
# is loaded and waits for `R`. This long after the end, with nothing received, the client sends `R`. An `R`
# that reaches a device whose trial did start restarts that trial (the firmware sets startFlag whatever it
# is doing), so the wait is long against a real start (a cycle and a USB frame) and against a device that
# is slow to answer (an emulator on a loaded host); the quirk costs that much dead time when it happens.
START_WAIT_S = 0.25
QUIRK_WINDOW_S = 0.25
"""The quirk needs the transfer in progress at the trial's end: a state machine written this long before the
end arrived was read in full long before (a few kB over USB take milliseconds), so no `R` follows it."""


class BpodError(RuntimeError):
    """A problem with the Bpod that the user must act on; the message says what and where."""


class BpodConnectionError(BpodError):
    """The device is missing, silent, not a Bpod, on unsupported firmware, or was lost."""


class BpodClient:
    """Connects to one state machine and runs trials on it.

    Typical use: `start_trial(sm)`; `wait_for_state({...})` once the outcome is known;
    `start_trial(next_sm)` queues the next trial; `wait_for_trial()` returns the finished one.
    """

    def __init__(self, port: str, *, timeout_s: float = 1.0, baudrate: int = DEFAULT_BAUDRATE) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self.baudrate = baudrate
        self.hardware: HardwareDescription | None = None
        self.events: EventTable | None = None
        self.modules: list[ModuleInfo | None] = []
        self.on_event: Callable[[TrialEvent], None] | None = None
        self.on_state: Callable[[str, float], None] | None = None
        self.soft_code_handler: Callable[[int], None] | None = None
        self._serial: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._parser = TrialStreamParser()
        self._pending: deque[CompiledStateMachine] = deque()
        self._recorder: TrialRecorder | None = None
        self._results: deque[TrialResult] = deque()
        self._entered: set[str] = set()
        self._trials_started = 0
        self._trials_finished = 0
        self._entered_by_finished: dict[int, set[str]] = {}
        self._error: BpodError | None = None
        self._reader: threading.Thread | None = None
        self._stop_reader = threading.Event()
        self._received = 0  # chunks the reader has received: has anything come since the trial end?
        self._last_sent_s = 0.0  # monotonic time of the last state machine written
        self._start_watch: threading.Timer | None = None
        self.run_fallbacks = 0  # `R` sent because a queued trial's start did not come

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> BpodClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._serial is not None

    def connect(self) -> None:
        """Handshake, identify the device, enable inputs, allocate events, reset the clock."""
        try:
            self._serial = serial.Serial(
                self.port, self.baudrate, timeout=self.timeout_s, write_timeout=self.timeout_s
            )
        except (serial.SerialException, OSError) as exc:
            raise BpodConnectionError(f"cannot open the Bpod port {self.port}: {exc}") from exc
        try:
            self._handshake()
            major, machine_type = decode_firmware_version(self._command(b"F", 4, "firmware version"))
            if major not in SUPPORTED_FIRMWARE:
                raise BpodConnectionError(
                    f"the Bpod on {self.port} runs firmware {major}; supported firmware: 22, 23"
                )
            minor = pcb = 0
            if major >= 23:
                minor = decode_firmware_minor(self._command(b"f", 2, "firmware minor version"))
                pcb = self._command(b"v", 1, "board revision")[0]
            self._write(b"H")
            hw = read_hardware_description(
                lambda n: self._read_exact(n, "hardware description"), major, machine_type, minor, pcb
            )
            self.hardware = hw
            enable = bytes(0 if c in "UXZ" else 1 for c in hw.inputs)
            self._expect_ok(b"E" + enable, "enable inputs")
            self.modules = self._query_modules(hw)
            allocation = allocate_module_events(hw.max_serial_events, hw.serial_channels, self.modules)
            self.events = EventTable(hw, allocation, tuple(self.modules))
            self._expect_ok(b"%" + bytes(allocation), "event allocation")
            self._expect_ok(b"*", "session clock reset")
        except BaseException:
            self._serial.close()
            self._serial = None
            raise
        log.info(
            "connected to Bpod on %s: firmware %d.%d, machine type %d, inputs %s, outputs %s",
            self.port,
            hw.firmware_major,
            hw.firmware_minor,
            hw.machine_type,
            hw.inputs,
            hw.outputs,
        )
        self._serial.timeout = READ_POLL_S
        self._stop_reader.clear()
        self._reader = threading.Thread(target=self._read_loop, name="bpod-reader", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Stop any trial, disconnect (`Z` -> '1') and release the port."""
        if self._serial is None:
            return
        try:
            if self.trial_running:
                self.stop_trial()
                self.wait_for_trial(timeout_s=self.timeout_s)
        except BpodError as exc:
            log.warning("while closing: %s", exc)
        self._stop_reader.set()
        if self._start_watch is not None:
            self._start_watch.cancel()
        if self._reader is not None:
            self._serial.cancel_read()
            self._reader.join(timeout=2)
        try:
            self._serial.timeout = self.timeout_s
            self._serial.reset_input_buffer()
            self._serial.write(b"Z")
            reply = self._serial.read(1)
            if reply != b"1":
                log.warning("Bpod on %s did not confirm the disconnect (got %r)", self.port, reply)
        except (serial.SerialException, OSError) as exc:
            log.warning("Bpod on %s: disconnect failed: %s", self.port, exc)
        finally:
            self._serial.close()
            self._serial = None

    def _handshake(self) -> None:
        assert self._serial is not None
        ser = self._serial
        # A client that died mid-trial leaves the device running it, and maybe one queued after it.
        ser.write(b"XX")
        time.sleep(0.03)
        ser.reset_input_buffer()
        ser.write(b"6")
        deadline = time.monotonic() + self.timeout_s
        seen = bytearray()
        while time.monotonic() < deadline:
            byte = ser.read(1)
            if byte == b"5":
                return
            if byte and byte[0] != DISCOVERY_BYTE:
                seen += byte
        detail = f"; it sent {bytes(seen[:16]).hex(' ')}" if seen else ""
        raise BpodConnectionError(
            f"no Bpod answered the handshake on {self.port} within {self.timeout_s:g} s{detail}. "
            "Check that this is the state machine's port, that it is powered, and that no other "
            "program holds it."
        )

    def _read_exact(self, n: int, what: str) -> bytes:
        assert self._serial is not None
        try:
            data = self._serial.read(n)
        except (serial.SerialException, OSError) as exc:
            raise BpodConnectionError(
                f"lost the Bpod on {self.port} while reading the {what}: {exc}"
            ) from exc
        if len(data) != n:
            raise BpodConnectionError(
                f"the Bpod on {self.port} sent {len(data)} of {n} bytes of the {what} within "
                f"{self.timeout_s:g} s: the device stopped answering"
            )
        return data

    def _write(self, data: bytes) -> None:
        if self._serial is None:
            raise BpodConnectionError("the Bpod is not connected")
        if self._error is not None:
            raise self._error
        try:
            with self._write_lock:
                self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            raise BpodConnectionError(f"lost the Bpod on {self.port} while writing: {exc}") from exc

    def _command(self, data: bytes, reply_size: int, what: str) -> bytes:
        self._write(data)
        return self._read_exact(reply_size, what)

    def _expect_ok(self, data: bytes, what: str) -> None:
        reply = self._command(data, 1, f"reply to '{what}'")
        if reply != b"\x01":
            raise BpodConnectionError(f"the Bpod on {self.port} refused '{what}' (reply {reply.hex()})")

    def _query_modules(self, hw: HardwareDescription) -> list[ModuleInfo | None]:
        """`M`: one record per UART port; None where no module is attached."""
        self._write(b"M")
        try:
            return read_module_records(lambda n: self._read_exact(n, "module list"), hw.inputs.count("U"))
        except ModuleRecordError as exc:
            raise BpodConnectionError(f"the Bpod on {self.port} sent a bad module list: {exc}") from exc

    def write_to_module(self, channel: str, data: bytes) -> None:
        """Send bytes to a UART module now (`T`), e.g. `write_to_module("HiFi1", b"*")`."""
        assert self.hardware is not None
        names = [n for n, c in zip(output_channel_names(self.hardware, self.modules), self.hardware.outputs,
                                   strict=True) if c == "U"]
        if channel not in names:
            raise BpodError(f"unknown module channel {channel!r}; valid: {', '.join(names)}")
        if not 1 <= len(data) <= 255:
            raise BpodError(f"a module write carries 1 to 255 bytes, got {len(data)}")
        self._write(b"T" + bytes([names.index(channel) + 1, len(data)]) + data)

    def verify_app_port(self, app_port: str) -> bool:
        """Firmware 23: True if `app_port` is this device's APP port (`{` -> 222 there)."""
        with serial.Serial(app_port, self.baudrate, timeout=self.timeout_s) as app:
            app.reset_input_buffer()
            self._write(b"{")
            return app.read(1) == bytes([APP_PORT_REPLY])

    # ------------------------------------------------------------------ trials

    def compile(self, state_machine: Mapping[str, Any] | Any) -> CompiledStateMachine:
        """Validate against this device and compile; raises before anything is sent."""
        if self.hardware is None or self.events is None:
            raise BpodConnectionError("the Bpod is not connected")
        return compile_state_machine(state_machine, self.hardware, self.events)

    @property
    def trial_running(self) -> bool:
        with self._cond:
            return self._recorder is not None or bool(self._pending)

    def start_trial(self, state_machine: Mapping[str, Any] | Any) -> CompiledStateMachine:
        """Send a state machine with RunASAP: it starts now if idle, else the moment the current
        trial ends (zero dead time). At most one trial can wait in the queue."""
        compiled = self.compile(state_machine)
        assert self.hardware is not None
        payload = encode_state_machine(
            compiled.body, self.hardware, run_asap=True, use_back_signal=compiled.uses_back
        )
        with self._cond:
            if self._error is not None:
                raise self._error
            if len(self._pending) >= 1 and (self._recorder is not None or len(self._pending) >= 2):
                raise BpodError("a trial is already queued; wait for the current trial to end first")
            self._pending.append(compiled)
            self._parser.state_machine_sent()
        self._write(payload)
        self._last_sent_s = time.monotonic()
        return compiled

    def run_trial(
        self, state_machine: Mapping[str, Any] | Any, timeout_s: float | None = None
    ) -> TrialResult:
        self.start_trial(state_machine)
        return self.wait_for_trial(timeout_s)

    def wait_for_trial(self, timeout_s: float | None = None) -> TrialResult:
        """The next finished trial, in order. Raises on device loss or after `timeout_s`."""
        with self._cond:
            if not self._results and self._recorder is None and not self._pending:
                raise BpodError("no trial is running")
            ok = self._cond.wait_for(lambda: self._results or self._error is not None, timeout=timeout_s)
            if self._results:
                return self._results.popleft()
            if self._error is not None:
                raise self._error
            if not ok:
                raise BpodError(f"no trial ended within {timeout_s:g} s")
            raise BpodError("no trial is running")

    def poll_trial(self, timeout_s: float) -> TrialResult | None:
        """The next finished trial if one ends within `timeout_s`, else None (for loops that must
        stay responsive); raises on device loss."""
        with self._cond:
            self._cond.wait_for(lambda: self._results or self._error is not None, timeout=timeout_s)
            if self._results:
                return self._results.popleft()
            if self._error is not None:
                raise self._error
            return None

    @property
    def trials_finished(self) -> int:
        """Trials whose end record has arrived on this connection."""
        return self._trials_finished

    @property
    def trials_started(self) -> int:
        """Trials started on this connection; the trial that callbacks are reporting on."""
        return self._trials_started

    def wait_for_state(self, states: Iterable[str], timeout_s: float | None = None) -> str | None:
        """Block until the running trial enters one of `states`; returns it, or None if the trial
        ended first. Used to queue the next trial as soon as the outcome is known."""
        wanted = set(states)
        with self._cond:
            if self._recorder is None and not self._pending:
                raise BpodError("no trial is running")
            target = self._trials_started if self._recorder is not None else self._trials_started + 1

            def entered() -> set[str]:
                if self._trials_started == target:
                    return wanted & self._entered
                return wanted & self._entered_by_finished.get(target, set())

            self._cond.wait_for(
                lambda: self._error is not None or bool(entered()) or self._trials_finished >= target,
                timeout=timeout_s,
            )
            if self._error is not None:
                raise self._error
            hit = entered()
            return min(hit) if hit else None

    def partial_trial(self) -> TrialResult | None:
        """The events received so far of a trial that did not end (after the device was lost)."""
        with self._cond:
            return self._recorder.partial() if self._recorder is not None else None

    # ------------------------------------------------------------------ mid-trial commands

    def send_soft_code(self, number: int) -> None:
        """Raise event `SoftCode{number}` in the running trial (byte number-1, like MATLAB)."""
        assert self.events is not None
        allocated = self.events.allocated("X")
        if not 1 <= number <= allocated:
            raise BpodError(f"soft code {number} is out of range: SoftCode1..SoftCode{allocated}")
        self._write(b"~" + bytes([number - 1]))

    def set_virtual_input(self, channel: str, level: int) -> None:
        """Drive an input as if its line changed (logical level: 1 = Port In / BNC High); the
        physical line is ignored for the rest of the trial, as on the device."""
        assert self.hardware is not None
        names = input_channel_names(self.hardware)
        if channel not in names:
            raise BpodError(f"unknown input channel {channel!r}; valid: {', '.join(names)}")
        index = names.index(channel)
        raw = int(bool(level))
        if self.hardware.inputs[index] in "BW" and self.hardware.machine_type >= 2:
            raw = 1 - raw
        self._write(b"V" + bytes([index, raw]))

    def override_output(self, channel: str, value: int) -> None:
        """Set an output by hand (value 0 gives it back to the state machine)."""
        assert self.hardware is not None
        names = output_channel_names(self.hardware)
        if channel not in names:
            raise BpodError(f"unknown output channel {channel!r}; valid: {', '.join(names)}")
        if not 0 <= value <= 255:
            raise BpodError(f"output value {value} for {channel} is out of range 0..255")
        self._write(b"O" + bytes([names.index(channel), value]))

    def stop_trial(self) -> None:
        """End the running trial now (`X`); its record arrives as usual."""
        if self.trial_running:
            self._write(b"X")

    def set_paused(self, paused: bool) -> None:
        """Stop or resume the trial clock (`$`)."""
        self._write(b"$" + bytes([0 if paused else 1]))

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        assert self._serial is not None
        ser = self._serial
        while not self._stop_reader.is_set():
            try:
                data = ser.read(1)
                if data and ser.in_waiting:
                    data += ser.read(ser.in_waiting)
            except (serial.SerialException, OSError, TypeError) as exc:
                if self._stop_reader.is_set():
                    return
                self._fail(BpodConnectionError(f"lost the Bpod on {self.port}: {exc}"))
                return
            if not data:
                continue
            self._received += 1
            try:
                messages = self._parser.feed(data)
            except CodecError as exc:
                self._fail(BpodConnectionError(f"the Bpod on {self.port} sent bytes out of protocol: {exc}"))
                return
            for message in messages:
                self._dispatch(message)

    def _watch_start(self, delay_s: float, received: int) -> None:
        """After a trial ends with the next one queued: `R` if its start has not come in time."""
        self._start_watch = threading.Timer(delay_s, self._start_if_stalled, args=(received,))
        self._start_watch.daemon = True
        self._start_watch.start()

    def _start_if_stalled(self, received: int) -> None:
        """Send `R` if nothing came since the trial end, START_WAIT_S after it and after the last state
        machine was written (a device that was idle when that one arrived starts it on its own)."""
        with self._cond:
            if self._recorder is not None or not self._pending or self._error is not None:
                return
            if self._received != received or (self._serial is not None and self._serial.in_waiting):
                return  # bytes are on their way: the start came
            early_s = self._last_sent_s + START_WAIT_S - time.monotonic()
            if early_s > 0:
                self._watch_start(early_s, received)
                return
            self.run_fallbacks += 1
        log.warning("the Bpod did not start the queued trial %d on its own; sent R", self._trials_started + 1)
        try:
            self._write(b"R")
        except BpodError as exc:
            log.warning("could not send R: %s", exc)

    def _fail(self, error: BpodError) -> None:
        log.error("%s", error)
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _dispatch(self, message: Any) -> None:
        callbacks: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        with self._cond:
            if self._recorder is None:
                if not self._pending:
                    log.warning("Bpod sent %r with no trial pending; ignored", message)
                    return
                self._recorder = TrialRecorder(self._pending.popleft(), self.events)  # type: ignore[arg-type]
                self._entered = set()
                self._trials_started += 1
            recorder = self._recorder
            if isinstance(message, SoftCodeReceived) and self.soft_code_handler is not None:
                callbacks.append((self.soft_code_handler, (message.code,)))
            for kind, event in recorder.feed(message):
                if kind == "event" and self.on_event is not None:
                    callbacks.append((self.on_event, (event,)))
                elif kind == "state":
                    self._entered.add(recorder.current_state)
                    if self.on_state is not None:
                        callbacks.append(
                            (
                                self.on_state,
                                (recorder.current_state, recorder.entered_cycle * recorder.cycle_s),
                            )
                        )
                elif kind == "end":
                    assert recorder.result is not None
                    if recorder.confirmed is False:
                        log.error(
                            "the Bpod did not acknowledge the state machine of trial %d", self._trials_started
                        )
                    if recorder.result.missed_cycles:
                        log.warning(
                            "trial %d: the Bpod missed cycles (duration %.4f s vs %d cycles)",
                            self._trials_started,
                            recorder.result.duration_s,
                            recorder.result.exit_cycle,
                        )
                    self._results.append(recorder.result)
                    self._trials_finished += 1
                    self._entered_by_finished = {self._trials_finished: self._entered}
                    self._recorder = None
                    if self._pending and time.monotonic() - self._last_sent_s < QUIRK_WINDOW_S:
                        self._watch_start(START_WAIT_S, self._received)
            self._cond.notify_all()
        for fn, args in callbacks:
            try:
                fn(*args)
            except Exception:
                log.exception("Bpod callback %s failed", getattr(fn, "__name__", fn))
