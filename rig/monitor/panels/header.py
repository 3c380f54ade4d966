"""The header: the subject in large type (readable across a room of rigs), then rig, protocol, context and
block, stage, elapsed time, trials, water and weight; its colour says how near the end criteria are."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from pyqtgraph.Qt import QtCore, QtWidgets

from rig.monitor.header import HeaderInfo, format_elapsed, header_info
from rig.monitor.model import BehaviourModel

BACKGROUNDS = {"running": "#202a36", "near": "#7a5200", "met": "#1b6e3a"}
"""Header colour per end-criteria level: running, near (>= 90 % of one), met."""


class HeaderPanel(QtWidgets.QFrame):
    """One line across the window; redrawn when the status changes and once a second (the clock)."""

    def __init__(self, model: BehaviourModel, limits: Any) -> None:
        super().__init__()
        self.model = model
        self.limits = limits
        self.subject = QtWidgets.QLabel("–")
        self.subject.setStyleSheet("QLabel { font-size: 26pt; font-weight: bold; color: #ffffff; }")
        self.details = QtWidgets.QLabel()
        self.details.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.details.setStyleSheet("QLabel { font-size: 13pt; color: #e8e8e8; }")
        self.criteria = QtWidgets.QLabel()
        self.criteria.setStyleSheet("QLabel { font-size: 13pt; font-weight: bold; color: #ffffff; }")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(12, 2, 12, 2)
        layout.addWidget(self.subject)
        layout.addSpacing(24)
        layout.addWidget(self.details, 1)
        layout.addWidget(self.criteria)
        self.info: HeaderInfo | None = None
        self._drawn: tuple[Any, ...] = ()
        self._level = ""
        self._set_level("running")

    def _set_level(self, level: str) -> None:
        if level != self._level:
            self._level = level
            self.setStyleSheet(f"HeaderPanel {{ background: {BACKGROUNDS[level]}; border-radius: 4px; }}")

    def refresh(self, now: float, wall: datetime | None = None) -> None:
        m = self.model
        key = (m.status_version, m.version, int(now))
        if key == self._drawn:
            return
        self._drawn = key
        info = self.info = header_info(m, self.limits, wall)
        if self.subject.text() != info.subject:
            self.subject.setText(info.subject)
        context = html.escape(info.context) + (f" · block {html.escape(info.block)}" if info.block else "")
        weight = f"{info.weight_g:g} g" if info.weight_g is not None else "–"
        parts = [
            ("rig", html.escape(info.rig or "–")), ("protocol", info.protocol), ("context", context),
            ("stage", html.escape(info.stage)),
            ("elapsed", format_elapsed(info.elapsed_s) + (" (ended)" if info.ended else "")),
            ("trials", str(info.trials)), ("water", f"{info.water_ul:.0f} uL"), ("weight", weight),
        ]
        text = " &nbsp;&nbsp; ".join(f"<span style='color:#9fb4c8'>{k}</span> <b>{v}</b>" for k, v in parts)
        if self.details.text() != text:
            self.details.setText(text)
        criteria = "end criteria met: " if info.level == "met" else ""
        criteria += " · ".join(info.criteria[:3])
        if self.criteria.text() != criteria:
            self.criteria.setText(criteria)
        self._set_level(info.level)
