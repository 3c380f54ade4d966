"""ScanImage files and frames: header parsing, reading, writing, following a folder live, frame stream.

Modules (import what you need; this package imports nothing heavy on its own):
`header` (pure text parsing), `tiff_index` (pure IFD walker for growing files), `reader` (`ScanImageFile`),
`writer` (`ScanImageWriter`), `follower` (`FolderFollower`), `stream` (ZeroMQ frame-stream decoding).
Command line: `python -m hardware.scanimage info FILE` / `follow DIR`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ScanImageFile": "reader",
    "ScanImageError": "reader",
    "NotATiffError": "reader",
    "NotScanImageError": "reader",
    "ScanImageWriter": "writer",
    "FolderFollower": "follower",
    "FollowedPage": "follower",
    "FrameMetadata": "header",
    "parse_static_metadata": "header",
    "parse_frame_description": "header",
    "decode_scanimage_frame": "stream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Lazy exports, so `hardware.scanimage.stream` users do not pay for tifffile or the TIFF library."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
