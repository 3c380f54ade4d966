"""A firmware-faithful Bpod state machine emulator (firmware 22 and 23) served on ptys.

`Firmware` is the pure cycle-by-cycle model: it owns the firmware's variables (`FirmwareState`)
and runs them through the firmware's functions (`cycle`, `commands`, `outputs`, `timers`), each a
module that imports only the ones below it. `World` holds its input lines and output observers,
`EmulatorServer` puts it on pseudo-terminals for real clients; `python -m hardware.bpod.emulator`
runs one from the command line.
"""

from hardware.bpod.emulator.engine import Firmware
from hardware.bpod.emulator.server import EmulatorServer
from hardware.bpod.emulator.world import OutputRecord, TrialRecord, World

__all__ = ["EmulatorServer", "Firmware", "OutputRecord", "TrialRecord", "World"]
