"""The monitor's panels: each draws one part of the model and redraws only when that part changed.

Every panel has `refresh(model, now)`, called from the window's display timer; it compares the model's
version counters with the ones it drew last and returns at once when nothing changed. Drawing follows
docs/realtime-notes: the frame is one ImageItem with fixed levels (row-major), all ROI traces are one
PlotCurveItem with offsets and a `connect` array, ROI outlines are one curve as well, and no plot
auto-ranges over live data.

One module per panel family: `header` (subject, session and end criteria), `imaging` (frame, traces as a
heatmap or lines), `registration` (shift and correlation over the session), `psth` (per condition),
`decoding`, `behaviour` (rasters, Perf100, stage line), `timeline` (the last trial's states and lines),
`health` (the status line of every part), `controls` (the control bar); `style` holds the colours and
plot helpers they share.
"""

from rig.monitor.panels.behaviour import BehaviourPanel, stage_text
from rig.monitor.panels.controls import ControlBar
from rig.monitor.panels.decoding import DecodingPanel
from rig.monitor.panels.header import HeaderPanel
from rig.monitor.panels.health import HealthPanel
from rig.monitor.panels.imaging import FramePanel, TracesPanel, closed_outlines
from rig.monitor.panels.psth import PsthPanel
from rig.monitor.panels.registration import RegistrationPanel
from rig.monitor.panels.timeline import TimelinePanel

__all__ = ["BehaviourPanel", "ControlBar", "DecodingPanel", "FramePanel", "HeaderPanel", "HealthPanel",
           "PsthPanel", "RegistrationPanel", "TimelinePanel", "TracesPanel", "closed_outlines", "stage_text"]
