"""Driver of the HiFi module's own USB serial port: load waveforms before the session, then the state
machine plays them (`HiFi1: play_message(k)`). Follows the BpodHiFi MATLAB class (`hifi_protocol`).
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import serial

from hardware.bpod.modules import hifi_protocol as hp

logger = logging.getLogger(__name__)

BAUDRATE = 1_000_000  # ignored by USB CDC, as BpodHiFi passes it
MAX_TRANSFER_ATTEMPTS = 5
LOAD_TIMEOUT_S = 10.0


class HiFiError(RuntimeError):
    """The HiFi module refused or did not answer; the message says what to do."""


class HiFiModule:
    """One HiFi module on its USB serial port."""

    def __init__(self, port: str, timeout_s: float = 1.0) -> None:
        self.port = port
        self.timeout_s = timeout_s
        self._serial: serial.Serial | None = None
        self.info = hp.HiFiInfo()

    def __enter__(self) -> HiFiModule:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        try:
            self._serial = serial.Serial(self.port, BAUDRATE, timeout=self.timeout_s,
                                         write_timeout=self.timeout_s)
        except (serial.SerialException, OSError) as exc:
            raise HiFiError(f"cannot open the HiFi module's port {self.port}: {exc}") from exc
        try:
            self._serial.reset_input_buffer()
            if self._command(bytes([hp.HANDSHAKE]), 1, "handshake") != bytes([hp.HANDSHAKE_REPLY]):
                raise HiFiError(f"the device on {self.port} is not a HiFi module (wrong handshake reply)")
            self.info = hp.HiFiInfo.decode(self._command(bytes([hp.OP_INFO]), hp.INFO.size, "device info"))
        except BaseException:
            self.close()
            raise
        logger.info("HiFi module on %s: %d-bit, %d slots, %d Hz", self.port, self.info.bit_depth,
                    self.info.max_waveforms, self.info.sampling_rate)

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    @property
    def sampling_rate(self) -> int:
        return self.info.sampling_rate

    def set_sampling_rate(self, rate_hz: int) -> None:
        if rate_hz not in hp.SAMPLING_RATES:
            raise HiFiError(f"the HiFi module plays at {', '.join(map(str, hp.SAMPLING_RATES))} Hz, "
                            f"not {rate_hz}")
        self._acknowledged(bytes([hp.OP_SAMPLING_RATE]) + struct.pack("<I", rate_hz), "sampling rate")
        self.info = hp.HiFiInfo(**{**self.info.__dict__, "sampling_rate": rate_hz})

    def set_attenuation_db(self, attenuation_db: float) -> None:
        """Digital volume: 0 (full scale) down to -103 dB, in 0.5 dB steps."""
        if not -103 <= attenuation_db <= 0:
            raise HiFiError(f"HiFi attenuation must be from -103 to 0 dB, got {attenuation_db}")
        self._acknowledged(bytes([hp.OP_ATTENUATION, round(-2 * attenuation_db)]), "attenuation")

    def set_envelope(self, envelope: np.ndarray | None) -> None:
        """Amplitude ramp applied at every onset, and reversed at an early stop; None turns it off."""
        if envelope is None:
            self._acknowledged(bytes([hp.OP_ENVELOPE_ON, 0]), "envelope off")
            return
        env = np.asarray(envelope, dtype="<f4")
        if env.ndim != 1 or not 0 < len(env) <= self.info.max_envelope_samples:
            raise HiFiError(
                f"the HiFi envelope has 1 to {self.info.max_envelope_samples} samples, got {env.shape}")
        if np.any(env < 0) or np.any(env > 1):
            raise HiFiError("every sample of the HiFi envelope must be between 0 and 1")
        self._acknowledged(bytes([hp.OP_ENVELOPE_ON, 1]), "envelope on")
        self._acknowledged(bytes([hp.OP_ENVELOPE]) + struct.pack("<H", len(env)) + env.tobytes(), "envelope")

    def load(self, index: int, waveform: np.ndarray) -> None:
        """Load `waveform` (samples in -1..1, shape (n,) mono or (n, 2) stereo) into slot `index` (from 0);
        it becomes playable at `push()`."""
        wave = np.asarray(waveform, dtype=float)
        if not 0 <= index < self.info.max_waveforms:
            raise HiFiError(f"HiFi slot {index} does not exist; slots are 0..{self.info.max_waveforms - 1}")
        if wave.ndim not in (1, 2) or (wave.ndim == 2 and wave.shape[1] != 2) or len(wave) == 0:
            raise HiFiError(f"a HiFi waveform is (n,) mono or (n, 2) stereo samples, got shape {wave.shape}")
        limit = self.info.max_samples_per_waveform
        if len(wave) > limit:
            raise HiFiError(f"waveform {index} is too long: {len(wave)} samples "
                            f"({len(wave) / self.sampling_rate:.1f} s); a HiFi slot holds at most {limit}")
        if np.any(np.abs(wave) > 1):
            raise HiFiError(f"waveform {index} has samples outside -1..1 (they would clip)")
        samples = np.round(wave * 32767).astype("<i2")
        header = hp.LoadHeader(index, len(wave), stereo=wave.ndim == 2)
        message = bytes([hp.OP_LOAD]) + header.encode() + samples.tobytes()
        assert self._serial is not None
        self._serial.timeout = self._serial.write_timeout = LOAD_TIMEOUT_S
        try:
            for attempt in range(MAX_TRANSFER_ATTEMPTS):
                reply = self._command(message, 1, f"loading waveform {index}")
                if reply == bytes([hp.ACK]):
                    return
                logger.warning("HiFi module dropped data of waveform %d (attempt %d)", index, attempt + 1)
        finally:
            self._serial.timeout = self._serial.write_timeout = self.timeout_s
        raise HiFiError(f"the HiFi module on {self.port} refused waveform {index} "
                        f"{MAX_TRANSFER_ATTEMPTS} times")

    def push(self) -> None:
        """Make every newly loaded waveform playable."""
        self._acknowledged(bytes([hp.OP_PUSH]), "push")

    def _command(self, data: bytes, reply_size: int, what: str) -> bytes:
        if self._serial is None:
            raise HiFiError("the HiFi module is not connected")
        try:
            self._serial.write(data)
            reply = self._serial.read(reply_size)
        except (serial.SerialException, OSError) as exc:
            raise HiFiError(f"lost the HiFi module on {self.port} during {what}: {exc}") from exc
        if len(reply) != reply_size:
            raise HiFiError(f"the HiFi module on {self.port} did not answer the {what} within "
                            f"{self._serial.timeout:g} s")
        return reply

    def _acknowledged(self, data: bytes, what: str) -> None:
        reply = self._command(data, 1, what)
        if reply != bytes([hp.ACK]):
            raise HiFiError(f"the HiFi module on {self.port} refused the {what}")
