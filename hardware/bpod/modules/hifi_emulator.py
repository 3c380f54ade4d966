"""An emulated HiFi module: a UART module of the emulated state machine, and its own USB serial port on
a pty over which the host loads waveforms (the BpodHiFiPlayer firmware's protocol, `hifi_protocol`).

It keeps what was loaded and pushed, and records every play the state machine asks for on the Bpod
clock (the cycle that wrote `P`, and the session time the host is told), which is what the task's sound
timing is checked against. Deliberate differences from the firmware: no audio, no microSD; a waveform
longer than a slot is answered with 0 (the firmware would write into the next slot's space).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from hardware.bpod.emulator.modules import BpodTime, ModuleLink
from hardware.bpod.emulator.pty_pair import PtyPair
from hardware.bpod.module_info import MODULE_PROBE, ModuleInfo, encode_self_description
from hardware.bpod.modules import hifi_protocol as hp

logger = logging.getLogger(__name__)

FIRMWARE_VERSION = 6
PLAY_LOG_LENGTH = 1024
"""Plays and stops kept for inspection: the last few hundred trials of a session, not all of them."""
POLL_S = 0.05
_FIXED = {hp.HANDSHAKE: 0, hp.OP_INFO: 0, ord("V"): 0, hp.OP_SAMPLING_RATE: 4, hp.OP_ATTENUATION: 1,
          hp.OP_ENVELOPE_ON: 1, ord("H"): 1, ord("G"): 1, ord("N"): 2, ord("F"): 4, ord("W"): 1, ord("Z"): 4,
          hp.OP_PUSH: 0, hp.OP_PLAY: 1, hp.OP_STOP: 0, ord("x"): 1, ord("&"): 1, ord("$"): 0}
_ACKED = {hp.OP_SAMPLING_RATE, hp.OP_ATTENUATION, hp.OP_ENVELOPE_ON, ord("H"), ord("G"), ord("N"), ord("F"),
          ord("W"), ord("Z"), ord("&"), hp.OP_PUSH}


@dataclass(frozen=True)
class PlayRecord:
    """One play the state machine asked for."""

    index: int  # slot, from 0
    cycle: int  # engine cycle of the state that sent `P`
    session_us: int  # the same instant on the session clock
    duration_s: float  # of the pushed waveform at the current sampling rate


@dataclass(frozen=True)
class Waveform:
    """A loaded waveform: int16 samples, (n,) mono or (n, 2) stereo."""

    samples: np.ndarray
    loop_mode: int = 0


class HiFiEmulator:
    """The HiFi module on a Bpod UART port (`world.attach_module(port, hifi)`) with its USB port on a pty."""

    def __init__(self, info: hp.HiFiInfo | None = None) -> None:
        self.info = info if info is not None else hp.HiFiInfo()
        self.sampling_rate = self.info.sampling_rate
        self.attenuation_bits = self.info.attenuation_bits
        self.envelope: np.ndarray | None = None
        self.envelope_on = False
        self.plays: deque[PlayRecord] = deque(maxlen=PLAY_LOG_LENGTH)
        self.stops: deque[BpodTime] = deque(maxlen=PLAY_LOG_LENGTH)
        self._listeners: list[tuple[Callable[[PlayRecord], None], Callable[[BpodTime], None]]] = []
        self._pushed: dict[int, Waveform] = {}
        self._loaded: dict[int, Waveform] = {}  # back buffers, playable after `*`
        self._link: ModuleLink | None = None
        self._from_bpod = bytearray()
        self._from_usb = bytearray()
        self._lock = threading.RLock()
        self._usb: PtyPair | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- what tests and simulations read ---------------------------------------------------------

    def waveform(self, index: int) -> Waveform | None:
        """The playable (pushed) waveform in slot `index` (from 0)."""
        with self._lock:
            return self._pushed.get(index)

    def add_listener(self, on_play: Callable[[PlayRecord], None],
                     on_stop: Callable[[BpodTime], None]) -> None:
        """Be told of every play and stop, in the engine thread, at the cycle the state machine sent it
        (a simulated animal hears the module this way)."""
        self._listeners.append((on_play, on_stop))

    def remove_listener(self, on_play: Callable[[PlayRecord], None],
                        on_stop: Callable[[BpodTime], None]) -> None:
        self._listeners.remove((on_play, on_stop))

    @property
    def port(self) -> str:
        if self._usb is None:
            raise RuntimeError("the HiFi emulator's USB port is not started")
        return self._usb.path

    # -- the UART side (the state machine) --------------------------------------------------------

    def plugged_in(self, link: ModuleLink) -> None:
        self._link = link

    def receive(self, data: bytes, at: BpodTime) -> None:
        with self._lock:
            self._from_bpod += data
            buf = self._from_bpod
            while buf:
                op = buf[0]
                if op in (hp.OP_PLAY, ord("x")) and len(buf) < 2:
                    return
                if op == MODULE_PROBE:
                    second = len(buf) > 1 and buf[1] == MODULE_PROBE  # firmware 23 asks twice
                    del buf[:2 if second else 1]
                    self._describe(with_hardware=second)
                elif op == hp.OP_PLAY:
                    index = buf[1]
                    del buf[:2]
                    self._play(index, at)
                elif op == hp.OP_STOP:
                    del buf[:1]
                    self._stopped(at)
                elif op == ord("x"):
                    del buf[:2]
                    self._stopped(at)
                elif op == hp.OP_PUSH:
                    del buf[:1]
                    self._push()
                else:
                    logger.debug("HiFi: byte %d from the state machine ignored", op)
                    del buf[:1]

    def _describe(self, with_hardware: bool) -> None:
        assert self._link is not None
        info = ModuleInfo(hp.MODULE_NAME, FIRMWARE_VERSION, events_requested=self.info.max_waveforms,
                          hardware_major=1 if with_hardware else None,
                          hardware_minor=0 if with_hardware else None)
        self._link.send(encode_self_description(info))

    def _play(self, index: int, at: BpodTime) -> None:
        if self._link is not None:
            self._link.send(bytes([hp.PLAY_ACK_EVENT]))
        wave = self._pushed.get(index)
        if wave is None:
            logger.warning("HiFi: the state machine played slot %d, which holds no pushed waveform", index)
            return
        play = PlayRecord(index, at.cycle, at.session_us, len(wave.samples) / self.sampling_rate)
        self.plays.append(play)
        for on_play, _ in list(self._listeners):
            on_play(play)

    def _stopped(self, at: BpodTime) -> None:
        self.stops.append(at)
        for _, on_stop in list(self._listeners):
            on_stop(at)

    def _push(self) -> None:
        self._pushed.update(self._loaded)
        self._loaded.clear()

    # -- the USB side (the host) --------------------------------------------------------------------

    def start(self) -> HiFiEmulator:
        if self._thread is not None:
            raise RuntimeError("the HiFi emulator is already started")
        self._usb = PtyPair()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="hifi-emulator", daemon=True)
        self._thread.start()
        logger.info("HiFi module emulator: USB port %s", self._usb.path)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        if self._usb is not None:
            self._usb.close()
            self._usb = None

    def __enter__(self) -> HiFiEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        usb = self._usb
        assert usb is not None
        while not self._stop.is_set():
            writers = [usb.master] if usb.pending else []
            ready, writable, _ = select.select([usb.master], writers, [], POLL_S)
            if writable:
                usb.flush()
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    data = os.read(usb.master, 1 << 16)
                    with self._lock:
                        self._from_usb += data
                        while self._from_usb:
                            length = self._usb_command_length()
                            if length is None or length > len(self._from_usb):
                                break
                            command = bytes(self._from_usb[:length])
                            del self._from_usb[:length]
                            usb.queue(self._execute(command))
                    usb.flush()

    def _usb_command_length(self) -> int | None:
        buf = self._from_usb
        op = buf[0]
        if op in _FIXED:
            return 1 + _FIXED[op]
        if op == hp.OP_ENVELOPE:
            if len(buf) < 3:
                return None
            (n,) = struct.unpack_from("<H", buf, 1)
            return 3 + (4 * n if n <= self.info.max_envelope_samples else 0)
        if op == hp.OP_LOAD:
            if len(buf) < 1 + hp.LOAD_HEADER.size:
                return None
            header = hp.LoadHeader.decode(bytes(buf[1:1 + hp.LOAD_HEADER.size]))
            data = header.n_bytes if header.index < self.info.max_waveforms else 0
            return 1 + hp.LOAD_HEADER.size + data
        return 1

    def _execute(self, command: bytes) -> bytes:
        """One USB command; returns the reply."""
        op, payload = command[0], command[1:]
        if op == hp.HANDSHAKE:
            return bytes([hp.HANDSHAKE_REPLY])
        if op == hp.OP_INFO:
            return hp.HiFiInfo(**{**self.info.__dict__, "sampling_rate": self.sampling_rate,
                                  "attenuation_bits": self.attenuation_bits}).encode()
        if op == ord("V"):
            return struct.pack("<II", 1, FIRMWARE_VERSION)
        if op == ord("$"):
            return b"\x01\x01"
        if op == hp.OP_SAMPLING_RATE:
            (self.sampling_rate,) = struct.unpack("<I", payload)
        elif op == hp.OP_ATTENUATION:
            self.attenuation_bits = payload[0]
        elif op == hp.OP_ENVELOPE_ON:
            self.envelope_on = bool(payload[0])
        elif op == hp.OP_ENVELOPE:
            (n,) = struct.unpack_from("<H", payload)
            if n > self.info.max_envelope_samples:
                return b"\x00"
            self.envelope = np.frombuffer(payload[2:], dtype="<f4").copy()
            return bytes([hp.ACK])
        elif op == hp.OP_LOAD:
            return self._load(payload)
        elif op == hp.OP_PUSH:
            self._push()
        elif op == hp.OP_PLAY:
            logger.info("HiFi: slot %d played from USB", payload[0])
        return bytes([hp.ACK]) if op in _ACKED else b""

    def _load(self, payload: bytes) -> bytes:
        header = hp.LoadHeader.decode(payload[:hp.LOAD_HEADER.size])
        if header.index >= self.info.max_waveforms:
            logger.error("HiFi: load into slot %d refused (slots 0..%d)", header.index,
                         self.info.max_waveforms - 1)
            return b""
        if header.n_samples > self.info.max_samples_per_waveform:
            logger.error("HiFi: a waveform of %d samples does not fit a slot (%d)", header.n_samples,
                         self.info.max_samples_per_waveform)
            return b"\x00"
        samples = np.frombuffer(payload[hp.LOAD_HEADER.size:], dtype="<i2").copy()
        if header.stereo:
            samples = samples.reshape(-1, 2)
        self._loaded[header.index] = Waveform(samples, header.loop_mode)
        return bytes([hp.ACK])
