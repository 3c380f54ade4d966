"""The lossless frame paths: every frame reaches the receiver (the online module, disk), or is counted.

Two ways to meet a receiver that is behind, one per kind of source:

- `WaitingLosslessPath` (ScanImage adapters): a send nobody takes within the sender's timeout is retried,
  with a warning at most once per second, until it goes through: the source waits, nothing is dropped. Both
  ScanImage sources can afford to wait: pages stay on disk, and the frame stream's own PUB drops what a
  waiting adapter does not take (the adapter counts those as `frame_gaps`). Once `stop` is set, each
  remaining frame gets one more attempt; after the first one that fails, the rest are counted as
  `undelivered` without waiting (so stopping never hangs).
- `QueuedLosslessPath` (the simulated microscope, which renders on the Bpod clock and must never wait on a
  socket): frames wait in a bounded queue that a sender thread pushes; a frame that does not fit is counted
  as undeliverable.

Both send through a `LosslessSender` (PUSH, connects: the receiver binds), framed by `online/wire.py`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from online.transport import LinkSecurity, LosslessSender, RateLimitedLog, SendTimeout, TransportError
from online.wire import Part, Sender, default_source

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_BYTES = 64 << 20


class DiscardableLosslessSender(LosslessSender):
    """A `LosslessSender` that can give up on what it still holds for a receiver that never comes."""

    def discard_pending(self) -> None:
        """Close without the linger wait for messages a stalled or absent receiver will never take."""
        self._socket.setsockopt(zmq.LINGER, 0)


class WaitingLosslessPath:
    """Sends each frame before it returns, waiting (and retrying) while the receiver is behind.

    `stop` (shared with whoever ends the source) turns the waiting into one last attempt.
    """

    def __init__(self, sender: LosslessSender, stop: threading.Event) -> None:
        self.sender = sender
        self.endpoint = sender.endpoint
        self.stop = stop
        self.sent = 0
        self.send_timeouts = 0
        self.undelivered = 0
        self.waited_s = 0.0
        self._abandoned = False
        self._warn = RateLimitedLog(logger)

    def deliver(self, pixels: np.ndarray, fields: dict[str, Any]) -> bool:
        """Send one frame; False if it could not be sent (stopping while nobody takes frames)."""
        if self._abandoned:
            self.undelivered += 1
            return False
        blocked_since: float | None = None
        while True:
            stopping = self.stop.is_set()
            try:
                self.sender.send_frame(pixels, **fields)
                break
            except SendTimeout:
                self.send_timeouts += 1
                if blocked_since is None:
                    blocked_since = time.monotonic() - self.sender.timeout_s
                if stopping:
                    self._abandoned = True
                    self.undelivered += 1
                    logger.warning("frames: stopping while nobody takes frames on %s; this and any later "
                                   "frame are counted as undelivered", self.endpoint)
                    return False
                self._warn(logging.WARNING, "frames: no receiver has taken a frame on %s for %.1f s; waiting "
                           "(the source is held back, nothing is dropped)", self.endpoint,
                           time.monotonic() - blocked_since)
        if blocked_since is not None:
            self.waited_s += time.monotonic() - blocked_since
        self.sent += 1
        return True

    def report(self) -> dict[str, Any]:
        """`undelivered`: frames never taken (stopped while the receiver was gone or stalled);
        `send_timeouts`: retries of a blocked send."""
        return {"lossless_sent": self.sent, "send_timeouts": self.send_timeouts,
                "undelivered": self.undelivered, "waited_s": round(self.waited_s, 3)}

    def close(self) -> None:
        """Close the socket. Frames still queued for a receiver are flushed for up to the socket's linger
        (1 s), unless the path was abandoned at stop (nobody takes frames): then they are discarded."""
        if self._abandoned and isinstance(self.sender, DiscardableLosslessSender):
            self.sender.discard_pending()
        self.sender.close()


class QueuedLosslessPath:
    """Frames numbered by the producer, queued (bounded), and pushed by a sender thread.

    `deliver` never blocks. The sender thread owns the socket; a send nobody takes within `send_timeout_s`
    is retried (the queue then fills). A frame that does not fit the queue is undeliverable: counted,
    logged at most once per second, and visible to the receiver as a sequence gap.
    """

    def __init__(self, endpoint: str, *, source: str | None = None,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, send_timeout_s: float = 0.25,
                 flush_timeout_s: float = 2.0, allow_remote: bool = False,
                 security: LinkSecurity | None = None, report_interval_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.max_pending_bytes = max_pending_bytes
        self.flush_timeout_s = flush_timeout_s
        self.report_interval_s = report_interval_s
        self._sender = Sender(source or default_source())
        self._socket = DiscardableLosslessSender(endpoint, timeout_s=send_timeout_s,
                                                 source=self._sender.source, allow_remote=allow_remote,
                                                 security=security)
        self._queue: deque[tuple[list[Part], int]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self.offered = 0
        self.sent = 0
        self.undeliverable = 0
        self.send_timeouts = 0
        self.pending_bytes = 0
        self.peak_pending_bytes = 0
        self.stalled = False
        self.error: str | None = None
        self._window_drops = 0
        self._window_start = time.monotonic()
        self._last_report = -math.inf

    def start(self) -> QueuedLosslessPath:
        self._thread = threading.Thread(target=self._run, name="sim-frames-lossless", daemon=True)
        self._thread.start()
        return self

    def deliver(self, pixels: np.ndarray, fields: dict[str, Any]) -> bool:
        """Number and queue one frame; False (counted as undeliverable) when the queue is full."""
        parts = self._sender.frame(pixels, **fields)
        nbytes = int(pixels.nbytes)
        with self._cond:
            self.offered += 1
            if self._closing or self.pending_bytes + nbytes > self.max_pending_bytes or self.error:
                self.undeliverable += 1
                self._window_drops += 1
                self._report_drops()
                return False
            self._queue.append((parts, nbytes))
            self.pending_bytes += nbytes
            self.peak_pending_bytes = max(self.peak_pending_bytes, self.pending_bytes)
            self._cond.notify()
        return True

    def _report_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_report < self.report_interval_s:
            return
        why = self.error or "no receiver (is the online module running?), or one slower than the microscope"
        logger.warning("frames %s: %d frame(s) could not be delivered in the last %.1f s (%d in all; queue "
                       "full at %.0f MB): %s", self.endpoint, self._window_drops, now - self._window_start,
                       self.undeliverable, self.max_pending_bytes / 2**20, why)
        self._last_report, self._window_start, self._window_drops = now, now, 0

    def _run(self) -> None:
        socket = self._socket
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(0.2)
                if not self._queue or time.monotonic() > self._deadline:
                    break
                parts, nbytes = self._queue[0]
            try:
                socket.send_parts(parts)
            except SendTimeout:
                self.send_timeouts += 1
                if self._closing:
                    self.stalled = True
                    break  # closing and nobody takes frames: do not wait for the flush deadline
                if not self.stalled:
                    logger.warning("frames %s: nobody takes frames (no receiver, or a stalled one); queueing "
                                   "up to %.0f MB, then counting frames as undeliverable", self.endpoint,
                                   self.max_pending_bytes / 2**20)
                self.stalled = True
                continue
            except TransportError as exc:
                self.error = f"lossless path failed: {exc}"
                logger.error("frames %s: %s; further frames are undeliverable", self.endpoint, exc)
                break
            with self._cond:
                self._queue.popleft()
                self.pending_bytes -= nbytes
                self.sent += 1
            if self.stalled:
                logger.info("frames %s: the receiver takes frames again", self.endpoint)
                self.stalled = False
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self.pending_bytes = 0
            self.undeliverable += left
        if left:
            logger.warning("frames %s: %d queued frame(s) were not delivered before the path closed",
                           self.endpoint, left)

    def close(self) -> None:
        """Give queued frames `flush_timeout_s` to leave, then close the socket."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.flush_timeout_s
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.flush_timeout_s + self._socket.timeout_s + 1.0)
            if self._thread.is_alive():
                logger.error("frames %s: sender thread did not stop", self.endpoint)
                return
        if self.stalled or self.error:
            self._socket.discard_pending()
        self._socket.close()

    def report(self) -> dict[str, Any]:
        # sent = handed to ZeroMQ; if the path was stalled at close, up to the socket's HWM of those were
        # still queued inside ZeroMQ and were discarded with it (stalled_at_close).
        return {"endpoint": self.endpoint, "offered": self.offered, "sent": self.sent,
                "undeliverable": self.undeliverable, "pending": len(self._queue),
                "send_timeouts": self.send_timeouts,
                "peak_pending_mb": round(self.peak_pending_bytes / 2**20, 2),
                "max_pending_mb": round(self.max_pending_bytes / 2**20, 2),
                "stalled": self.stalled, "error": self.error}
