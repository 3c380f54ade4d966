"""The control bar: switch context, pause and resume, closed loop, stop (requests to the session)."""

from __future__ import annotations

from collections.abc import Sequence

from pyqtgraph.Qt import QtCore, QtWidgets


class ControlBar(QtWidgets.QWidget):
    """Context switch, pause, resume, stop and closed loop; the window sends what these ask for."""

    switch_requested = QtCore.Signal(str)
    pause_requested = QtCore.Signal()
    resume_requested = QtCore.Signal()
    stop_requested = QtCore.Signal()
    closed_loop_requested = QtCore.Signal(bool)

    def __init__(self, contexts: Sequence[str], closed_loop: bool = False) -> None:
        super().__init__()
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(QtWidgets.QLabel("Context"))
        self.context = QtWidgets.QComboBox()
        self.context.addItems(list(contexts))
        layout.addWidget(self.context)
        self.switch = QtWidgets.QPushButton("Switch context")
        self.pause = QtWidgets.QPushButton("Pause")
        self.resume = QtWidgets.QPushButton("Resume")
        self.stop = QtWidgets.QPushButton("Stop…")
        self.closed_loop = QtWidgets.QCheckBox("Closed loop")
        self.closed_loop.setChecked(closed_loop)
        for widget in (self.switch, self.pause, self.resume, self.stop):
            layout.addWidget(widget)
        layout.addSpacing(16)
        layout.addWidget(self.closed_loop)
        layout.addStretch(1)
        self.title = QtWidgets.QLabel()
        layout.addWidget(self.title)
        self.switch.clicked.connect(lambda: self.switch_requested.emit(self.context.currentText()))
        self.pause.clicked.connect(self.pause_requested.emit)
        self.resume.clicked.connect(self.resume_requested.emit)
        self.stop.clicked.connect(self.stop_requested.emit)
        self.closed_loop.clicked.connect(lambda checked: self.closed_loop_requested.emit(bool(checked)))

    def set_closed_loop(self, enabled: bool) -> None:
        if self.closed_loop.isChecked() != enabled:
            self.closed_loop.blockSignals(True)
            self.closed_loop.setChecked(enabled)
            self.closed_loop.blockSignals(False)
