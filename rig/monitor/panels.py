"""The monitor's panels: each draws one part of the model and redraws only when that part changed.

Every panel has `refresh(model, now)`, called from the window's display timer; it compares the model's
version counters with the ones it drew last and returns at once when nothing changed. Drawing follows
docs/realtime-notes: the frame is one ImageItem with fixed levels (row-major), all ROI traces are one
PlotCurveItem with offsets and a `connect` array, ROI outlines are one curve as well, and no plot
auto-ranges over live data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from rig.monitor.model import (
    OFFLINE_AFTER_S,
    BehaviourModel,
    ImagingModel,
    MonitorModel,
    TrialRow,
    online_watch,
)

# ---- colours (one scheme for every panel: left is blue, right is red)

LEFT = (80, 160, 255)
RIGHT = (255, 95, 85)
SIDE_COLOURS = {"left": LEFT, "right": RIGHT}
OUTCOME_COLOURS = {
    "hit": (70, 200, 100),
    "error": (235, 70, 70),
    "no_response": (150, 150, 150),
    "aborted": (90, 90, 90),
}
EARLY_LICK = (255, 175, 0)
FREE_DROP = (190, 120, 255)
HIGHLIGHT = (0, 240, 255)
OUTLINE = (255, 230, 0, 120)
TRACE = (175, 175, 175)
CONTEXT_PALETTE = [
    (79, 195, 247),
    (255, 183, 77),
    (174, 213, 129),
    (240, 98, 146),
    (186, 104, 200),
    (255, 241, 118),
]
GOOD, WARN, BAD, IDLE = "#3ddc84", "#ffb300", "#ff5252", "#9e9e9e"

NOT_RUNNING = "online module not running"
OUTCOME_WINDOW = 100  # trials shown in the outcome raster
LICK_ROWS = 40  # trials shown in the lick raster
LICK_RANGE_S = (-2.0, 3.0)  # lick raster window around the go cue
MAX_TRACE_VERTICES = 40_000  # vertices of the stacked-trace curve per redraw (bounds the paint time)
SIMPLIFY_PX = 0.25  # a trace vertex within this many pixels of its neighbours' line is not stroked


def context_colour(name: str, order: Sequence[str]) -> tuple[int, int, int]:
    index = list(order).index(name) if name in order else len(order) + hash(name) % 3
    return CONTEXT_PALETTE[index % len(CONTEXT_PALETTE)]


def _brushes(colours: Sequence[tuple[int, ...]]) -> list[QtGui.QBrush]:
    cache: dict[tuple[int, ...], QtGui.QBrush] = {}
    return [cache.setdefault(c, pg.mkBrush(c)) for c in colours]


def swatch(colour: tuple[int, ...], symbol: str = "■") -> str:
    """A coloured symbol for plot titles (keys in titles never hide the newest data, as legends can)."""
    return f"<span style='color:rgb({colour[0]},{colour[1]},{colour[2]})'>{symbol}</span>"


def _plot(layout: pg.GraphicsLayoutWidget, title: str, row: int, col: int, **kwargs: Any) -> pg.PlotItem:
    plot = layout.addPlot(row=row, col=col, title=f"<span style='font-size:10pt'>{title}</span>", **kwargs)
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.disableAutoRange()
    return plot


def _message_item(plot: pg.PlotItem) -> pg.TextItem:
    """A centred grey note inside a plot ('online module not running', 'waiting for trials')."""
    item = pg.TextItem("", color=(200, 200, 200), anchor=(0.5, 0.5))
    item.setZValue(100)
    plot.addItem(item, ignoreBounds=True)
    return item


def _show_message(item: pg.TextItem, plot: pg.PlotItem, text: str) -> None:
    if item.textItem.toPlainText() != text:
        item.setText(text)
    if text:
        (x0, x1), (y0, y1) = plot.vb.viewRange()
        item.setPos((x0 + x1) / 2, (y0 + y1) / 2)
    item.setVisible(bool(text))


def closed_outlines(points: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ROI outlines as one polyline: (x, y, connect), each outline closed on its first point and
    disconnected from the next (points are (y, x) rows, ROI i is points[offsets[i]:offsets[i+1]])."""
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    nonempty = ends > starts
    if not nonempty.any():
        return np.empty(0), np.empty(0), np.empty(0, dtype=bool)
    closed = np.insert(points, ends[nonempty], points[starts[nonempty]], axis=0)
    lengths = (ends - starts)[nonempty] + 1
    connect = np.ones(len(closed), dtype=bool)
    connect[np.cumsum(lengths) - 1] = False
    return closed[:, 1].astype(float), closed[:, 0].astype(float), connect


