"""The health line: whether the session, the online module and the frames are running, with latencies
and counts, and the online module's restarts."""

from __future__ import annotations

import html
from typing import Any

from pyqtgraph.Qt import QtCore, QtWidgets

from rig.monitor.model import OFFLINE_AFTER_S, MonitorModel, online_watch
from rig.monitor.panels.style import BAD, GOOD, NOT_RUNNING, WARN


def dot(colour: str) -> str:
    return f"<span style='color:{colour}; font-size:14pt'>●</span>"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


class HealthPanel(QtWidgets.QFrame):
    """Session (Bpod) and online-module health: green when recent, red when silent."""

    def __init__(self, model: MonitorModel) -> None:
        super().__init__()
        self.model = model
        self.setStyleSheet("QFrame { background: #101010; } QLabel { color: #dddddd; }")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(8, 2, 8, 2)
        self.session = QtWidgets.QLabel()
        self.online = QtWidgets.QLabel()
        self.display = QtWidgets.QLabel()
        for label, stretch in ((self.session, 3), (self.online, 5), (self.display, 2)):
            label.setTextFormat(QtCore.Qt.TextFormat.RichText)
            layout.addWidget(label, stretch)
        self.status_failed_time: float | None = None  # monotonic time of the last unanswered status request
        self.feed_report: dict[str, dict[str, Any]] = {}
        self.refresh_note = ""
        self._texts: tuple[str, str, str] = ("", "", "")

    def session_state(self, now: float) -> tuple[str, str]:
        """(colour, words) for the session: from the age of the last status answer or event."""
        b = self.model.behaviour
        times = [t for t in (b.status_time, b.event_time) if t is not None]
        age = now - max(times) if times else None
        failed_last = self.status_failed_time is not None and (
            b.status_time is None or self.status_failed_time > b.status_time
        )
        if age is None or (age > OFFLINE_AFTER_S and failed_last):
            return BAD, "no session answering"
        if age > OFFLINE_AFTER_S:
            return BAD, f"silent for {age:.0f} s"
        if b.status.get("stopping"):
            return WARN, "stopping"
        if b.status.get("paused"):
            return WARN, "paused"
        return GOOD, "running"

    def refresh(self, now: float) -> None:
        m = self.model
        colour, words = self.session_state(now)
        b = m.behaviour
        subject = b.status.get("subject")
        session = f"{dot(colour)} <b>Session/Bpod</b> {words}"
        if subject:
            session += f" · {html.escape(str(subject))}"
        if b.state is not None:
            session += f" · {html.escape(b.state[1])}"
        h = m.imaging.health
        if h is not None and m.imaging.online_running(now):
            ok = h.gaps == 0 and h.reference_ready
            online = (
                f"{dot(GOOD if ok else WARN)} <b>Online</b> {h.frame_rate_hz:.1f} Hz · "
                f"dropped {h.gaps} · latency p50/p99 {_ms(h.latency_p50_ms)}/{_ms(h.latency_p99_ms)} ms · "
                f"processing p50/p99 {_ms(h.processing_p50_ms)}/{_ms(h.processing_p99_ms)} ms · "
                f"{h.n_rois} ROIs · closed loop {'on' if h.closed_loop else 'off'}"
            )
            if not h.reference_ready:
                online += " · building reference"
        elif m.imaging.online_running(now):
            online = f"{dot(GOOD)} <b>Online</b> results arriving (no health report yet)"
        else:
            online = f"{dot(BAD)} <b>Online</b> {NOT_RUNNING}"
        online = self._with_restarts(online)
        frames = self.feed_report.get("frames", {})
        shown = frames.get("received", 0) - frames.get("superseded", 0)
        skipped = frames.get("gaps", 0) + frames.get("superseded", 0)
        display = (
            f"<b>Display</b> frames shown {shown} · skipped {skipped} (newest only)"
            if frames
            else "<b>Display</b>"
        )
        if self.refresh_note:
            display += f" · {self.refresh_note}"
        texts = (session, online, display)
        if texts != self._texts:
            self._texts = texts
            for label, text in zip((self.session, self.online, self.display), texts, strict=True):
                label.setText(text)


    def _with_restarts(self, online: str) -> str:
        """The online part of the line, with what the session says of its module's deaths and restarts."""
        watch = online_watch(self.model.behaviour.status)
        if watch is None:
            return online
        if watch.down_since is not None:
            since = html.escape(watch.down_since.split("T", 1)[-1][:8])
            what = "not restarted (online.max_restarts reached)" if watch.gave_up else "restarting"
            online = f"{dot(BAD)} <b>Online</b> down since {since} · {what}"
        if watch.gaps:
            online += (f" · restarted {watch.restarts}× · {watch.frames_lost} frames lost in {watch.gaps} "
                       f"gap{'s' if watch.gaps != 1 else ''}")
        return online
