"""The monitor's main window: panels, controls, the display timer and the control-socket worker.

The window never waits on the session: a 25 Hz QTimer drains the lossy subscriptions without blocking
(feeds.py) and redraws only what changed (panels/); control requests, status polls and reading
trials.jsonl run on a small thread pool and come back as Qt signals. Closing or crashing the window leaves
the session running; a new window catches up from the session's trials.jsonl, then continues live.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from rig.control import send_request
from rig.monitor.feeds import Feeds
from rig.monitor.model import MonitorModel, read_trial_rows
from rig.monitor.panels import (
    BehaviourPanel,
    ControlBar,
    DecodingPanel,
    FramePanel,
    HeaderPanel,
    HealthPanel,
    PsthPanel,
    RegistrationPanel,
    TimelinePanel,
    TracesPanel,
)
from rig.session_figure import save_session_figure
from rig.settings import Settings

log = logging.getLogger(__name__)

REFRESH_HZ = 25.0
STATUS_POLL_S = 2.0
CONTROL_TIMEOUT_S = 2.0
CATCH_UP_RETRY_S = 3.0
WINDOW_SIZE = (1800, 1050)


class _Replies(QtCore.QObject):
    """Signals from worker threads back to the GUI thread (queued connections)."""

    control = QtCore.Signal(str, object, object)  # command, arguments, reply
    status = QtCore.Signal(object)  # reply
    rows = QtCore.Signal(object, object)  # folder, trial rows
    figure = QtCore.Signal(object)  # the summary figure's path, or None


class _Task(QtCore.QRunnable):
    def __init__(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        super().__init__()
        self._work, self._done = work, done

    def run(self) -> None:
        try:
            result = self._work()
        except Exception as exc:  # the session's answer, or why there was none, goes to the status bar
            result = {"ok": False, "error": str(exc)}
        with contextlib.suppress(RuntimeError):  # the window was deleted while the request was out
            self._done(result)


def dark_palette() -> QtGui.QPalette:
    palette = QtGui.QPalette()
    role, colour = QtGui.QPalette.ColorRole, QtGui.QColor
    for r, c in (
        (role.Window, "#1e1e1e"),
        (role.WindowText, "#e0e0e0"),
        (role.Base, "#141414"),
        (role.AlternateBase, "#262626"),
        (role.Text, "#e0e0e0"),
        (role.Button, "#2d2d2d"),
        (role.ButtonText, "#e0e0e0"),
        (role.Highlight, "#2979ff"),
        (role.HighlightedText, "#ffffff"),
        (role.ToolTipBase, "#2d2d2d"),
        (role.ToolTipText, "#e0e0e0"),
    ):
        palette.setColor(r, colour(c))
    return palette


class MonitorWindow(QtWidgets.QMainWindow):
    """The live monitor of one rig (the endpoints of `settings.network`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        confirm_stop: bool = True,
        refresh_hz: float = REFRESH_HZ,
        status_poll_s: float | None = STATUS_POLL_S,
        control_timeout_s: float = CONTROL_TIMEOUT_S,
        start: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.confirm_stop = confirm_stop
        self.status_poll_s = status_poll_s
        self.control_timeout_s = control_timeout_s
        contexts = list(settings.contexts)
        imaging = settings.imaging
        self.model = MonitorModel(
            settings.wiring, frame_rate_hz=imaging.frame_rate_hz / imaging.planes
        )
        self.feeds = Feeds.from_settings(settings.network)
        self.pool = QtCore.QThreadPool()
        self.pool.setMaxThreadCount(3)
        self._replies = _Replies()
        self._replies.control.connect(self._on_control_reply)
        self._replies.status.connect(self._on_status_reply)
        self._replies.rows.connect(self._on_rows)
        self._replies.figure.connect(self._on_figure)
        self._force_sync = False  # a reply came: the next status sets every control
        self._figure_for: Path | None = None  # the session whose summary figure was asked for
        self._status_in_flight = False
        self._last_status_poll = -float("inf")
        self._catch_up_in_flight = False
        self._last_catch_up = -float("inf")
        self._seen_version = -1
        self._report_at = -float("inf")
        self.tick_ms: deque[float] = deque(maxlen=250)
        self._closed = False
        self._failures = 0
        self._planes_shown = -1

        self.setWindowTitle(f"rig monitor · {settings.rig.name}")
        self.setPalette(dark_palette())
        self.setAutoFillBackground(True)
        self.header = HeaderPanel(self.model.behaviour, settings.session)
        self.controls = ControlBar(contexts, closed_loop=settings.online.closed_loop.enabled)
        self.frame = FramePanel(self.model.imaging, (imaging.frame_height, imaging.frame_width))
        self.traces = TracesPanel(self.model.imaging)
        self.registration = RegistrationPanel(self.model.imaging)
        self.psth = PsthPanel(self.model.imaging)
        self.decoding = DecodingPanel(self.model.imaging, contexts)
        criterion = (
            settings.task.context_switch.perf_threshold if settings.task.context_switch.enabled else None
        )
        self.behaviour = BehaviourPanel(self.model.behaviour, contexts, criterion)
        self.timeline = TimelinePanel(self.model.behaviour)
        self.health = HealthPanel(self.model)
        self.panels = (self.header, self.frame, self.traces, self.health)  # every tick
        # the panels that change at trial ends (or drift slowly): one of them per tick, in turn, so that a
        # trial's end is drawn over a few ticks and never makes one tick long (the behaviour panel, one of
        # its plots per turn, gets every other turn)
        b = self.behaviour
        self.slow_panels = (b, self.psth, b, self.timeline, b, self.decoding, b, self.registration)
        self._slow_turn = 0
        self.last_slow: QtWidgets.QWidget | None = None
        central = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(central)
        grid.setContentsMargins(2, 2, 2, 2)
        grid.setSpacing(3)
        grid.addWidget(self.header, 0, 0, 1, 3)
        grid.addWidget(self.controls, 1, 0, 1, 3)
        grid.addWidget(self.frame, 2, 0)
        grid.addWidget(self.traces, 2, 1)
        grid.addWidget(self.behaviour, 2, 2, 2, 1)
        grid.addWidget(self.registration, 3, 0)
        grid.addWidget(self.psth, 3, 1)
        grid.addWidget(self.decoding, 4, 0, 1, 2)
        grid.addWidget(self.timeline, 4, 2)
        grid.addWidget(self.health, 5, 0, 1, 3)
        for column, stretch in enumerate((4, 5, 5)):
            grid.setColumnStretch(column, stretch)
        for row, stretch in ((2, 5), (3, 3), (4, 3)):
            grid.setRowStretch(row, stretch)
        self.setCentralWidget(central)
        self.statusBar().showMessage("connecting…")

        self.controls.switch_requested.connect(lambda name: self.send_command("switch-context", context=name))
        self.controls.pause_requested.connect(lambda: self.send_command("pause"))
        self.controls.resume_requested.connect(lambda: self.send_command("resume"))
        self.controls.stop_requested.connect(self.request_stop)
        self.controls.closed_loop_requested.connect(
            lambda enabled: self.send_command("closed-loop", enabled=enabled)
        )
        self.controls.valve_requested.connect(self.request_valve)
        self.controls.plane_selected.connect(self.select_plane)
        self.controls.traces_mode_selected.connect(self.traces.set_mode)
        self.controls.traces_order_selected.connect(lambda order: self.traces.set_order(order))
        self.frame.roi_clicked.connect(self.select_roi)
        self.traces.trace_clicked.connect(self.select_roi)

        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, round(1000 / refresh_hz)))
        self.timer.timeout.connect(self.tick)
        if start:
            self.timer.start()

    # ------------------------------------------------------------------ the display tick

    def tick(self) -> None:
        """Drain the feeds (non-blocking, bounded) and redraw what changed."""
        started = time.perf_counter()
        now = time.monotonic()
        try:
            self.feeds.poll(self.model, now)
            self._housekeeping(now)
            self.refresh(now, spread=True)
        except Exception:  # a drawing bug must not stop the display loop (logged, not on every tick)
            self._failures += 1
            if self._failures <= 3 or self._failures % 250 == 0:
                log.exception("monitor refresh failed (%d so far)", self._failures)
        self.tick_ms.append((time.perf_counter() - started) * 1000)

    def refresh(self, now: float | None = None, spread: bool = False) -> None:
        """Redraw what changed: every panel, or (`spread`, the display tick) the fast ones and one of the
        slow ones in turn."""
        now = time.monotonic() if now is None else now
        for panel in self.panels:
            panel.refresh(now)
        if spread:
            self.last_slow = self.slow_panels[self._slow_turn % len(self.slow_panels)]
            self._slow_turn += 1
            getattr(self.last_slow, "refresh_step", self.last_slow.refresh)(now)
        else:
            for panel in dict.fromkeys(self.slow_panels):
                panel.refresh(now)
        imaging = self.model.imaging
        if imaging.plane_version != self._planes_shown:
            self._planes_shown = imaging.plane_version
            self.controls.set_planes(sorted(imaging.planes), imaging.plane)
        self.controls.sync(self.model.behaviour.status)  # the session decides (closed loop, context, ...)

    def _housekeeping(self, now: float) -> None:
        if (
            self.status_poll_s is not None
            and not self._status_in_flight
            and now - self._last_status_poll >= self.status_poll_s
        ):
            self.poll_status()
        b = self.model.behaviour
        if b.session_folder is not None and not self._catch_up_in_flight:
            if b.caught_up_from != b.session_folder:
                self.catch_up(b.session_folder)
            elif (
                b.version != self._seen_version
                and b.last_row is not None
                and b.missing_before(b.last_row.trial)
                and now - self._last_catch_up > CATCH_UP_RETRY_S
            ):
                self.catch_up(b.session_folder)  # a trial event was dropped: its line is on disk
        self._seen_version = b.version
        if b.ended_at is not None and b.session_folder is not None and self._figure_for != b.session_folder:
            self.save_figure(b.session_folder)
        if now - self._report_at >= 1.0:
            self._report_at = now
            self.health.feed_report = self.feeds.report()
            ticks = np.asarray(self.tick_ms) if self.tick_ms else None
            if ticks is not None:
                self.health.refresh_note = f"refresh p50 {np.percentile(ticks, 50):.1f} ms"

    # ------------------------------------------------------------------ workers

    def _submit(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        if not self._closed:
            self.pool.start(_Task(work, done))

    def send_command(self, command: str, **args: Any) -> None:
        """Send one control request from a worker thread, saying it comes from the monitor (the session
        logs it so); its reply goes to the status bar."""
        endpoint, timeout = self.settings.network.control, self.control_timeout_s
        self.statusBar().showMessage(f"{command}: sending…")
        self._submit(
            lambda: send_request(endpoint, command, timeout_s=timeout, security=self.feeds.security,
                                 source="monitor", **args),
            lambda reply: self._replies.control.emit(command, args, reply),
        )

    def request_valve(self, side: str, action: str) -> None:
        """A free drop at once; a flush (the valve open for seconds) only once confirmed."""
        if action == "flush" and self.confirm_stop:
            flush_s = self.settings.session.flush_s
            answer = QtWidgets.QMessageBox.question(
                self,
                "Flush the valve?",
                f"Open the {side} valve for {flush_s:g} s? Water runs into the lick port for that long.",
                QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
                QtWidgets.QMessageBox.StandardButton.No,
            )
            if answer != QtWidgets.QMessageBox.StandardButton.Yes:
                self.statusBar().showMessage("flush cancelled")
                return
        self.send_command("valve", side=side, action=action)

    def save_figure(self, folder: Path) -> None:
        """Save the session's summary figure into its folder, in a worker (the rig draws it if we cannot)."""
        self._figure_for = folder
        wiring = self.model.behaviour.wiring
        self._submit(lambda: save_session_figure(folder, wiring), self._replies.figure.emit)

    def _on_figure(self, path: Any) -> None:
        if isinstance(path, Path):
            self.statusBar().showMessage(f"session ended: summary figure saved to {path}")

    def request_stop(self) -> None:
        if self.confirm_stop:
            answer = QtWidgets.QMessageBox.question(
                self,
                "Stop the session?",
                "Stop the session after the current trial? The data written so far stays on disk.",
                QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
                QtWidgets.QMessageBox.StandardButton.No,
            )
            if answer != QtWidgets.QMessageBox.StandardButton.Yes:
                self.statusBar().showMessage("stop cancelled")
                return
        self.send_command("stop")

    def poll_status(self) -> None:
        self._status_in_flight = True
        self._last_status_poll = time.monotonic()
        endpoint, timeout = self.settings.network.control, min(self.control_timeout_s, 1.0)
        security = self.feeds.security
        self._submit(lambda: send_request(endpoint, "status", timeout_s=timeout, security=security),
                     self._replies.status.emit)

    def catch_up(self, folder: Path) -> None:
        """Read the session's trials.jsonl in a worker and add the trials not shown yet."""
        self._catch_up_in_flight = True
        self._last_catch_up = time.monotonic()
        wiring = self.model.behaviour.wiring
        self._submit(
            lambda: read_trial_rows(folder, wiring), lambda rows: self._replies.rows.emit(folder, rows)
        )

    def _on_control_reply(self, command: str, args: dict[str, Any], reply: dict[str, Any]) -> None:
        if reply.get("ok"):
            text = f"{command}: {reply.get('message', 'ok')}"
            self._last_status_poll = -float("inf")  # show the new state soon
            self._force_sync = True
        else:
            text = f"{command} failed: {reply.get('error', 'no reason given')}"
            if command == "closed-loop":
                self.controls.set_closed_loop(not args.get("enabled", False))
        self.statusBar().showMessage(text)
        log.info("%s", text)

    def _on_status_reply(self, reply: dict[str, Any]) -> None:
        self._status_in_flight = False
        if reply.get("ok"):
            status = {k: v for k, v in reply.items() if k != "ok"}
            self.model.behaviour.set_status(status)
            self.controls.sync(status, force=self._force_sync)
            self._force_sync = False
            if self.statusBar().currentMessage() == "connecting…":
                self.statusBar().showMessage(f"connected to {self.settings.network.control}")
        else:
            self.health.status_failed_time = time.monotonic()

    def _on_rows(self, folder: Path, rows: Any) -> None:
        self._catch_up_in_flight = False
        b = self.model.behaviour
        if b.session_folder is not None and Path(folder) != b.session_folder:
            return  # read from a session that has been replaced since
        b.caught_up_from = Path(folder)
        if not isinstance(rows, list):
            log.warning("could not read the trials of %s: %s", folder, rows.get("error"))
        else:
            added = b.add_rows(rows)
            for row in rows:  # traces waiting for a trial whose live event was dropped
                self.model.imaging.trial_done(row)
            if added:
                log.info("caught up %d trial(s) from %s", added, folder)

    # ------------------------------------------------------------------ selection, screenshots, closing

    def select_roi(self, roi: int) -> None:
        self.model.imaging.select(roi)
        self.refresh()

    def select_plane(self, plane: int) -> None:
        self.model.imaging.select_plane(plane)
        self.refresh()

    def save_screenshot(self, path: Path) -> bool:
        self.tick()
        return self.grab().save(str(path))

    def shutdown(self) -> None:
        """Stop the timer, let in-flight requests finish (at most the control timeout), close sockets."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        self.pool.clear()
        self.pool.waitForDone(int(self.control_timeout_s * 1000) + 500)
        self.feeds.close()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)


_QT_NOISE = ("propagateSizeHints",)  # the offscreen platform says this on every window update


def _qt_message(mode: QtCore.QtMsgType, _context: QtCore.QMessageLogContext, message: str | None) -> None:
    """Qt's own messages, through logging (minus the offscreen platform's noise)."""
    text = message or ""
    if any(noise in text for noise in _QT_NOISE):
        return
    level = logging.DEBUG if mode == QtCore.QtMsgType.QtDebugMsg else logging.WARNING
    logging.getLogger("qt").log(level, "%s", text)


def application() -> QtWidgets.QApplication:
    """The process's QApplication (created once, Fusion style, Qt messages through logging)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        QtCore.qInstallMessageHandler(_qt_message)
        app = QtWidgets.QApplication(sys.argv[:1])
        app.setStyle("Fusion")
    pg.setConfigOptions(antialias=False)
    return app  # type: ignore[return-value]


