"""The monitor's ZeroMQ subscriptions, drained without blocking from the display timer.

Three lossy SUB sockets (the publishers never wait for the monitor): the rig's events, the display frames
and the online module's results. `poll(model)` takes what is waiting, bounded per call, and hands it to
the model: every trial and state event (they are few, and a trial dropped anyway is read back from
trials.jsonl), only the newest frame, and traces, decoder results, ROI snapshots and health reports up to
`max_messages` (traces are appended to the trace buffer, so each one counts).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq

from online.transport import LinkSecurity, LossySubscriber, TransportError
from online.wire import (
    TOPIC_DECODER,
    TOPIC_FRAME,
    TOPIC_HEALTH,
    TOPIC_ROIS,
    TOPIC_STATE,
    TOPIC_TRACES,
    TOPIC_TRIAL,
)
from rig.control import link_security
from rig.errors import UserError
from rig.monitor.model import MonitorModel
from rig.settings import NetworkSettings

log = logging.getLogger(__name__)

EVENTS_HWM = 1000  # trial and state events: small and rare, keep them all unless the monitor stalls
FRAMES_HWM = 2  # 0.5 MB frames: latest wins
RESULTS_HWM = 300  # ~10 s of traces at 30 Hz
MAX_EVENTS_PER_POLL = 200
MAX_RESULTS_PER_POLL = 400


@dataclass
class PollCounts:
    events: int = 0
    frames: int = 0
    results: int = 0

    @property
    def total(self) -> int:
        return self.events + self.frames + self.results


class Feeds:
    """Subscriptions to the rig's events, the display frames and the online results (any may be absent:
    ZeroMQ connects before the publisher binds and reconnects after it restarts). Off loopback they are
    CURVE clients with `security`, which the monitor's control requests use too."""

    def __init__(
        self,
        events_endpoint: str,
        frames_endpoint: str,
        results_endpoint: str,
        context: zmq.Context | None = None,
        security: LinkSecurity | None = None,
    ) -> None:
        self.security = security
        self._context = context or zmq.Context()
        self._owns_context = context is None
        self.events = LossySubscriber(
            events_endpoint, topics=(TOPIC_TRIAL, TOPIC_STATE), hwm=EVENTS_HWM, context=self._context,
            security=security,
        )
        self.frames = LossySubscriber(
            frames_endpoint, topics=(TOPIC_FRAME,), hwm=FRAMES_HWM, context=self._context, security=security
        )
        self.results = LossySubscriber(
            results_endpoint,
            topics=(TOPIC_TRACES, TOPIC_ROIS, TOPIC_DECODER, TOPIC_HEALTH),
            hwm=RESULTS_HWM,
            context=self._context,
            security=security,
        )

    @classmethod
    def from_settings(cls, network: NetworkSettings) -> Feeds:
        security = link_security(network)
        try:  # an unknown server key: one sentence, not a traceback
            return cls(network.events_pub, network.frames_display, network.online_results, security=security)
        except TransportError as exc:
            raise UserError(f"monitor: {exc}") from None

    def poll(self, model: MonitorModel, now: float | None = None) -> PollCounts:
        """Move what is waiting into `model`, never waiting for more; bounded per call."""
        now = time.monotonic() if now is None else now
        counts = PollCounts()
        for _ in range(MAX_EVENTS_PER_POLL):
            message = self.events.recv(0)
            if message is None:
                break
            model.apply(message, now)
            counts.events += 1
        newest_frame = self.frames.latest(0).get(TOPIC_FRAME)
        if newest_frame is not None:
            model.apply(newest_frame, now)
            counts.frames = 1
        newest_rois = None
        for _ in range(MAX_RESULTS_PER_POLL):
            message = self.results.recv(0)
            if message is None:
                break
            if message.topic == TOPIC_ROIS:
                newest_rois = message  # large and re-sent: only the newest is worth decoding
            else:
                model.apply(message, now)
            counts.results += 1
        if newest_rois is not None:
            model.apply(newest_rois, now)
        return counts

    def report(self) -> dict[str, dict[str, Any]]:
        """Receiver statistics (received, gaps, latency) per feed."""
        return {
            "events": self.events.stats.report(),
            "frames": self.frames.stats.report(),
            "results": self.results.stats.report(),
        }

    def close(self) -> None:
        for endpoint in (self.events, self.frames, self.results):
            try:
                endpoint.close()
            except TransportError:  # pragma: no cover - closing never matters more than quitting
                log.debug("closing %r failed", endpoint)
        if self._owns_context:
            self._context.term()
