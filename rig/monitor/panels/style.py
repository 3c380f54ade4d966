"""The monitor's drawing vocabulary, shared by every panel: one colour scheme (left is blue, right is red),
the display constants, and the small pyqtgraph helpers the panels build their plots with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyqtgraph as pg
from pyqtgraph.Qt import QtGui

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


def context_colour(name: str, order: Sequence[str]) -> tuple[int, int, int]:
    index = list(order).index(name) if name in order else len(order) + hash(name) % 3
    return CONTEXT_PALETTE[index % len(CONTEXT_PALETTE)]


def make_brushes(colours: Sequence[tuple[int, ...]]) -> list[QtGui.QBrush]:
    cache: dict[tuple[int, ...], QtGui.QBrush] = {}
    return [cache.setdefault(c, pg.mkBrush(c)) for c in colours]


def swatch(colour: tuple[int, ...], symbol: str = "■") -> str:
    """A coloured symbol for plot titles (keys in titles never hide the newest data, as legends can)."""
    return f"<span style='color:rgb({colour[0]},{colour[1]},{colour[2]})'>{symbol}</span>"


def add_plot(layout: pg.GraphicsLayoutWidget, title: str, row: int, col: int, **kwargs: Any) -> pg.PlotItem:
    plot = layout.addPlot(row=row, col=col, title=f"<span style='font-size:10pt'>{title}</span>", **kwargs)
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.disableAutoRange()
    return plot


def message_item(plot: pg.PlotItem) -> pg.TextItem:
    """A centred grey note inside a plot ('online module not running', 'waiting for trials')."""
    item = pg.TextItem("", color=(200, 200, 200), anchor=(0.5, 0.5))
    item.setZValue(100)
    plot.addItem(item, ignoreBounds=True)
    return item


def show_message(item: pg.TextItem, plot: pg.PlotItem, text: str) -> None:
    if item.textItem.toPlainText() != text:
        item.setText(text)
    if text:
        (x0, x1), (y0, y1) = plot.vb.viewRange()
        item.setPos((x0 + x1) / 2, (y0 + y1) / 2)
    item.setVisible(bool(text))
