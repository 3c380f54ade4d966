"""Registration over the session: the shown plane's x/y shift and its correlation with the reference, so
that drift (or a loosened head bar) is seen before it ruins the session."""

from __future__ import annotations

import pyqtgraph as pg

from rig.monitor.model import ImagingModel
from rig.monitor.panels.style import BAD, GOOD, add_plot, message_item, show_message, swatch

DY, DX, CORRELATION = (255, 183, 77), (79, 195, 247), (174, 213, 129)
REDRAW_S = 0.5
"""The history is redrawn at most this often (it changes every few frames, drifts over minutes)."""


class RegistrationPanel(pg.GraphicsLayoutWidget):
    """Shift (px) and correlation over the session's time (minutes, on the Bpod session clock)."""

    def __init__(self, model: ImagingModel) -> None:
        super().__init__()
        self.model = model
        key = f"{swatch(DY, '—')} y {swatch(DX, '—')} x"
        self.shift = add_plot(self, f"Registration shift (px) &nbsp; {key}", 0, 0)
        self.correlation = add_plot(self, f"{swatch(CORRELATION, '—')} correlation with the reference", 1, 0)
        self.correlation.setLabel("bottom", "session time (min)")
        self.correlation.setXLink(self.shift)
        self.correlation.setYRange(0, 1.02, padding=0)
        self.correlation.getAxis("left").setTicks([[(0.0, "0"), (0.5, "0.5"), (1.0, "1")]])
        self.curves = {
            "dy": self.shift.plot([], [], pen=pg.mkPen(DY, width=1.5)),
            "dx": self.shift.plot([], [], pen=pg.mkPen(DX, width=1.5)),
            "correlation": self.correlation.plot([], [], pen=pg.mkPen(CORRELATION, width=1.5)),
        }
        self.ci.layout.setRowStretchFactor(0, 3)
        self.ci.layout.setRowStretchFactor(1, 2)
        self.message = message_item(self.shift)
        self._drawn: tuple[int, int] = (-1, -1)
        self._drawn_at = -float("inf")
        self.note = ""

    def refresh(self, now: float) -> None:
        m = self.model
        history = m.shown.registration
        key = (history.version, m.plane_version)
        if key != self._drawn and (now - self._drawn_at >= REDRAW_S or key[1] != self._drawn[1]):
            self._drawn, self._drawn_at = key, now
            points = history.points()
            if len(points):
                minutes = points[:, 0] / 60.0
                for column, name in ((1, "dy"), (2, "dx"), (3, "correlation")):
                    self.curves[name].setData(minutes, points[:, column])
                span = max(minutes[-1] - minutes[0], 0.5)
                self.shift.setXRange(minutes[-1] - span, minutes[-1], padding=0.02)
                low, high = float(points[:, 1:3].min()), float(points[:, 1:3].max())
                self.shift.setYRange(min(low, -1.0) - 0.5, max(high, 1.0) + 0.5, padding=0)
                corr = float(points[-1, 3])
                colour = GOOD if corr >= 0.7 else BAD
                self.note = f"<span style='color:{colour}'>r {corr:.2f}</span>"
                self.correlation.setTitle(
                    f"<span style='font-size:10pt'>{swatch(CORRELATION, '—')} correlation with the reference"
                    f" &nbsp; now {self.note}</span>")
        show_message(self.message, self.shift, "" if len(history) else "waiting for registered frames")
