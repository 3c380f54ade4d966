"""The ScanImage ZeroMQ frame-stream format: exact byte layout, round trips and clear errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zmq

from hardware.scanimage.stream import (
    HEADER_BYTES,
    FrameStreamError,
    ScanImageFrameHeader,
    decode_scanimage_frame,
)
from tests.scanimage_frames import encode_scanimage_frame


def test_byte_layout_is_five_float64_then_int16_x_fastest() -> None:
    pixels = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 10  # (channels, lines, pixels)
    header, payload = encode_scanimage_frame(pixels, timestamp=12.5, frame_number=42)
    assert len(header) == HEADER_BYTES == 40
    assert struct.unpack("<5d", header) == (4.0, 3.0, 2.0, 12.5, 42.0)
    values = struct.unpack("<24h", payload)
    assert values[:5] == (-10, -9, -8, -7, -6)  # x fastest, then the next line
    assert values[12] == pixels[1, 0, 0]  # channel 2 follows channel 1


@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(channels: int) -> None:
    rng = np.random.default_rng(channels)
    pixels = rng.integers(-32768, 32767, size=(channels, 16, 24), dtype=np.int16)
    parts = encode_scanimage_frame(pixels, 0.0333, 7)
    header, decoded = decode_scanimage_frame(parts)
    assert header == ScanImageFrameHeader(24, 16, channels, 0.0333, 7)
    assert header.payload_bytes == pixels.nbytes
    assert decoded.shape == (channels, 16, 24) and decoded.dtype == np.int16
    np.testing.assert_array_equal(decoded, pixels)
    single_header, single = decode_scanimage_frame([b"".join(parts)])
    assert single_header == header
    np.testing.assert_array_equal(single, pixels)


def test_two_dimensional_input_is_one_channel() -> None:
    header, decoded = decode_scanimage_frame(encode_scanimage_frame(np.ones((3, 5), np.uint8), 1.0, 0))
    assert header.num_channels == 1 and decoded.shape == (1, 3, 5)


def test_over_zmq_without_copies() -> None:
    context = zmq.Context.instance()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    try:
        pull.bind("inproc://scanimage-stream-test")
        push.connect("inproc://scanimage-stream-test")
        pixels = np.arange(512 * 512, dtype=np.int16).reshape(1, 512, 512)
        push.send_multipart(encode_scanimage_frame(pixels, 3.25, 99), copy=False)
        assert pull.poll(2000)
        frames = pull.recv_multipart(copy=False)
        header, decoded = decode_scanimage_frame(frames)
        assert header.frame_number == 99 and header.timestamp == 3.25
        np.testing.assert_array_equal(decoded, pixels)
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def _header(*fields: float) -> bytes:
    return struct.pack("<5d", *fields)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"\x00" * 32, b""], "header part is 32 bytes, expected 40"),
        (
            [_header(4, 3, 1, 0, 1), b"\x00" * 10],
            "payload is 10 bytes, but 1 channel(s) of 3x4 int16 need 24",
        ),
        ([_header(4, 3, 2, 0, 1), b"\x00" * 24], "need 48"),
        ([_header(4.5, 3, 1, 0, 1), b"\x00" * 24], "pixelsPerLine = 4.5 is not a whole number"),
        ([_header(4, 0, 1, 0, 1), b""], "linesPerFrame = 0 is out of range"),
        ([_header(4, 3, float("nan"), 0, 1), b""], "numChannels = nan is not a whole number"),
        ([_header(4, 3, 1, float("inf"), 1), b"\x00" * 24], "timestamp inf is not a finite number"),
        ([_header(4, 3, 1, 0, -1), b"\x00" * 24], "frameNumber = -1 is out of range"),
        ([b"abc"], "message is 3 bytes, shorter than the 40-byte header"),
        ([b"t", _header(1, 1, 1, 0, 0), b"\x00\x00"], "expected 2 message parts"),
        ([], "expected 2 message parts"),
        ([object(), b""], "is not a byte buffer"),
    ],
)
def test_malformed_messages_raise_clear_errors(parts: list, message: str) -> None:
    with pytest.raises(FrameStreamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_scanimage_frame(parts)


def test_encode_refuses_lossy_or_misshaped_pixels() -> None:
    with pytest.raises(FrameStreamError, match="do not fit int16"):
        encode_scanimage_frame(np.zeros((1, 2, 2), np.float32), 0.0, 0)
    with pytest.raises(FrameStreamError, match="must be"):
        encode_scanimage_frame(np.zeros(4, np.int16), 0.0, 0)
