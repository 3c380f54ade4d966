"""An emulated Zaber controller speaking the ASCII protocol on a pty.

`Device` is the pure model (axes, settings, trapezoid moves on the stage's clock, the reply to each
command); `ZaberEmulatorServer` puts it on a pseudo-terminal for the real client; `python -m
hardware.zaber.emulator` runs one from the command line.
"""

from hardware.zaber.emulator.device import Axis, Device
from hardware.zaber.emulator.server import SpeedClock, ZaberEmulatorServer

__all__ = ["Axis", "Device", "SpeedClock", "ZaberEmulatorServer"]
