"""The last trial's timeline: the Bpod states as coloured bars on the trial clock, the input lines (licks,
BNC, soft codes) as ticks and the output lines (valves, BNC, sounds, the port LED) as the spans of the
states that set them; the state under the mouse is named."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pyqtgraph as pg

from rig.monitor.model import BehaviourModel
from rig.monitor.panels.style import add_plot, make_brushes, message_item, show_message
from rig.monitor.timeline import TrialTimeline

STATE_PALETTE = [
    (79, 195, 247), (255, 183, 77), (174, 213, 129), (240, 98, 146), (186, 104, 200), (255, 241, 118),
    (128, 203, 196), (244, 143, 177), (144, 164, 174), (255, 138, 101),
]
KNOWN_STATES = {"Reward": (70, 200, 100), "TimeOut": (235, 70, 70), "NoResponse": (150, 150, 150),
                "ResponseCue": (255, 255, 255)}
INPUT_COLOUR = (230, 230, 230)
OUTPUT_COLOUR = (0, 240, 255)
LABEL_PX_PER_CHAR = 8.0
"""A state bar is labelled with its name when it is this many pixels wide per character of it."""


def state_colour(name: str) -> tuple[int, int, int]:
    """One colour per state name, the same in every trial and every monitor."""
    return KNOWN_STATES.get(name) or STATE_PALETTE[zlib.crc32(name.encode()) % len(STATE_PALETTE)]


class TimelinePanel(pg.GraphicsLayoutWidget):
    """States (top row), then one row per input line ("Port1 in") and per output line ("Valve1 out")."""

    def __init__(self, model: BehaviourModel) -> None:
        super().__init__()
        self.model = model
        self.plot = add_plot(self, "Last trial", 0, 0)
        self.plot.setLabel("bottom", "time in trial (s)")
        self.plot.vb.setMouseEnabled(x=True, y=False)
        self.bars = pg.BarGraphItem(x0=[], width=[], y0=[], height=[])
        self.outputs = pg.BarGraphItem(x0=[], width=[], y0=[], height=[], brush=pg.mkBrush(OUTPUT_COLOUR),
                                       pen=None)
        self.ticks = pg.ScatterPlotItem(symbol="|", size=12, pen=pg.mkPen(INPUT_COLOUR, width=2))
        for item in (self.bars, self.outputs, self.ticks):
            self.plot.addItem(item)
        self.hover = pg.TextItem("", color=(255, 255, 255), anchor=(0, 1), fill=pg.mkBrush(0, 0, 0, 180))
        self.hover.setZValue(50)
        self.plot.addItem(self.hover, ignoreBounds=True)
        self.hover.setVisible(False)
        self.message = message_item(self.plot)
        self.timeline: TrialTimeline | None = None
        self.rows: list[str] = []
        self.labels: list[pg.TextItem] = []
        self._drawn: tuple[int, int] | None = None
        self.scene().sigMouseMoved.connect(self._moved)

    def refresh(self, now: float) -> None:
        m = self.model
        timeline = m.timeline
        key = (timeline.trial, len(timeline.outputs)) if timeline is not None else None
        if key != self._drawn:
            self._drawn = key
            self.timeline = timeline
            self._draw(timeline)
        show_message(self.message, self.plot, "" if timeline is not None else "waiting for a trial")

    def _draw(self, timeline: TrialTimeline | None) -> None:
        if timeline is None:
            self.bars.setOpts(x0=[], width=[], y0=[], height=[])
            self.outputs.setOpts(x0=[], width=[], y0=[], height=[])
            self.ticks.setData([], [])
            return
        self.rows = (["states"] + [f"{m.line} in" for m in timeline.inputs]
                     + [f"{m.line} out" for m in timeline.outputs])
        for label in self.labels:
            self.plot.removeItem(label)
        self.labels = []
        px_per_s = max(self.plot.vb.width(), 200.0) / max(timeline.duration_s, 1.0)
        for bar in timeline.bars:  # the bars wide enough carry their names; hovering names every bar
            if (bar.end_s - bar.start_s) * px_per_s >= len(bar.name) * LABEL_PX_PER_CHAR:
                label = pg.TextItem(bar.name, color=(0, 0, 0), anchor=(0.5, 0.5))
                label.setPos((bar.start_s + bar.end_s) / 2, 0.0)
                self.plot.addItem(label, ignoreBounds=True)
                self.labels.append(label)
        bars = timeline.bars
        self.bars.setOpts(
            x0=[b.start_s for b in bars], width=[max(b.end_s - b.start_s, 1e-3) for b in bars],
            y0=[-0.4] * len(bars), height=[0.8] * len(bars),
            brushes=make_brushes([state_colour(b.name) for b in bars]), pens=[pg.mkPen(None)] * len(bars),
        )
        xs: list[float] = []
        ys: list[float] = []
        for row, marks in enumerate(timeline.inputs, start=1):
            xs.extend(marks.times)
            ys.extend([-row] * len(marks.times))
        self.ticks.setData(xs, ys)
        x0: list[float] = []
        widths: list[float] = []
        y0: list[float] = []
        first = 1 + len(timeline.inputs)
        for row, marks in enumerate(timeline.outputs, start=first):
            for a, b in marks.spans:
                x0.append(a)
                widths.append(max(b - a, 1e-3))
                y0.append(-row - 0.25)
        self.outputs.setOpts(x0=x0, width=widths, y0=y0, height=[0.5] * len(x0))
        self.plot.getAxis("left").setTicks([[(-i, name) for i, name in enumerate(self.rows)]])
        self.plot.setYRange(-len(self.rows) + 0.4, 0.6, padding=0)
        self.plot.setXRange(0, max(timeline.duration_s, 1.0), padding=0.01)
        self.plot.setTitle(f"<span style='font-size:10pt'>Last trial: {timeline.trial}</span>")

    def _moved(self, position: Any) -> None:
        if self.timeline is None or not self.plot.sceneBoundingRect().contains(position):
            self.hover.setVisible(False)
            return
        point = self.plot.vb.mapSceneToView(position)
        self.show_state_at(point.x(), point.y())

    def show_state_at(self, t_s: float, y: float = 0.0) -> str | None:
        """Name the state at `t_s` of the shown trial (as hovering there does); returns it."""
        name = self.timeline.state_at(t_s) if self.timeline is not None else None
        if name is None:
            self.hover.setVisible(False)
            self.setToolTip("")
            return None
        self.hover.setText(f"{name} ({t_s:.2f} s)")
        self.hover.setPos(t_s, float(np.clip(y, -len(self.rows) + 0.5, 0.5)))
        self.hover.setVisible(True)
        self.setToolTip(name)
        return name

