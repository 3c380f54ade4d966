"""The decoding panel: the online decoder's accuracy per context and coding-direction similarity."""

from __future__ import annotations

from collections.abc import Sequence

import pyqtgraph as pg
from pyqtgraph.Qt import QtCore

from rig.monitor.model import ImagingModel
from rig.monitor.panels.style import (
    CONTEXT_PALETTE,
    LEFT,
    NOT_RUNNING,
    RIGHT,
    SIDE_COLOURS,
    add_plot,
    context_colour,
    make_brushes,
    message_item,
    show_message,
    swatch,
)


class DecodingPanel(pg.GraphicsLayoutWidget):
    """Preparatory decoding: each trial's projection on the delay CD (coloured by the side the trial
    asked for), cross-validated accuracy per context, and the similarity of the current CD to the stored
    CD of each context."""

    MAX_POINTS = 300

    def __init__(self, model: ImagingModel, contexts: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.contexts = list(contexts)
        key = f"{swatch(LEFT, '●')} left trial {swatch(RIGHT, '●')} right trial"
        self.projection = add_plot(self, f"Delay-CD projection per trial &nbsp; {key}", 0, 0)
        self.projection.setLabel("bottom", "trial")
        self.projection.setLabel("left", "projection")
        self.points = {
            side: pg.ScatterPlotItem(size=7, pen=None, brush=pg.mkBrush(c), name=f"{side} trial")
            for side, c in SIDE_COLOURS.items()
        }
        for item in self.points.values():
            self.projection.addItem(item)
        self.boundary = pg.PlotCurveItem(
            pen=pg.mkPen((220, 220, 220), width=1, style=QtCore.Qt.PenStyle.DashLine)
        )
        self.projection.addItem(self.boundary)
        self.accuracy = add_plot(self, "Decoding accuracy (cross-validated)", 0, 1)
        self.accuracy.setLabel("bottom", "trial")
        self.accuracy.setYRange(0, 1.02, padding=0)
        self.accuracy.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.accuracy.addItem(
            pg.InfiniteLine(0.5, angle=0, pen=pg.mkPen((120, 120, 120), style=QtCore.Qt.PenStyle.DotLine))
        )
        self.accuracy_curves: dict[str, pg.PlotDataItem] = {}
        self.similarity = add_plot(self, "Current CD · stored CDs", 0, 2)
        self.similarity.setLabel("left", "dot product")
        self.similarity.setYRange(-0.1, 1.05, padding=0)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.6, brush=pg.mkBrush(CONTEXT_PALETTE[0]))
        self.similarity.addItem(self.bars)
        self.messages = [message_item(p) for p in (self.projection, self.accuracy, self.similarity)]
        self.ci.layout.setColumnStretchFactor(0, 3)
        self.ci.layout.setColumnStretchFactor(1, 3)
        self.ci.layout.setColumnStretchFactor(2, 2)
        self._drawn = -1

    def refresh(self, now: float) -> None:
        m = self.model
        if m.decoder_version != self._drawn:
            self._drawn = m.decoder_version
            self._draw()
        running = m.online_running(now)
        texts = [NOT_RUNNING if not running else ("waiting for trials" if not m.decoder else "")] * 3
        if running and m.decoder and not m.accuracy:
            texts[1] = "decoder not trained yet"
        if running and m.decoder and not m.similarity:
            texts[2] = "no stored CDs"
        for item, plot, text in zip(
            self.messages, (self.projection, self.accuracy, self.similarity), texts, strict=True
        ):
            show_message(item, plot, text)

    def _draw(self) -> None:
        results = [r for r in self.model.decoder[-self.MAX_POINTS :] if r.projection is not None]
        for side, item in self.points.items():
            chosen = [r for r in results if r.actual_side == side]
            item.setData([r.trial for r in chosen], [r.projection for r in chosen])
        with_boundary = [r for r in results if r.boundary is not None]
        self.boundary.setData([r.trial for r in with_boundary], [r.boundary for r in with_boundary])
        if results:
            trials = [r.trial for r in results]
            values = [r.projection for r in results] + [r.boundary for r in with_boundary]
            low, high = min(values), max(values)
            pad = 0.1 * (high - low or 1.0)
            self.projection.setXRange(min(trials) - 1, max(trials) + 1, padding=0)
            self.projection.setYRange(low - pad, high + pad, padding=0)
        last_trial = 1
        for context, (trials, values) in self.model.accuracy.items():
            curve = self.accuracy_curves.get(context)
            if curve is None:
                colour = context_colour(context, self.contexts)
                curve = self.accuracy.plot([], [], pen=pg.mkPen(colour, width=2), name=context)
                self.accuracy_curves[context] = curve
            curve.setData(trials, values)
            last_trial = max(last_trial, trials[-1] if trials else 1)
        first = min((t[0] for t, _ in self.model.accuracy.values() if t), default=0)
        self.accuracy.setXRange(first, max(last_trial, first + 1), padding=0.02)
        labels = list(self.model.similarity)
        heights = [self.model.similarity[k] for k in labels]
        brushes = make_brushes([context_colour(k.split(":")[0].split("@")[0], self.contexts) for k in labels])
        self.bars.setOpts(x=list(range(len(labels))), height=heights, width=0.6, brushes=brushes)
        self.similarity.getAxis("bottom").setTicks([list(enumerate(labels))])
        self.similarity.setXRange(-0.6, max(len(labels), 1) - 0.4, padding=0)
        if heights:
            self.similarity.setYRange(
                min(-0.1, min(heights) - 0.05), max(1.05, max(heights) + 0.05), padding=0
            )
