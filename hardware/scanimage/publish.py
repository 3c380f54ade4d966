"""Publish ScanImage frames in the project's wire format: from a followed folder, or from ScanImage's stream.

Two sources, one output (`FramePublisher`), each frame as one `TOPIC_FRAME` message (`online/wire.py`):

- `publish_folder(follower, publisher)`: every page a `FolderFollower` yields. Header fields:
  `frame_index` = time point within the acquisition (from 0), `timestamp_s` = frameTimestamps_sec,
  `trigger_timestamp_s` = acqTriggerTimestamps_sec (None when ScanImage wrote -1), `trial` = the file's
  counter (`stem_<logFileCounter>_<chunk>.tif`, i.e. the loop-mode acquisition = the Bpod trial; then
  acquisitionNumbers; then the 1-based order of the file), `plane` = z index from 0, `channel` = ScanImage
  channel number - 1 (channel 1 -> 0). ScanImage 3.x pages carry no timestamp: `timestamp_s` is then -1,
  ScanImage's own "none" marker.
- `StreamAdapter`: SUBscribes to the ScanImage Premium / ScanImageTools frame stream (40-byte header of five
  float64 and int16 pixels, decoded by `hardware/scanimage/stream.py`) and republishes every channel of every
  frame. The stream carries neither trial nor trigger: `trigger_timestamp_s` is None, `trial` counts
  acquisitions as the adapter sees them (it starts at 1 and goes up whenever frameNumber does not increase,
  i.e. a new acquisition restarted the count). With `planes` > 1 (a fast-z volume: ScanImage streams each
  plane as its own frame, planes in turn) the k-th frame of an acquisition (frameNumber minus the first seen)
  is plane k % planes of time point `frame_index` = k // planes; with one plane `frame_index` = k. Jumps in
  frameNumber (ScanImage's PUB drops frames for a slow subscriber) are counted
  as `frame_gaps`. Malformed messages are counted, logged (at most once per second) and skipped.

Back-pressure: `FramePublisher.open` (`hardware/frames/publisher.py`) gives a lossless path that waits
while the receiver is behind (`WaitingLosslessPath`, `hardware/frames/lossless.py`): both sources can
afford to wait, pages stay on disk and the frame stream's own PUB drops what a waiting adapter does not
take (counted as `frame_gaps`). The display path never blocks.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from hardware.frames.publisher import FramePublisher
from hardware.scanimage.follower import FolderFollower, FollowedPage
from hardware.scanimage.stream import FrameStreamError, decode_scanimage_frame
from online.transport import RateLimitedLog, TransportError

logger = logging.getLogger(__name__)

STREAM_RCVHWM = 1000
"""Messages the adapter's SUB socket queues from ScanImage (frames, ~0.5 MB each at 512x512)."""
_FILE_COUNTER = re.compile(r"_(\d+)_(\d+)\.tiff?$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------
# folder


def page_trial(page: FollowedPage) -> int:
    """The trial of a followed page: the file counter in `stem_<counter>_<chunk>.tif` (logFileCounter, one
    per loop-mode acquisition), else acquisitionNumbers, else the 1-based order of the file."""
    match = _FILE_COUNTER.search(page.file.name)
    if match is not None:
        return int(match.group(1))
    if page.metadata.acquisition_number is not None:
        return int(page.metadata.acquisition_number)
    return page.file_index + 1


def page_fields(page: FollowedPage) -> dict[str, Any]:
    """The wire header fields of a followed page (see the module docstring)."""
    timestamp = page.timestamp_s
    return {
        "frame_index": page.frame,
        "timestamp_s": -1.0 if timestamp is None or not math.isfinite(timestamp) else float(timestamp),
        "trigger_timestamp_s": page.metadata.acq_trigger_timestamp_s,
        "trial": page_trial(page),
        "channel": max(page.channel - 1, 0),
        "plane": page.plane,
    }


def publish_page(publisher: FramePublisher, page: FollowedPage) -> bool:
    """One followed ScanImage page (see `page_fields`)."""
    return publisher.publish(page.pixels, **page_fields(page))


def publish_folder(follower: FolderFollower | Iterable[FollowedPage], publisher: FramePublisher,
                   on_page: Callable[[FollowedPage], None] | None = None) -> int:
    """Publish every page the follower yields, in order, until it ends (idle timeout or `stop()`).
    Returns the number of pages handled."""
    pages = 0
    for page in follower:
        publish_page(publisher, page)
        pages += 1
        if on_page is not None:
            on_page(page)
    return pages


# --------------------------------------------------------------------------------------------------------
# ScanImage frame stream


@dataclass
class StreamStats:
    """What the adapter saw: messages received, frames (one per channel) republished, malformed messages
    skipped, frameNumber jumps (frames ScanImage's PUB dropped), acquisitions (frameNumber restarts)."""

    messages: int = 0
    frames: int = 0
    malformed: int = 0
    frame_gaps: int = 0
    acquisitions: int = 0
    last_frame_number: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamAdapter:
    """ScanImage frame stream (SUB, connects to ScanImage's PUB) -> our wire format (a `FramePublisher`).

    `handle(parts)` is the per-message core (no sockets); `run(stop)` owns the SUB socket and loops until
    `stop` is set or, with `idle_timeout_s`, until that long passed without a message (after the first).
    """

    def __init__(self, endpoint: str, publisher: FramePublisher, *, idle_timeout_s: float | None = None,
                 poll_s: float = 0.1, rcvhwm: int = STREAM_RCVHWM,
                 context: zmq.Context | None = None, planes: int = 1) -> None:
        if planes < 1:
            raise ValueError(f"planes must be at least 1, got {planes}")
        self.planes = planes
        self.endpoint = endpoint
        self.publisher = publisher
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = poll_s
        self.rcvhwm = rcvhwm
        self.context = context
        self.stats = StreamStats()
        self.stopped_reason: str | None = None
        self._first_frame_number = 0
        self._malformed_log = RateLimitedLog(logger)

    def handle(self, parts: list[Any]) -> int:
        """Decode one stream message and publish its channels; returns frames published (0 if malformed)."""
        stats = self.stats
        stats.messages += 1
        try:
            header, pixels = decode_scanimage_frame(parts)
        except FrameStreamError as exc:
            stats.malformed += 1
            self._malformed_log(logging.WARNING, "frame stream %s: skipped a malformed message (%d so far): "
                                "%s", self.endpoint, stats.malformed, exc)
            return 0
        number = header.frame_number
        last = stats.last_frame_number
        if last is None or number <= last:
            stats.acquisitions += 1
            self._first_frame_number = number
            if last is not None:
                logger.info("frame stream %s: frameNumber %d after %d: acquisition %d starts", self.endpoint,
                            number, last, stats.acquisitions)
        elif number > last + 1:
            stats.frame_gaps += number - last - 1
        stats.last_frame_number = number
        index, plane = divmod(number - self._first_frame_number, self.planes)
        for channel in range(header.num_channels):
            self.publisher.publish(pixels[channel], frame_index=index, timestamp_s=header.timestamp,
                                   trigger_timestamp_s=None, trial=stats.acquisitions, channel=channel,
                                   plane=plane)
            stats.frames += 1
        return header.num_channels

    def run(self, stop: threading.Event | None = None) -> StreamStats:
        """Subscribe and republish until stopped; returns the statistics."""
        stop = stop or self.publisher.stop
        owns_context = self.context is None
        context = zmq.Context() if self.context is None else self.context
        sub = context.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            try:
                sub.connect(self.endpoint)
            except zmq.ZMQError as exc:
                raise TransportError(f"cannot connect to the frame stream {self.endpoint}: {exc}") from exc
            logger.info("frame stream: subscribed to %s", self.endpoint)
            last_message = None
            poll_ms = max(1, round(self.poll_s * 1000))
            while not stop.is_set():
                if not sub.poll(poll_ms, zmq.POLLIN):
                    idle = self.idle_timeout_s
                    quiet_s = None if last_message is None else time.monotonic() - last_message
                    if idle is not None and quiet_s is not None and quiet_s >= idle:
                        self.stopped_reason = "idle timeout"
                        break
                    continue
                while not stop.is_set():
                    try:
                        parts = sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    last_message = time.monotonic()
                    self.handle(parts)
            else:
                self.stopped_reason = "stopped"
        finally:
            sub.close(linger=0)
            if owns_context:
                context.term()
        logger.info("frame stream %s: %s", self.endpoint, self.stats.to_dict())
        return self.stats
