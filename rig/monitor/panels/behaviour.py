"""The behaviour panel: outcome and lick rasters, Perf100 per context with its switches, per-side
performance, outcome counts, and the stage line (context, stage, trials, Perf100, Bpod state)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtWidgets

from rig.monitor.model import BehaviourModel, TrialRow
from rig.monitor.panels.style import (
    EARLY_LICK,
    FREE_DROP,
    LEFT,
    OUTCOME_COLOURS,
    RIGHT,
    SIDE_COLOURS,
    add_plot,
    context_colour,
    make_brushes,
    message_item,
    show_message,
    swatch,
)

OUTCOME_WINDOW = 100  # trials shown in the outcome raster
LICK_ROWS = 40  # trials shown in the lick raster
LICK_RANGE_S = (-2.0, 3.0)  # lick raster window around the go cue


class BehaviourPanel(QtWidgets.QWidget):
    """Trial outcomes, licks around the go cue, Perf100 per context with its switches, per-side
    performance, and the current stage with its parameters."""

    OUTCOME_ROWS = {"left": 0, "right": 1}

    def __init__(
        self, model: BehaviourModel, contexts: Sequence[str], criterion: float | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.contexts = list(contexts)
        self.plots = pg.GraphicsLayoutWidget()
        self.stage = QtWidgets.QLabel()
        self.stage.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.stage.setWordWrap(True)
        self.stage.setStyleSheet("QLabel { color: #dddddd; background: #000000; padding: 6px; }")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.plots, 1)
        layout.addWidget(self.stage)

        p = self.plots
        key = " ".join(
            f"{swatch(c)} {k.replace('_', ' ')}" for k, c in OUTCOME_COLOURS.items() if k != "aborted"
        )
        self.outcomes = add_plot(p, f"Trial outcomes (last {OUTCOME_WINDOW}) &nbsp; {key}", 0, 0, colspan=2)
        self.outcomes.getAxis("left").setTicks([[(0, "L"), (1, "R"), (2, "early lick"), (3, "free drop")]])
        self.outcomes.setYRange(-0.6, 3.6, padding=0)
        self.outcomes.setLabel("bottom", "trial")
        self.outcome_points = pg.ScatterPlotItem(size=8, pen=None, symbol="s")
        self.flag_points = pg.ScatterPlotItem(size=8, pen=None, symbol="t")
        self.outcomes.addItem(self.outcome_points)
        self.outcomes.addItem(self.flag_points)

        key = f"{swatch(LEFT, '|')} left {swatch(RIGHT, '|')} right"
        self.licks = add_plot(p, f"Licks around the go cue &nbsp; {key}", 1, 0)
        self.licks.setLabel("bottom", "time from go cue (s)")
        self.licks.setLabel("left", "trial")
        self.licks.setXRange(*LICK_RANGE_S, padding=0)
        self.licks.addItem(pg.InfiniteLine(0, angle=90, pen=pg.mkPen((200, 200, 200), width=1)))
        self.lick_points = {
            side: pg.ScatterPlotItem(size=7, symbol="|", pen=pg.mkPen(c, width=2), name=f"{side} lick")
            for side, c in SIDE_COLOURS.items()
        }
        for item in self.lick_points.values():
            self.licks.addItem(item)

        self.perf = add_plot(p, "Perf100 per context", 1, 1)
        self.perf.setLabel("bottom", "trial")
        self.perf.setYRange(0, 1.05, padding=0)
        self.perf.addLegend(offset=(5, -5), labelTextSize="8pt")
        self.perf.addItem(
            pg.InfiniteLine(0.5, angle=0, pen=pg.mkPen((120, 120, 120), style=QtCore.Qt.PenStyle.DotLine))
        )
        if criterion is not None:
            self.perf.addItem(
                pg.InfiniteLine(
                    criterion, angle=0, pen=pg.mkPen((120, 200, 120), style=QtCore.Qt.PenStyle.DashLine)
                )
            )
        self.perf_curves: dict[str, pg.PlotDataItem] = {}
        self.switch_lines: list[pg.InfiniteLine] = []

        self.sides = add_plot(p, "Perf100 per side", 2, 0)
        self.sides.getAxis("bottom").setTicks([[(0, "left"), (1, "right")]])
        self.sides.setXRange(-0.6, 1.6, padding=0)
        self.sides.setYRange(0, 1.05, padding=0)
        self.side_bars = pg.BarGraphItem(x=[0, 1], height=[0, 0], width=0.6,
                                         brushes=make_brushes([LEFT, RIGHT]))
        self.sides.addItem(self.side_bars)
        self.side_labels = [pg.TextItem("", color=(230, 230, 230), anchor=(0.5, 1.0)) for _ in range(2)]
        for i, label in enumerate(self.side_labels):
            label.setPos(i, 0.05)
            self.sides.addItem(label)

        self.counts = add_plot(p, "Outcomes in this session", 2, 1)
        self.counts.getAxis("bottom").setTicks(
            [[(i, k.replace("_", " ")) for i, k in enumerate(OUTCOME_COLOURS)]]
        )
        self.counts.setXRange(-0.6, len(OUTCOME_COLOURS) - 0.4, padding=0)
        self.count_bars = pg.BarGraphItem(
            x=list(range(len(OUTCOME_COLOURS))),
            height=[0] * len(OUTCOME_COLOURS),
            width=0.6,
            brushes=make_brushes(list(OUTCOME_COLOURS.values())),
        )
        self.counts.addItem(self.count_bars)

        p.ci.layout.setRowStretchFactor(0, 2)
        p.ci.layout.setRowStretchFactor(1, 4)
        p.ci.layout.setRowStretchFactor(2, 2)
        self.messages = [message_item(self.outcomes), message_item(self.licks), message_item(self.perf)]
        self._drawn = -1
        self._pending: list[Callable[[list[TrialRow]], None]] = []
        self._status_drawn = (-1, -1)
        self.lick_rows = 0

    # ---- drawing

    def refresh(self, now: float, parts: int | None = None) -> None:
        """Redraw what changed; `parts`: at most that many of the plots (the display tick draws a trial's
        end one plot per turn, `refresh_step`), else all."""
        m = self.model
        if m.version != self._drawn:
            self._drawn = m.version
            self._pending = [self._draw_outcomes, self._draw_licks, self._draw_perf,
                             self._draw_sides_and_counts]
        if self._pending:
            budget = len(self._pending) if parts is None else parts
            trials = m.trials
            for draw in self._pending[:budget]:
                draw(trials)
            del self._pending[:budget]
        if (m.status_version, m.version) != self._status_drawn:
            self._status_drawn = (m.status_version, m.version)
            self._draw_stage()
        text = "" if m.rows else "waiting for trials"
        for item, plot in zip(self.messages, (self.outcomes, self.licks, self.perf), strict=True):
            show_message(item, plot, text)

    def _draw_outcomes(self, trials: list[TrialRow]) -> None:
        shown = trials[-OUTCOME_WINDOW:]
        sided = [r for r in shown if r.side in self.OUTCOME_ROWS]
        self.outcome_points.setData(
            [r.trial for r in sided],
            [self.OUTCOME_ROWS[r.side] for r in sided],  # type: ignore[index]
            brush=make_brushes([OUTCOME_COLOURS.get(r.outcome, (90, 90, 90)) for r in sided]),
        )
        flags = [(r.trial, 2, EARLY_LICK) for r in shown if r.early_lick]
        flags += [(r.trial, 3, FREE_DROP) for r in shown if r.free_drop]
        self.flag_points.setData(
            [f[0] for f in flags], [f[1] for f in flags], brush=make_brushes([f[2] for f in flags])
        )
        if shown:
            last = shown[-1].trial
            self.outcomes.setXRange(max(0.5, last - OUTCOME_WINDOW + 0.5), max(last, 10) + 0.5, padding=0)

    def _draw_licks(self, trials: list[TrialRow]) -> None:
        shown = trials[-LICK_ROWS:]
        self.lick_rows = len(shown)
        for side, item in self.lick_points.items():
            xs, ys = [], []
            for row in shown:
                t = row.licks_from_go(side)
                t = t[(t >= LICK_RANGE_S[0]) & (t <= LICK_RANGE_S[1])]
                xs.append(t)
                ys.append(np.full(len(t), row.trial, dtype=float))
            item.setData(np.concatenate(xs) if xs else [], np.concatenate(ys) if ys else [])
        if shown:
            self.licks.setYRange(
                shown[0].trial - 0.5, max(shown[-1].trial, shown[0].trial + LICK_ROWS - 1) + 0.5, padding=0
            )

    def _draw_perf(self, trials: list[TrialRow]) -> None:
        m = self.model
        for context, (numbers, values) in m.perf.items():
            curve = self.perf_curves.get(context)
            if curve is None:
                curve = self.perf.plot(
                    [], [], pen=pg.mkPen(context_colour(context, self.contexts), width=2), name=context
                )
                self.perf_curves[context] = curve
            curve.setData(numbers, values)
        for line in self.switch_lines:
            self.perf.removeItem(line)
        self.switch_lines = []
        # labels at the top, right of the line (the new context's side) unless the line is near the right edge
        near_edge = trials[0].trial + 0.75 * (trials[-1].trial - trials[0].trial) if trials else 0
        for trial, context in m.switches:
            right = trial < near_edge
            anchor = (0, 0) if right else (1, 0)
            line = pg.InfiniteLine(
                trial - 0.5,
                angle=90,
                label=f" {context}" if right else f"{context} → ",
                pen=pg.mkPen(
                    context_colour(context, self.contexts), width=1, style=QtCore.Qt.PenStyle.DashLine
                ),
                labelOpts={
                    "position": 0.97,
                    "color": (230, 230, 230),
                    "anchors": [anchor, anchor],
                    "rotateAxis": None,
                },
            )
            self.perf.addItem(line)
            self.switch_lines.append(line)
        if trials:
            self.perf.setXRange(trials[0].trial, max(trials[-1].trial, trials[0].trial + 10), padding=0.02)

    def refresh_step(self, now: float) -> None:
        self.refresh(now, parts=1)

    def _draw_sides_and_counts(self, _trials: list[TrialRow]) -> None:
        sides = self.model.side_performance()
        heights = [sides["left"] or 0.0, sides["right"] or 0.0]
        self.side_bars.setOpts(height=heights)
        for label, value in zip(self.side_labels, (sides["left"], sides["right"]), strict=True):
            label.setText("–" if value is None else f"{value:.0%}")
        counts = self.model.outcome_counts()
        heights = [counts.get(k, 0) for k in OUTCOME_COLOURS]
        self.count_bars.setOpts(height=heights)
        self.counts.setYRange(0, max(max(heights), 1) * 1.1, padding=0)

    def _draw_stage(self) -> None:
        self.stage.setText(stage_text(self.model))


def stage_text(model: BehaviourModel) -> str:
    """One paragraph: context, stage and its parameters, the session's progress and the Bpod state."""
    status = model.status
    last = model.last_row
    stage = dict(last.stage) if last else {}
    context = status.get("context") or (last.context if last else "–")
    parts = [f"<b>context</b> {html.escape(str(context))}"]
    if status.get("pending_context"):
        parts.append(f"<b>switching to</b> {html.escape(str(status['pending_context']))}")
    parts.append(f"<b>stage</b> {html.escape(str(status.get('stage') or stage.get('name', '–')))}")
    for key, label, unit in (
        ("delay_s", "delay", " s"),
        ("timeout_s", "timeout", " s"),
        ("selection", "selection", ""),
        ("sample_enforcement", "sample enforcement", ""),
    ):
        if key in stage:
            value = {True: "on", False: "off"}.get(stage[key], stage[key])
            parts.append(f"<b>{label}</b> {html.escape(str(value))}{unit}")
    trials = status.get("trials", last.trial if last else 0)
    parts.append(f"<b>trials</b> {trials}")
    perf = model.perf100(str(context))
    if perf is not None:
        parts.append(f"<b>Perf100</b> {perf:.0%}")
    if model.state is not None:
        parts.append(f"<b>state</b> {html.escape(model.state[1])} (trial {model.state[0]})")
    if last is not None and last.training_events:
        kinds = ", ".join(str(e.get("kind", "")) for e in last.training_events)
        parts.append(f"<b>training</b> {html.escape(kinds)}")
    return " &nbsp;·&nbsp; ".join(parts)
