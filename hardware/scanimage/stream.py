"""The ScanImage Premium / ScanImageTools ZeroMQ frame-stream format, decoded.

A message is a 40-byte header of five little-endian float64 `[pixelsPerLine, linesPerFrame, numChannels,
timestamp, frameNumber]` and an int16 payload (x fastest, then lines, channels concatenated), normally as
two ZeroMQ parts. These pure functions are what a subscriber adapter calls per message; they do not import
zmq or the project's wire format (the adapter that republishes frames is separate). Malformed messages raise
`FrameStreamError` with a sentence that says what was wrong, so the caller can count, log and skip them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_FORMAT = "<5d"
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)  # 40
PIXEL_DTYPE = np.dtype("<i2")
MAX_DIMENSION = 1 << 16  # far above any scan; catches garbage headers before a huge allocation


class FrameStreamError(ValueError):
    """A message that is not a well-formed ScanImage frame."""


@dataclass(frozen=True)
class ScanImageFrameHeader:
    """The five header fields; `timestamp` is ScanImage's frame timestamp in seconds."""

    pixels_per_line: int
    lines_per_frame: int
    num_channels: int
    timestamp: float
    frame_number: int

    @property
    def payload_bytes(self) -> int:
        return self.pixels_per_line * self.lines_per_frame * self.num_channels * PIXEL_DTYPE.itemsize


def _buffer(part: Any) -> memoryview:
    """bytes, bytearray, memoryview or a zmq.Frame (which exposes `.buffer`)."""
    buffer = getattr(part, "buffer", part)
    try:
        return memoryview(buffer).cast("B")
    except TypeError as exc:
        raise FrameStreamError(f"message part of type {type(part).__name__} is not a byte buffer") from exc


def _whole(value: float, name: str, minimum: int, maximum: int = MAX_DIMENSION) -> int:
    if not math.isfinite(value) or value != int(value):
        raise FrameStreamError(f"header field {name} = {value!r} is not a whole number")
    number = int(value)
    if number < minimum or number > maximum:
        raise FrameStreamError(f"header field {name} = {number} is out of range")
    return number


def decode_scanimage_frame(parts: Sequence[Any]) -> tuple[ScanImageFrameHeader, np.ndarray]:
    """Decode `[header, payload]` (or one part holding both) into the header and a read-only
    (channels, lines, pixels) int16 array that shares the payload's memory (no copy)."""
    if len(parts) == 2:
        header_part, payload = _buffer(parts[0]), _buffer(parts[1])
        if len(header_part) != HEADER_BYTES:
            raise FrameStreamError(f"header part is {len(header_part)} bytes, expected {HEADER_BYTES}")
    elif len(parts) == 1:
        whole = _buffer(parts[0])
        if len(whole) < HEADER_BYTES:
            raise FrameStreamError(
                f"message is {len(whole)} bytes, shorter than the {HEADER_BYTES}-byte header"
            )
        header_part, payload = whole[:HEADER_BYTES], whole[HEADER_BYTES:]
    else:
        raise FrameStreamError(f"expected 2 message parts (header, pixels), got {len(parts)}")
    pixels_per_line, lines, channels, timestamp, frame_number = struct.unpack(HEADER_FORMAT, header_part)
    header = ScanImageFrameHeader(
        pixels_per_line=_whole(pixels_per_line, "pixelsPerLine", 1),
        lines_per_frame=_whole(lines, "linesPerFrame", 1),
        num_channels=_whole(channels, "numChannels", 1),
        timestamp=float(timestamp),
        frame_number=_whole(frame_number, "frameNumber", 0, 2**53),
    )
    if not math.isfinite(header.timestamp):
        raise FrameStreamError(f"header timestamp {timestamp!r} is not a finite number")
    if len(payload) != header.payload_bytes:
        raise FrameStreamError(
            f"payload is {len(payload)} bytes, but {header.num_channels} channel(s) of "
            f"{header.lines_per_frame}x{header.pixels_per_line} int16 need {header.payload_bytes}"
        )
    pixels = np.frombuffer(payload, dtype=PIXEL_DTYPE).reshape(
        header.num_channels, header.lines_per_frame, header.pixels_per_line
    )
    return header, pixels
