"""The control bar: switch context, pause and resume, closed loop, stop, the manual valve (a free drop or
a flush of either side), and the display's choices (plane, trace heatmap or lines, their order).

What it shows follows the session: the context selector shows the running context (and the one a switch
is waiting for), pause and resume are enabled as the session's state allows, and closed loop is checked
as the session has it, after every status and every reply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyqtgraph.Qt import QtCore, QtWidgets


class ControlBar(QtWidgets.QWidget):
    """Requests to the session and display choices; the window sends what these ask for."""

    switch_requested = QtCore.Signal(str)
    pause_requested = QtCore.Signal()
    resume_requested = QtCore.Signal()
    stop_requested = QtCore.Signal()
    closed_loop_requested = QtCore.Signal(bool)
    valve_requested = QtCore.Signal(str, str)  # side, action (drop or flush)
    plane_selected = QtCore.Signal(int)
    traces_mode_selected = QtCore.Signal(str)
    traces_order_selected = QtCore.Signal(str)

    def __init__(self, contexts: Sequence[str], closed_loop: bool = False) -> None:
        super().__init__()
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.addWidget(QtWidgets.QLabel("Context"))
        self.context = QtWidgets.QComboBox()
        self.context.addItems(list(contexts))
        layout.addWidget(self.context)
        self.pending = QtWidgets.QLabel()
        self.pending.setStyleSheet("QLabel { color: #ffb300; }")
        self.switch = QtWidgets.QPushButton("Switch context")
        self.pause = QtWidgets.QPushButton("Pause")
        self.resume = QtWidgets.QPushButton("Resume")
        self.stop = QtWidgets.QPushButton("Stop…")
        self.closed_loop = QtWidgets.QCheckBox("Closed loop")
        self.closed_loop.setChecked(closed_loop)
        for widget in (self.pending, self.switch, self.pause, self.resume, self.stop):
            layout.addWidget(widget)
        layout.addSpacing(12)
        layout.addWidget(self.closed_loop)
        layout.addSpacing(16)
        layout.addWidget(QtWidgets.QLabel("Valve"))
        self.drop = {side: QtWidgets.QPushButton(f"Drop {side[0].upper()}") for side in ("left", "right")}
        self.flush = {side: QtWidgets.QPushButton(f"Flush {side[0].upper()}…") for side in ("left", "right")}
        for side in ("left", "right"):
            self.drop[side].setToolTip(f"one calibrated reward drop from the {side} valve (a free drop)")
            self.flush[side].setToolTip(f"open the {side} valve for session.flush_s (asks first)")
            layout.addWidget(self.drop[side])
        for side in ("left", "right"):
            layout.addWidget(self.flush[side])
        layout.addStretch(1)
        self.plane_label = QtWidgets.QLabel("Plane")
        self.plane = QtWidgets.QComboBox()
        self.traces_mode = QtWidgets.QComboBox()
        self.traces_mode.addItems(["heatmap", "lines"])
        self.traces_order = QtWidgets.QComboBox()
        self.traces_order.addItems(["selectivity", "ROI number"])
        for widget in (self.plane_label, self.plane, QtWidgets.QLabel("Traces"), self.traces_mode,
                       QtWidgets.QLabel("sorted by"), self.traces_order):
            layout.addWidget(widget)
        self.set_planes([0])
        self.title = QtWidgets.QLabel()
        layout.addWidget(self.title)
        self.switch.clicked.connect(lambda: self.switch_requested.emit(self.context.currentText()))
        self.pause.clicked.connect(self.pause_requested.emit)
        self.resume.clicked.connect(self.resume_requested.emit)
        self.stop.clicked.connect(self.stop_requested.emit)
        self.closed_loop.clicked.connect(lambda checked: self.closed_loop_requested.emit(bool(checked)))
        for side in ("left", "right"):
            self.drop[side].clicked.connect(lambda _=False, s=side: self.valve_requested.emit(s, "drop"))
            self.flush[side].clicked.connect(lambda _=False, s=side: self.valve_requested.emit(s, "flush"))
        self.plane.activated.connect(lambda i: self.plane_selected.emit(int(self.plane.itemData(i))))
        self.traces_mode.currentTextChanged.connect(self.traces_mode_selected.emit)
        self.traces_order.currentTextChanged.connect(self.traces_order_selected.emit)
        self._synced: tuple[Any, ...] = ()

    def set_closed_loop(self, enabled: bool) -> None:
        if self.closed_loop.isChecked() != enabled:
            self.closed_loop.blockSignals(True)
            self.closed_loop.setChecked(enabled)
            self.closed_loop.blockSignals(False)

    def set_planes(self, planes: Sequence[int], shown: int = 0) -> None:
        """The plane selector lists the planes seen; it is shown only when there are several."""
        current = [int(self.plane.itemData(i)) for i in range(self.plane.count())]
        if list(planes) != current:
            self.plane.blockSignals(True)
            self.plane.clear()
            for plane in planes:
                self.plane.addItem(f"{plane}", plane)
            self.plane.blockSignals(False)
        if shown in planes:
            self.plane.setCurrentIndex(list(planes).index(shown))
        several = len(planes) > 1
        self.plane.setVisible(several)
        self.plane_label.setVisible(several)

    def sync(self, status: Mapping[str, Any], force: bool = False) -> None:
        """Show the session's state: after a status when it changed, and after every reply (`force`), so
        a choice the experimenter is making in the selector is not overwritten by each status poll."""
        if not status:
            return  # nothing heard from the session yet: every control stays usable
        context, pending = status.get("context"), status.get("pending_context")
        paused, stopping = status.get("paused") is True, status.get("stopping") is True
        key = (context, pending, paused, stopping)
        if key == self._synced and not force:
            return
        self._synced = key
        shown = pending if isinstance(pending, str) and pending else context
        if isinstance(shown, str) and self.context.findText(shown) >= 0:
            self.context.setCurrentText(shown)
        self.pending.setText(f"(running {context}, switching)" if pending and context else "")
        self.pause.setEnabled(not paused and not stopping)
        self.resume.setEnabled(paused and not stopping)
        self.switch.setEnabled(not stopping)
        closed_loop = status.get("closed_loop")
        if isinstance(closed_loop, bool):
            self.set_closed_loop(closed_loop)
