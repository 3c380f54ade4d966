"""One frame out to every receiver: `FramePublisher`, the fan-out every frame source uses.

Each frame is one `TOPIC_FRAME` message (`online/wire.py`) on a lossless path (to the online module and
disk; see `lossless.py` for how each path meets a slow receiver), on the display path (`LossyPublisher`,
PUB, binds: latest-wins, never blocks), or both.

Imports: the wire format and the frame transport from `online/` (the one place where frame sources reach
outside `hardware/`), nothing of `rig`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from hardware.frames.lossless import DiscardableLosslessSender, WaitingLosslessPath
from online.transport import LinkSecurity, LossyPublisher

DEFAULT_SEND_TIMEOUT_S = 0.5
"""A blocked lossless send is retried after this long, so a stop request is seen within it."""


class LosslessPath(Protocol):
    """What the publisher needs of a lossless path (`WaitingLosslessPath`, `QueuedLosslessPath`)."""

    endpoint: str

    def deliver(self, pixels: np.ndarray, fields: dict[str, Any]) -> bool: ...

    def report(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class FramePublisher:
    """Frames out on a lossless path, a lossy display path, or both. Use from one thread only.

    `stop` (shared with whoever ends the source) is the event a waiting lossless path and a source's loop
    watch.
    """

    def __init__(self, *, lossless: LosslessPath | None = None, display: LossyPublisher | None = None,
                 stop: threading.Event | None = None) -> None:
        if lossless is None and display is None:
            raise ValueError("a FramePublisher needs a lossless path, a display path or both")
        self.lossless = lossless
        self.display = display
        self.stop = stop or threading.Event()
        self.display_sent = 0

    @classmethod
    def open(cls, lossless_endpoint: str | None = None, display_endpoint: str | None = None, *,
             source: str | None = None, stop: threading.Event | None = None,
             send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S, allow_remote: bool = False,
             security: LinkSecurity | None = None) -> FramePublisher:
        """Sockets for the usual roles of a source that may wait: the lossless PUSH connects (a
        `WaitingLosslessPath`), the display PUB binds."""
        stop = stop or threading.Event()
        lossless = display = None
        try:
            if lossless_endpoint is not None:
                lossless = DiscardableLosslessSender(lossless_endpoint, timeout_s=send_timeout_s,
                                                     source=source, allow_remote=allow_remote,
                                                     security=security)
            if display_endpoint is not None:
                display = LossyPublisher(display_endpoint, source=source, allow_remote=allow_remote,
                                         security=security)
        except BaseException:
            for sock in (lossless, display):
                if sock is not None:
                    sock.close()
            raise
        path = WaitingLosslessPath(lossless, stop) if lossless is not None else None
        return cls(lossless=path, display=display, stop=stop)

    def publish(self, pixels: np.ndarray, *, frame_index: int, timestamp_s: float,
                trigger_timestamp_s: float | None, trial: int, channel: int = 0, plane: int = 0) -> bool:
        """Send one 2-D frame; False if the lossless path could not take it (it counts it).
        Do not modify `pixels` afterwards: it leaves zero-copy."""
        fields = {"frame_index": frame_index, "timestamp_s": timestamp_s,
                  "trigger_timestamp_s": trigger_timestamp_s, "trial": trial, "channel": channel,
                  "plane": plane}
        delivered = True
        if self.lossless is not None:
            delivered = self.lossless.deliver(pixels, fields)
        if self.display is not None:
            self.display.send_frame(pixels, **fields)
            self.display_sent += 1
        return delivered

    def report(self) -> dict[str, Any]:
        """The lossless path's counters, then the display's, and both endpoints (plain JSON)."""
        report = self.lossless.report() if self.lossless is not None else {}
        report["display_sent"] = self.display_sent
        report["lossless_endpoint"] = self.lossless.endpoint if self.lossless is not None else None
        report["display_endpoint"] = self.display.endpoint if self.display is not None else None
        return report

    def close(self) -> None:
        """Close the lossless path (it flushes or discards what it still holds), then the display socket."""
        if self.lossless is not None:
            self.lossless.close()
        if self.display is not None:
            self.display.close()

    def __enter__(self) -> FramePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
