"""The HiFi module's USB serial protocol (BpodHiFiPlayer firmware, as its MATLAB class BpodHiFi uses it).

Shared by the driver (`hifi.py`) and the emulator (`hifi_emulator.py`). The host handshakes with byte
243 (reply 244), reads the device's limits with `I`, sets the sampling rate (`S` u32), the digital
attenuation (`A`), the onset/offset envelope (`E` on/off, `M` u16 n + n float32), loads a waveform into
the back buffer of a slot (`L` index, stereo, loop mode, u32 loop duration, u32 nSamples, then int16
samples, stereo interleaved; reply 1, or 0 when the transfer dropped bytes) and makes what it loaded
playable with `*` (push). Every setting is acknowledged with 1. From the state machine, `P` index plays
a pushed waveform (the module answers the state machine with byte 1: event `HiFi1_1`), `X` stops.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HANDSHAKE = 243
HANDSHAKE_REPLY = 244
ACK = 1
OP_INFO = ord("I")
OP_SAMPLING_RATE = ord("S")
OP_ATTENUATION = ord("A")
OP_ENVELOPE_ON = ord("E")
OP_ENVELOPE = ord("M")
OP_LOAD = ord("L")
OP_PUSH = ord("*")
OP_PLAY = ord("P")
OP_STOP = ord("X")
SAMPLING_RATES = (44100, 48000, 96000, 192000)
MAX_SAMPLING_RATE = 192000
MODULE_NAME = "HiFi"
PLAY_ACK_EVENT = 1  # the byte the module sends the state machine when told to play
INFO = struct.Struct("<4B3I")  # is HD, bit depth, max waveforms, attenuation bits; rate, max s, max envelope
LOAD_HEADER = struct.Struct("<3BII")  # index (from 0), stereo, loop mode; loop duration, nSamples
SAMPLE = struct.Struct("<h")


@dataclass(frozen=True)
class HiFiInfo:
    """The `I` reply."""

    is_hd: int = 0
    bit_depth: int = 16
    max_waveforms: int = 20
    attenuation_bits: int = 0  # -0.5 dB per bit
    sampling_rate: int = MAX_SAMPLING_RATE
    max_seconds_per_waveform: int = 30  # at the maximum sampling rate
    max_envelope_samples: int = 2000

    @property
    def max_samples_per_waveform(self) -> int:
        """What the firmware reserves per slot, whatever the rate (BpodHiFi: seconds x 192 kHz)."""
        return self.max_seconds_per_waveform * MAX_SAMPLING_RATE

    def encode(self) -> bytes:
        return INFO.pack(self.is_hd, self.bit_depth, self.max_waveforms, self.attenuation_bits,
                         self.sampling_rate, self.max_seconds_per_waveform, self.max_envelope_samples)

    @classmethod
    def decode(cls, data: bytes) -> HiFiInfo:
        return cls(*INFO.unpack(data))


@dataclass(frozen=True)
class LoadHeader:
    """What follows `L`: the slot (from 0), mono or stereo, looping, and the sample count."""

    index: int
    n_samples: int
    stereo: bool = False
    loop_mode: int = 0
    loop_duration: int = 0  # samples; 0 = loop until stopped

    @property
    def n_bytes(self) -> int:
        return self.n_samples * (4 if self.stereo else 2)

    def encode(self) -> bytes:
        return LOAD_HEADER.pack(self.index, int(self.stereo), self.loop_mode, self.loop_duration,
                                self.n_samples)

    @classmethod
    def decode(cls, data: bytes) -> LoadHeader:
        index, stereo, loop_mode, loop_duration, n_samples = LOAD_HEADER.unpack(data)
        return cls(index, n_samples, bool(stereo), loop_mode, loop_duration)


def play_message(index: int) -> list[int]:
    """The bytes a state sends the module to play waveform `index` (from 0): `P`, index."""
    return [OP_PLAY, index]
