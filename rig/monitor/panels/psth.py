"""PSTHs per condition: the mean activity of the selected ROI, or of the most selective ROIs, for left and
right trials (hits solid, errors dashed) of one context or block, aligned to the sample onset and to the
go cue, with the sample and delay epochs shaded."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.monitor.model import ImagingModel
from rig.monitor.panels.style import SIDE_COLOURS, add_plot, message_item, show_message, swatch
from rig.monitor.psth import OUTCOMES, PsthAccumulator

TOP_NEURONS = 10
SELECTIVE_SD = 0.5
"""An ROI counts as selective from this left-right difference (in its standard deviations): the PSTH of
the top ROIs is not diluted by unselective ones."""
NEURONS = ("left-selective", "right-selective", "selected ROI")
EPOCH_BRUSHES = ((255, 255, 255, 38), (255, 255, 255, 16))
"""Shading of the sample epoch, then the delay."""


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the columns of each row, ignoring NaN (NaN for a row without values), without warnings."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=1)
    sums = np.where(finite, values, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)


class PsthPanel(QtWidgets.QWidget):
    """Two plots (sample onset, go cue) and the choice of condition group, neurons and activity."""

    def __init__(self, model: ImagingModel) -> None:
        super().__init__()
        self.model = model
        self.group = QtWidgets.QComboBox()
        self.group.setMinimumContentsLength(14)
        self.neurons = QtWidgets.QComboBox()
        self.neurons.addItems([f"top {TOP_NEURONS} {n}" if n != "selected ROI" else n for n in NEURONS])
        self.activity = QtWidgets.QComboBox()
        self.activity.addItems(["dF/F", "deconvolved"])
        bar = QtWidgets.QHBoxLayout()
        bar.setContentsMargins(4, 0, 4, 0)
        for label, widget in (("PSTH of", self.group), ("neurons", self.neurons), ("", self.activity)):
            if label:
                bar.addWidget(QtWidgets.QLabel(label))
            bar.addWidget(widget)
        bar.addStretch(1)
        left, right = swatch(SIDE_COLOURS["left"], "—"), swatch(SIDE_COLOURS["right"], "—")
        key = QtWidgets.QLabel(f"{left} left {right} right · hits solid, errors dashed")
        key.setTextFormat(QtCore.Qt.TextFormat.RichText)
        bar.addWidget(key)
        self.plots = pg.GraphicsLayoutWidget()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(bar)
        layout.addWidget(self.plots, 1)
        self.axes = {
            "sample": add_plot(self.plots, "Sample onset", 0, 0),
            "go": add_plot(self.plots, "Go cue", 0, 1),
        }
        self.curves: dict[tuple[str, str, str], pg.PlotCurveItem] = {}
        self.epochs: dict[str, list[pg.LinearRegionItem]] = {}
        for alignment, plot in self.axes.items():
            plot.setLabel("bottom", f"time from {'sample onset' if alignment == 'sample' else 'go cue'} (s)")
            plot.addItem(pg.InfiniteLine(0, angle=90, pen=pg.mkPen((200, 200, 200), width=1)))
            self.epochs[alignment] = []
            for brush in EPOCH_BRUSHES:
                region = pg.LinearRegionItem((0, 0), movable=False, brush=pg.mkBrush(brush),
                                             pen=pg.mkPen(None))
                region.setZValue(-10)
                plot.addItem(region)
                self.epochs[alignment].append(region)
            for side, colour in SIDE_COLOURS.items():
                for outcome in OUTCOMES:
                    style = QtCore.Qt.PenStyle.SolidLine if outcome == "hit" else QtCore.Qt.PenStyle.DashLine
                    curve = pg.PlotCurveItem(pen=pg.mkPen(colour, width=2, style=style))
                    plot.addItem(curve)
                    self.curves[(alignment, side, outcome)] = curve
        self.plots.ci.layout.setColumnStretchFactor(0, 5)
        self.plots.ci.layout.setColumnStretchFactor(1, 4)
        self.message = message_item(self.axes["sample"])
        self.shown_rois: np.ndarray = np.empty(0, dtype=int)
        self._drawn: tuple[object, ...] = ()
        for combo in (self.group, self.neurons, self.activity):
            combo.currentIndexChanged.connect(lambda _: self.refresh(0.0))

    def accumulator(self) -> PsthAccumulator:
        plane = self.model.shown
        return plane.deconvolved_psth if self.activity.currentIndex() == 1 else plane.psth

    def refresh(self, now: float) -> None:
        m = self.model
        psth = self.accumulator()
        key = (psth.version, m.plane_version, m.selection_version, self.group.currentText(),
               self.neurons.currentIndex(), self.activity.currentIndex())
        if key == self._drawn:
            return
        self._drawn = key
        self._update_groups(psth)
        group = self.group.currentText()
        rois = self._rois(psth, group)
        self.shown_rois = rois
        drawn = 0
        for (alignment, side, outcome), curve in self.curves.items():
            mean = psth.mean(alignment, group, side, outcome) if len(rois) else None
            if mean is None:
                curve.setData([], [])
                continue
            y = _nanmean_rows(mean[:, rois])
            keep = np.isfinite(y)
            curve.setData(psth.centres(alignment)[keep], y[keep])
            drawn += int(keep.any())
        self._shade(psth)
        self._autoscale()
        trials = {s: sum(psth.trials(group, s, o) for o in OUTCOMES) for s in ("left", "right")}
        self.axes["go"].setTitle(f"<span style='font-size:10pt'>Go cue &nbsp; {trials['left']} left / "
                                 f"{trials['right']} right trials</span>")
        choice = NEURONS[self.neurons.currentIndex()]
        if drawn:
            text = ""
        elif choice == "selected ROI":
            text = "select an ROI" if self.model.selected is None else "waiting for trials with traces"
        else:
            text = f"no {choice} ROIs yet" if sum(trials.values()) else "waiting for trials with traces"
        show_message(self.message, self.axes["sample"], text)

    def _update_groups(self, psth: PsthAccumulator) -> None:
        names = [self.group.itemText(i) for i in range(self.group.count())]
        if names != psth.groups:
            current = self.group.currentText()
            self.group.blockSignals(True)
            self.group.clear()
            self.group.addItems(psth.groups)
            # follow the newest group (the running context or block) unless an older one was chosen
            follow = not names or current == names[-1] or current not in psth.groups
            self.group.setCurrentIndex(len(psth.groups) - 1 if follow else psth.groups.index(current))
            self.group.blockSignals(False)

    def _rois(self, psth: PsthAccumulator, group: str) -> np.ndarray:
        choice = NEURONS[self.neurons.currentIndex()]
        if choice == "selected ROI":
            roi = self.model.selected
            return np.array([roi] if roi is not None and roi < psth.n_rois else [], dtype=int)
        if psth.n_rois == 0:
            return np.empty(0, dtype=int)
        sign = 1 if choice == "left-selective" else -1
        for where in (group, None):  # this group's selective ROIs; early in a new one, the session's
            selectivity = psth.selectivity(where) * sign
            order = np.argsort(-selectivity)[:TOP_NEURONS]
            chosen = order[selectivity[order] > SELECTIVE_SD]
            if len(chosen):
                return chosen
        return chosen

    def _shade(self, psth: PsthAccumulator) -> None:
        epochs = psth.epochs()
        if epochs is None:
            for regions in self.epochs.values():
                for region in regions:
                    region.setVisible(False)
            return
        sample, delay = epochs
        spans = {"sample": [(0.0, sample), (sample, sample + delay)], "go": [(-delay - sample, -delay),
                                                                             (-delay, 0.0)]}
        for alignment, regions in self.epochs.items():
            for region, span in zip(regions, spans[alignment], strict=True):
                region.setRegion(span)
                region.setVisible(True)

    def _autoscale(self) -> None:
        for alignment, plot in self.axes.items():
            window = self.accumulator().windows[alignment]
            plot.setXRange(*window, padding=0)
            ys = [c.yData for (a, _, _), c in self.curves.items() if a == alignment and c.yData is not None
                  and len(c.yData)]
            if ys:
                values = np.concatenate(ys)
                low, high = float(values.min()), float(values.max())
                pad = max(high - low, 1e-3) * 0.1
                plot.setYRange(low - pad, high + pad, padding=0)
