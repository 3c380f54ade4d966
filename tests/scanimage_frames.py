"""ScanImage frame-stream messages for tests: the encoder that stands in for ScanImage's sender.

The rig only receives this format (`hardware.scanimage.stream` decodes it); tests build messages here.
"""

from __future__ import annotations

import struct

import numpy as np

from hardware.scanimage.stream import HEADER_FORMAT, PIXEL_DTYPE, FrameStreamError


def encode_scanimage_frame(pixels: np.ndarray, timestamp: float, frame_number: int) -> list[bytes]:
    """The two parts ScanImage sends for `pixels` shaped (channels, lines, pixels) or (lines, pixels)."""
    array = np.asarray(pixels)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        shape = np.asarray(pixels).shape
        raise FrameStreamError(f"pixels must be (channels, lines, pixels), got shape {shape}")
    if array.dtype != PIXEL_DTYPE:
        if not np.can_cast(array.dtype, np.int16, casting="safe"):
            raise FrameStreamError(f"pixels of dtype {array.dtype} do not fit int16 without loss")
        array = array.astype(PIXEL_DTYPE)
    channels, lines, per_line = array.shape
    header = struct.pack(HEADER_FORMAT, per_line, lines, channels, float(timestamp), float(frame_number))
    return [header, np.ascontiguousarray(array).tobytes()]