# ----------------------------------------------------------------------------------------------- imaging


class FrameImageItem(pg.ImageItem):
    """An ImageItem for 16-bit grey frames with fixed levels, converted to an opaque RGB32 QImage through a
    cached 65536-entry lookup table (one `np.take` into a reused buffer, no per-paint allocation, and the
    format the raster engine draws without converting). Other images fall back to ImageItem's path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lut8: np.ndarray | None = None
        self._lut_key: tuple[Any, ...] = ()
        self._grey: np.ndarray | None = None
        self._rgb32 = np.empty(0, dtype=np.uint32)

    def _lut(self, dtype: np.dtype, low: float, high: float) -> np.ndarray:
        key = (dtype.str, low, high)
        if self._lut8 is None or key != self._lut_key:
            values = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float32)
            scale = 255.0 / (high - low) if high != low else 1.0
            self._lut8 = np.clip((values - np.float32(low)) * np.float32(scale), 0, 255).astype(np.uint8)
            self._lut_key = key
        return self._lut8

    def render(self) -> None:
        image, levels = self.image, self.levels
        if (
            image is None
            or image.ndim != 2
            or image.dtype not in (np.int16, np.uint16)
            or levels is None
            or np.ndim(levels) != 1
            or self.lut is not None
            or self.autoDownsample
            or self.axisOrder != "row-major"
        ):
            super().render()
            return
        lut = self._lut(image.dtype, float(levels[0]), float(levels[1]))
        if self._grey is None or self._grey.shape != image.shape:
            self._grey = np.empty(image.shape, dtype=np.uint8)
            self._rgb32 = np.empty(image.shape, dtype=np.uint32)
        np.take(lut, image.view(np.uint16), out=self._grey)
        np.multiply(self._grey, np.uint32(0x010101), out=self._rgb32, dtype=np.uint32)
        np.bitwise_or(self._rgb32, np.uint32(0xFF000000), out=self._rgb32)
        self.qimage = pg.functions.ndarray_to_qimage(self._rgb32, QtGui.QImage.Format.Format_RGB32)
        self._renderRequired = False
        self._unrenderable = False


def _cache_static(*items: QtWidgets.QGraphicsItem) -> None:
    """Paint items that rarely change (ROI outlines, axes) from a pixmap Qt keeps until they change."""
    for item in items:
        item.setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)


class FramePanel(pg.GraphicsLayoutWidget):
    """The newest display frame, moved by its registration shift, with every ROI outline and the
    selected ROI highlighted. A click on a ROI selects it."""

    roi_clicked = QtCore.Signal(int)

    def __init__(self, model: ImagingModel, frame_shape: tuple[int, int] = (512, 512)) -> None:
        super().__init__()
        self.model = model
        self.plot = _plot(self, "Registered frame", 0, 0)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.vb.setMouseEnabled(x=False, y=False)
        self.image = FrameImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.outlines = pg.PlotCurveItem(pen=pg.mkPen(OUTLINE, width=1), skipFiniteCheck=True)
        self.selected_outline = pg.PlotCurveItem(pen=pg.mkPen(HIGHLIGHT, width=2.5))
        self.outlines.setZValue(10)
        self.selected_outline.setZValue(11)
        self.plot.addItem(self.outlines)
        self.plot.addItem(self.selected_outline)
        _cache_static(self.outlines, self.selected_outline)
        self.caption = self.addLabel("", row=1, col=0, size="9pt", color="#c8c8c8")
        self.message = _message_item(self.plot)
        self._shape = frame_shape
        self._set_range(frame_shape)
        self._drawn = (-1, -1, -1, -1)  # frame, rois, selection, shift versions
        self._caption = ""
        self.scene().sigMouseClicked.connect(self._clicked)

    def _set_range(self, shape: tuple[int, int]) -> None:
        self._shape = shape
        self.plot.vb.setRange(xRange=(0, shape[1]), yRange=(0, shape[0]), padding=0.01)

    def refresh(self, now: float) -> None:
        m = self.model
        versions = (m.frame_version, m.rois_version, m.selection_version, m.shift_version)
        if versions != self._drawn:
            if versions[0] != self._drawn[0] and m.frame is not None and m.levels is not None:
                self.image.setImage(m.frame, levels=m.levels, autoLevels=False)
                if m.frame.shape != self._shape:
                    self._set_range(m.frame.shape)
            if versions[0] != self._drawn[0] or versions[3] != self._drawn[3]:
                dy, dx = m.frame_shift
                self.image.setPos(dx, dy)  # the shift that aligns the frame to the reference
            if versions[1] != self._drawn[1] and m.rois is not None:
                x, y, connect = closed_outlines(m.rois.outline_points, m.rois.outline_offsets)
                self.outlines.setData(x, y, connect=connect, skipFiniteCheck=True)
            if versions[1] != self._drawn[1] or versions[2] != self._drawn[2]:
                self._draw_selection()
            self._drawn = versions
        self._update_text(now)

    def _draw_selection(self) -> None:
        m = self.model
        if m.rois is None or m.selected is None or m.selected >= m.rois.n_rois:
            self.selected_outline.setData([], [])
            return
        outline = m.rois.outline(m.selected)
        if len(outline):
            closed = np.vstack([outline, outline[:1]])
            self.selected_outline.setData(closed[:, 1].astype(float), closed[:, 0].astype(float))

    def _update_text(self, now: float) -> None:
        m = self.model
        frames = m.frames_arriving(now)
        online = m.online_running(now)
        if not frames and not online:
            message = f"no frames\n{NOT_RUNNING}"
        elif not frames:
            message = "no display frames"
        else:
            message = ""
        _show_message(self.message, self.plot, message)
        parts = []
        if m.frame_header is not None:
            h = m.frame_header
            parts.append(f"trial {h.trial} · frame {h.frame_index}")
            dy, dx = m.frame_shift
            parts.append(f"shift ({dy:+.1f}, {dx:+.1f}) px")
        if m.rois is not None:
            parts.append(f"{m.rois.n_rois} ROIs")
        if m.selected is not None:
            parts.append(f"<span style='color:#00f0ff'>ROI {m.selected}</span>")
        if not online and not message:
            parts.append(NOT_RUNNING)
        caption = " · ".join(parts) or "waiting for frames"
        if caption != self._caption:
            self._caption = caption
            self.caption.setText(caption)

    def _clicked(self, event: Any) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        point = self.plot.vb.mapSceneToView(event.scenePos())
        self.click_at(point.y(), point.x())

    def click_at(self, y: float, x: float) -> None:
        """Select the ROI nearest to (row y, column x) of the frame, if one is near enough."""
        dy, dx = self.model.frame_shift
        roi = self.model.nearest_roi(y - dy, x - dx)
        if roi is not None:
            self.roi_clicked.emit(roi)


class StackedCurveItem(pg.PlotCurveItem):
    """A PlotCurveItem whose path is built from one QPolygonF, one sub-polygon per connected run of the
    `connect` array (same picture as pyqtgraph's generic path builder, about 6x faster for many traces)."""

    def generatePath(self, x: np.ndarray, y: np.ndarray) -> QtGui.QPainterPath:  # noqa: N802 - Qt's name
        connect = self.opts["connect"]
        if not isinstance(connect, np.ndarray) or self.opts["stepMode"] or len(x) < 2:
            return super().generatePath(x, y)
        ends = np.flatnonzero(~connect[: len(x)].astype(bool)) + 1  # connect[i] = 0: i does not join i + 1
        if len(ends) == 0 or ends[-1] != len(x):
            ends = np.r_[ends, len(x)]
        starts = np.r_[0, ends[:-1]]
        polygon = pg.functions.create_qpolygonf(len(x))
        points = pg.functions.ndarray_from_qpolygonf(polygon)
        points[:, 0] = x
        points[:, 1] = y
        path = QtGui.QPainterPath()
        path.reserve(len(x))
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start >= 2:
                path.addPolygon(polygon.mid(start, end - start))
        return path


def bin_samples(times: np.ndarray, dff: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Average every `step` consecutive samples (the newest bin ends on the newest sample)."""
    if step <= 1 or len(times) < 2 * step:
        return times, dff
    n = (len(times) // step) * step
    times, dff = times[-n:], dff[-n:]
    return times.reshape(-1, step).mean(axis=1), dff.reshape(-1, step, dff.shape[1]).mean(axis=1)


def collinear_keep(x: np.ndarray, y: np.ndarray, tolerance: float) -> np.ndarray:
    """Which points of each row of y (rows share x) to stroke: in two passes, a point is dropped when it lies
    within `tolerance` of the straight line through its two kept neighbours, so that the polyline through the
    kept points stays within 2 x tolerance of every point. First and last points are always kept."""
    keep = np.ones(y.shape, dtype=bool)
    n = y.shape[1]
    for step in (1, 2):
        mid = np.arange(step, n - step, 2 * step)
        if len(mid) == 0:
            break
        x0, x1, xm = x[mid - step], x[mid + step], x[mid]
        span = x1 - x0
        w = np.divide(xm - x0, span, out=np.full(len(mid), 0.5), where=span != 0).astype(np.float32)
        y0, y1 = y[:, mid - step], y[:, mid + step]
        line = y0 + (y1 - y0) * w
        keep[:, mid] = ~(np.abs(y[:, mid] - line) <= tolerance)  # NaN: kept
    return keep


class TracesPanel(pg.GraphicsLayoutWidget):
    """Every ROI's dF/F over the last seconds, stacked (ROI i around y = i), as ONE curve; the selected
    ROI is drawn again on top. A click on a trace selects its ROI."""

    trace_clicked = QtCore.Signal(int)

    def __init__(self, model: ImagingModel) -> None:
        super().__init__()
        self.model = model
        self.plot = _plot(self, f"ROI dF/F, last {model.trace_seconds:g} s", 0, 0)
        self.plot.setLabel("left", "ROI")
        self.plot.setLabel("bottom", "time (s)")
        self.plot.vb.setMouseEnabled(x=False, y=True)
        self.plot.setXRange(-model.trace_seconds, 0, padding=0.01)
        self.plot.setYRange(-1, 10, padding=0)
        self.curve = StackedCurveItem(pen=pg.mkPen(TRACE, width=1), skipFiniteCheck=True)
        self.highlight = pg.PlotCurveItem(pen=pg.mkPen(HIGHLIGHT, width=2))
        self.highlight.setZValue(10)
        self.plot.addItem(self.curve)
        self.plot.addItem(self.highlight)
        _cache_static(self.plot.getAxis("left"), self.plot.getAxis("bottom"))
        self.message = _message_item(self.plot)
        self.gain = 1.0  # y units per dF/F unit
        self._n_rois = -1
        self._drawn = (-1, -1)
        self._drawn_pixel = math.nan  # the y size of a pixel the curve was simplified for (view units)
        self._points = 0
        self._gain_at = -math.inf
        self.scene().sigMouseClicked.connect(self._clicked)

    def refresh(self, now: float) -> None:
        m = self.model
        versions = (m.traces.version, m.selection_version)
        pixel = self._pixel_height()
        if not math.isclose(pixel, self._drawn_pixel, rel_tol=0.01):  # zoomed: re-simplify for the new scale
            self._drawn = (-1, self._drawn[1])
        if versions != self._drawn:
            times, dff = m.traces.window(m.trace_seconds)
            n_samples, n_rois = dff.shape
            if n_rois != self._n_rois:
                self._n_rois = n_rois
                self.plot.setYRange(-1, max(n_rois, 1), padding=0.01)
            if now - self._gain_at > 1.0 and n_samples:
                self._update_gain(dff)
                self._gain_at = now
            if versions[0] != self._drawn[0]:
                self._draw_all(times, dff)
            self._draw_selected(times, dff)
            self._drawn = versions
        message = "" if m.online_running(now) else NOT_RUNNING
        if not message and m.traces.n_rois == 0:
            message = "waiting for traces"
        _show_message(self.message, self.plot, message)

    def _update_gain(self, dff: np.ndarray) -> None:
        """Scale so that the large transients span about 1.2 rows (robust, re-estimated each second)."""
        sample = np.abs(dff[:: max(1, len(dff) // 100)])
        scale = float(np.percentile(sample, 99.9)) if sample.size else 0.0
        self.gain = 1.2 / scale if scale > 1e-6 else 1.0

    def _draw_all(self, times: np.ndarray, dff: np.ndarray) -> None:
        # At most one vertex per pixel column (more cannot be seen) and MAX_TRACE_VERTICES in all (drawing
        # cost grows with vertices): 200 ROIs x 900 samples are drawn as 200 x 180 bin averages.
        width_px = max(int(self.plot.vb.width()), 50)
        n_total = len(times) * max(dff.shape[1], 1)
        step = max(math.ceil(len(times) / width_px), math.ceil(n_total / MAX_TRACE_VERTICES))
        times, dff = bin_samples(times, dff, step)
        n_samples, n_rois = dff.shape
        pixel = self._pixel_height()
        self._drawn_pixel = pixel
        if n_samples < 2 or n_rois == 0:
            self.curve.setData([], [])
            self._points = 0
            return
        # Vertices that lie within SIMPLIFY_PX of the line through their neighbours are dropped (a flat
        # baseline needs few): the stroked line stays within 2 x SIMPLIFY_PX of every bin average.
        y = dff.T * np.float32(self.gain) + np.arange(n_rois, dtype=np.float32)[:, None]
        keep = collinear_keep(times, y, SIMPLIFY_PX * pixel) if pixel > 0 else np.ones(y.shape, dtype=bool)
        counts = keep.sum(axis=1)
        connect = np.ones(int(counts.sum()), dtype=bool)
        connect[np.cumsum(counts) - 1] = False
        x = np.broadcast_to(times, y.shape)[keep]
        self._points = n_samples * n_rois
        self.curve.setData(x, y[keep], connect=connect, skipFiniteCheck=True)

    def _pixel_height(self) -> float:
        """The height of one screen pixel in the trace plot's y units (0 if the plot is not laid out)."""
        height = self.plot.vb.height()
        if height <= 0:
            return 0.0
        y0, y1 = self.plot.vb.viewRange()[1]
        return float(y1 - y0) / height

    def _draw_selected(self, times: np.ndarray, dff: np.ndarray) -> None:
        roi = self.model.selected
        if roi is None or roi >= dff.shape[1] or dff.shape[0] < 2:
            self.highlight.setData([], [])
            return
        self.highlight.setData(times, dff[:, roi] * self.gain + roi)

    @property
    def point_count(self) -> int:
        """Points (bin averages) the curve shows, over all ROIs; `vertex_count` of them are stroked."""
        return self._points

    @property
    def vertex_count(self) -> int:
        return 0 if self.curve.xData is None else int(self.curve.xData.shape[0])

    def _clicked(self, event: Any) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        point = self.plot.vb.mapSceneToView(event.scenePos())
        self.click_at(point.y())

    def click_at(self, y: float) -> None:
        """Select the ROI whose trace sits nearest to height y."""
        n = self.model.traces.n_rois
        if n:
            self.trace_clicked.emit(int(min(max(round(y), 0), n - 1)))


# ----------------------------------------------------------------------------------------------- decoding


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
        self.projection = _plot(self, f"Delay-CD projection per trial &nbsp; {key}", 0, 0)
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
        self.accuracy = _plot(self, "Decoding accuracy (cross-validated)", 0, 1)
        self.accuracy.setLabel("bottom", "trial")
        self.accuracy.setYRange(0, 1.02, padding=0)
        self.accuracy.addLegend(offset=(5, 5), labelTextSize="8pt")
        self.accuracy.addItem(
            pg.InfiniteLine(0.5, angle=0, pen=pg.mkPen((120, 120, 120), style=QtCore.Qt.PenStyle.DotLine))
        )
        self.accuracy_curves: dict[str, pg.PlotDataItem] = {}
        self.similarity = _plot(self, "Current CD · stored CDs", 0, 2)
        self.similarity.setLabel("left", "dot product")
        self.similarity.setYRange(-0.1, 1.05, padding=0)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.6, brush=pg.mkBrush(CONTEXT_PALETTE[0]))
        self.similarity.addItem(self.bars)
        self.messages = [_message_item(p) for p in (self.projection, self.accuracy, self.similarity)]
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
            _show_message(item, plot, text)

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
        brushes = _brushes([context_colour(k.split(":")[0].split("@")[0], self.contexts) for k in labels])
        self.bars.setOpts(x=list(range(len(labels))), height=heights, width=0.6, brushes=brushes)
        self.similarity.getAxis("bottom").setTicks([list(enumerate(labels))])
        self.similarity.setXRange(-0.6, max(len(labels), 1) - 0.4, padding=0)
        if heights:
            self.similarity.setYRange(
                min(-0.1, min(heights) - 0.05), max(1.05, max(heights) + 0.05), padding=0
            )


# ----------------------------------------------------------------------------------------------- behaviour


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
        self.outcomes = _plot(p, f"Trial outcomes (last {OUTCOME_WINDOW}) &nbsp; {key}", 0, 0, colspan=2)
        self.outcomes.getAxis("left").setTicks([[(0, "L"), (1, "R"), (2, "early lick"), (3, "free drop")]])
        self.outcomes.setYRange(-0.6, 3.6, padding=0)
        self.outcomes.setLabel("bottom", "trial")
        self.outcome_points = pg.ScatterPlotItem(size=8, pen=None, symbol="s")
        self.flag_points = pg.ScatterPlotItem(size=8, pen=None, symbol="t")
        self.outcomes.addItem(self.outcome_points)
        self.outcomes.addItem(self.flag_points)

        key = f"{swatch(LEFT, '|')} left {swatch(RIGHT, '|')} right"
        self.licks = _plot(p, f"Licks around the go cue &nbsp; {key}", 1, 0)
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

        self.perf = _plot(p, "Perf100 per context", 1, 1)
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

        self.sides = _plot(p, "Perf100 per side", 2, 0)
        self.sides.getAxis("bottom").setTicks([[(0, "left"), (1, "right")]])
        self.sides.setXRange(-0.6, 1.6, padding=0)
        self.sides.setYRange(0, 1.05, padding=0)
        self.side_bars = pg.BarGraphItem(x=[0, 1], height=[0, 0], width=0.6, brushes=_brushes([LEFT, RIGHT]))
        self.sides.addItem(self.side_bars)
        self.side_labels = [pg.TextItem("", color=(230, 230, 230), anchor=(0.5, 1.0)) for _ in range(2)]
        for i, label in enumerate(self.side_labels):
            label.setPos(i, 0.05)
            self.sides.addItem(label)

        self.counts = _plot(p, "Outcomes in this session", 2, 1)
        self.counts.getAxis("bottom").setTicks(
            [[(i, k.replace("_", " ")) for i, k in enumerate(OUTCOME_COLOURS)]]
        )
        self.counts.setXRange(-0.6, len(OUTCOME_COLOURS) - 0.4, padding=0)
        self.count_bars = pg.BarGraphItem(
            x=list(range(len(OUTCOME_COLOURS))),
            height=[0] * len(OUTCOME_COLOURS),
            width=0.6,
            brushes=_brushes(list(OUTCOME_COLOURS.values())),
        )
        self.counts.addItem(self.count_bars)

        p.ci.layout.setRowStretchFactor(0, 2)
        p.ci.layout.setRowStretchFactor(1, 4)
        p.ci.layout.setRowStretchFactor(2, 2)
        self.messages = [_message_item(self.outcomes), _message_item(self.licks), _message_item(self.perf)]
        self._drawn = -1
        self._status_drawn = (-1, -1)
        self.lick_rows = 0

    # ---- drawing

    def refresh(self, now: float) -> None:
        m = self.model
        if m.version != self._drawn:
            self._drawn = m.version
            trials = m.trials
            self._draw_outcomes(trials)
            self._draw_licks(trials)
            self._draw_perf(trials)
            self._draw_sides_and_counts()
        if (m.status_version, m.version) != self._status_drawn:
            self._status_drawn = (m.status_version, m.version)
            self._draw_stage()
        text = "" if m.rows else "waiting for trials"
        for item, plot in zip(self.messages, (self.outcomes, self.licks, self.perf), strict=True):
            _show_message(item, plot, text)

    def _draw_outcomes(self, trials: list[TrialRow]) -> None:
        shown = trials[-OUTCOME_WINDOW:]
        sided = [r for r in shown if r.side in self.OUTCOME_ROWS]
        self.outcome_points.setData(
            [r.trial for r in sided],
            [self.OUTCOME_ROWS[r.side] for r in sided],  # type: ignore[index]
            brush=_brushes([OUTCOME_COLOURS.get(r.outcome, (90, 90, 90)) for r in sided]),
        )
        flags = [(r.trial, 2, EARLY_LICK) for r in shown if r.early_lick]
        flags += [(r.trial, 3, FREE_DROP) for r in shown if r.free_drop]
        self.flag_points.setData(
            [f[0] for f in flags], [f[1] for f in flags], brush=_brushes([f[2] for f in flags])
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

    def _draw_sides_and_counts(self) -> None:
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


# ----------------------------------------------------------------------------------------------- health


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


# ----------------------------------------------------------------------------------------------- controls


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
