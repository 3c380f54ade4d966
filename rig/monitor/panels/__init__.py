"""The monitor's panels: each draws one part of the model and redraws only when that part changed.

Every panel has `refresh(model, now)`, called from the window's display timer; it compares the model's
version counters with the ones it drew last and returns at once when nothing changed. Drawing follows
docs/realtime-notes: the frame is one ImageItem with fixed levels (row-major), all ROI traces are one
PlotCurveItem with offsets and a `connect` array, ROI outlines are one curve as well, and no plot
auto-ranges over live data.

One module per panel family: `imaging` (frame, traces), `decoding`, `behaviour` (rasters, Perf100,
stage line), `health` (the status line of every part), `controls` (the control bar); `style` holds the
colours and plot helpers they share.
"""

from rig.monitor.panels.behaviour import BehaviourPanel, stage_text
from rig.monitor.panels.controls import ControlBar
from rig.monitor.panels.decoding import DecodingPanel
from rig.monitor.panels.health import HealthPanel
from rig.monitor.panels.imaging import FramePanel, TracesPanel, closed_outlines

__all__ = ["BehaviourPanel", "ControlBar", "DecodingPanel", "FramePanel", "HealthPanel", "TracesPanel",
           "closed_outlines", "stage_text"]