def run_monitor(
    settings: Settings,
    *,
    screenshot: Path | None = None,
    seconds: float | None = None,
    before_quit: Callable[[], None] | None = None,
    setup: Callable[[MonitorWindow], None] | None = None,
) -> int:
    """Open the monitor until it is closed (or for `seconds`, then save `screenshot` if given)."""
    app = application()
    window = MonitorWindow(settings)
    window.resize(*WINDOW_SIZE)
    window.show()
    if setup is not None:
        setup(window)
    result = {"status": 0}

    def finish() -> None:
        if screenshot is not None:
            if window.save_screenshot(screenshot):
                log.info("screenshot saved to %s", screenshot)
            else:
                log.error("could not save the screenshot to %s", screenshot)
                result["status"] = 1
        if before_quit is not None:
            before_quit()
        app.quit()

    if seconds is not None or screenshot is not None:
        QtCore.QTimer.singleShot(round((seconds if seconds is not None else 5.0) * 1000), finish)
    restore = _quit_on_signals(app)
    try:
        app.exec()
    finally:
        restore()
        window.shutdown()
        window.deleteLater()
    return result["status"]


def _quit_on_signals(app: QtWidgets.QApplication) -> Callable[[], None]:
    """SIGTERM (the session ending) and Ctrl-C close the window; a timer lets Python see the signals."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: app.quit())
    wake = QtCore.QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(200)

    def restore() -> None:
        wake.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
