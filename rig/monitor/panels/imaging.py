"""Imaging panels: the newest frame with its registration shift and ROI outlines, and every ROI's dF/F
stacked as one curve (bounded vertices per redraw, so paint time stays flat as ROIs grow)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from rig.monitor.model import ImagingModel
from rig.monitor.panels.style import (
    HIGHLIGHT,
    NOT_RUNNING,
    OUTLINE,
    TRACE,
    add_plot,
    message_item,
    show_message,
)

MAX_TRACE_VERTICES = 40_000  # vertices of the stacked-trace curve per redraw (bounds the paint time)
SIMPLIFY_PX = 0.25  # a trace vertex within this many pixels of its neighbours' line is not stroked


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
        self.plot = add_plot(self, "Registered frame", 0, 0)
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
        self.message = message_item(self.plot)
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
        show_message(self.message, self.plot, message)
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
    """Every ROI's dF/F over the last seconds of the shown plane: as a heatmap (ROIs x time, sorted by
    selectivity, by ROI number or in a given order), or stacked (ROI i around y = i) as ONE curve. The
    selected ROI is marked (its row, or its trace drawn again on top); a click on a row or a trace selects
    it."""

    trace_clicked = QtCore.Signal(int)
    MODES = ("heatmap", "lines")
    ORDERS = ("selectivity", "ROI number")

    def __init__(self, model: ImagingModel) -> None:
        super().__init__()
        self.model = model
        self.plot = add_plot(self, f"ROI dF/F, last {model.trace_seconds:g} s", 0, 0)
        self.plot.setLabel("left", "ROI")
        self.plot.setLabel("bottom", "time (s)")
        self.plot.vb.setMouseEnabled(x=False, y=True)
        self.plot.setXRange(-model.trace_seconds, 0, padding=0.01)
        self.plot.setYRange(-1, 10, padding=0)
        self.curve = StackedCurveItem(pen=pg.mkPen(TRACE, width=1), skipFiniteCheck=True)
        self.highlight = pg.PlotCurveItem(pen=pg.mkPen(HIGHLIGHT, width=2))
        self.highlight.setZValue(10)
        self.heatmap = pg.ImageItem(axisOrder="row-major")
        self.heatmap.setLookupTable(pg.colormap.get("inferno").getLookupTable(nPts=256))
        self.heatmap.setZValue(-5)
        self.plot.addItem(self.heatmap)
        self.plot.addItem(self.curve)
        self.plot.addItem(self.highlight)
        _cache_static(self.plot.getAxis("left"), self.plot.getAxis("bottom"))
        self.message = message_item(self.plot)
        self.mode = "heatmap"
        self.order_by = "selectivity"
        self.custom_order: np.ndarray | None = None
        self.order = np.empty(0, dtype=int)  # row i of the heatmap shows ROI order[i]
        self._order_key: tuple[Any, ...] = ()
        self.gain = 1.0  # y units per dF/F unit
        self.heat_levels = (0.0, 1.0)
        self._n_rois = -1
        self._drawn: tuple[Any, ...] = ()
        self._drawn_pixel = math.nan  # the y size of a pixel the curve was simplified for (view units)
        self._points = 0
        self._gain_at = -math.inf
        self.scene().sigMouseClicked.connect(self._clicked)

    # ---- choices

    def set_mode(self, mode: str) -> None:
        """heatmap or lines."""
        if mode in self.MODES and mode != self.mode:
            self.mode = mode
            self._drawn = ()
            self._n_rois = -1
            self.refresh(0.0)

    def set_order(self, order_by: str | None = None, custom: np.ndarray | None = None) -> None:
        """Sort the heatmap by selectivity or ROI number, or show the ROIs in a given order (`custom`)."""
        if order_by in self.ORDERS:
            self.order_by = order_by
        self.custom_order = None if custom is None else np.asarray(custom, dtype=int)
        self._order_key = ()
        self._drawn = ()
        self.refresh(0.0)

    def _current_order(self, n_rois: int) -> np.ndarray:
        m = self.model
        psth = m.shown.psth
        key = (n_rois, self.order_by, psth.version, m.plane_version, id(self.custom_order))
        if key != self._order_key:
            self._order_key = key
            custom = self.custom_order
            if custom is not None and len(custom) and custom.min() >= 0 and custom.max() < n_rois:
                self.order = custom
            elif self.order_by == "selectivity" and psth.n_rois == n_rois:
                self.order = np.argsort(-psth.selectivity(), kind="stable")  # left-preferring on top
            else:
                self.order = np.arange(n_rois)
        return self.order

    # ---- drawing

    def refresh(self, now: float) -> None:
        m = self.model
        heat = self.mode == "heatmap"
        versions = (m.traces.version, m.selection_version, m.plane_version, self.mode)
        pixel = self._pixel_height()
        if not heat and not math.isclose(pixel, self._drawn_pixel, rel_tol=0.01):  # zoomed: re-simplify
            self._drawn = ()
        if versions != self._drawn:
            times, dff = m.traces.window(m.trace_seconds)
            n_samples, n_rois = dff.shape
            if n_rois != self._n_rois:
                self._n_rois = n_rois
                self.plot.setYRange(-1 if not heat else 0, max(n_rois, 1), padding=0.01)
                self.plot.setLabel("left", "ROI (sorted)" if heat else "ROI")
            if now - self._gain_at > 1.0 and n_samples:
                self._update_gain(dff)
                self._gain_at = now
            self.curve.setVisible(not heat)
            self.heatmap.setVisible(heat)
            if heat:
                self._draw_heatmap(times, dff)
            elif not self._drawn or versions[0] != self._drawn[0] or versions[2:] != self._drawn[2:]:
                self._draw_all(times, dff)
            self._draw_selected(times, dff)
            self._drawn = versions
        message = "" if m.online_running(now) else NOT_RUNNING
        if not message and m.traces.n_rois == 0:
            message = "waiting for traces"
        show_message(self.message, self.plot, message)

    def _draw_heatmap(self, times: np.ndarray, dff: np.ndarray) -> None:
        n_samples, n_rois = dff.shape
        if n_samples < 2 or n_rois == 0:
            self.heatmap.clear()
            self._points = 0
            return
        width_px = max(int(self.plot.vb.width()), 50)
        times, dff = bin_samples(times, dff, max(1, math.ceil(len(times) / width_px)))
        order = self._current_order(n_rois)
        image = np.ascontiguousarray(dff.T[order])
        self._points = image.size
        self.heatmap.setImage(image, levels=self.heat_levels, autoLevels=False)
        t0, t1 = float(times[0]), float(times[-1])
        step = (t1 - t0) / max(len(times) - 1, 1)
        self.heatmap.setRect(QtCore.QRectF(t0 - step / 2, 0, t1 - t0 + step, n_rois))

    def _update_gain(self, dff: np.ndarray) -> None:
        """Scale so that the large transients span about 1.2 rows, and the heatmap's colours from the 1st
        to the 99.5th percentile (robust, re-estimated each second)."""
        sample = dff[:: max(1, len(dff) // 100)]
        if not sample.size:
            return
        scale = float(np.percentile(np.abs(sample), 99.9))
        self.gain = 1.2 / scale if scale > 1e-6 else 1.0
        low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
        self.heat_levels = (low, max(high, low + 1e-3))

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
        if self.mode == "heatmap":  # a frame around the selected ROI's row
            row = int(np.flatnonzero(self._current_order(dff.shape[1]) == roi)[0])
            t0, t1 = float(times[0]), float(times[-1])
            self.highlight.setData([t0, t1, t1, t0, t0], [row, row, row + 1, row + 1, row])
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
        """Select the ROI whose trace (or heatmap row) is at height y."""
        n = self.model.traces.n_rois
        if not n:
            return
        if self.mode == "heatmap":
            row = int(min(max(math.floor(y), 0), n - 1))
            self.trace_clicked.emit(int(self._current_order(n)[row]))
        else:
            self.trace_clicked.emit(int(min(max(round(y), 0), n - 1)))
