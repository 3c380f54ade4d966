"""Frames out of a frame source (ScanImage adapters, the simulated microscope) to their receivers.

`publisher` (`FramePublisher`: one frame to the lossless path and the display path) and `lossless` (the
two lossless paths: `WaitingLosslessPath` holds the source back, `QueuedLosslessPath` never does).
"""
