"""The Bpod for the bench tools (`rig calibrate-valves`, `rig check-hardware`): the real one on its port,
or, with bpod.port `emulator`, the emulator on a pty, with its world, so the same tool code runs on both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer, World
from hardware.bpod.modules.hifi_emulator import HiFiEmulator
from rig.settings import Settings

log = logging.getLogger(__name__)

EMULATOR_PORT = "emulator"
HIFI_MODULE_PORT = 1
"""The Bpod module port the emulated HiFi is plugged into, so it is HiFi1 (the simulated rig, the tools)."""
"""bpod.port that starts the built-in emulator instead of opening a serial device."""


@dataclass(frozen=True)
class BenchBpod:
    """A connected Bpod; ``world`` is the emulator's lines and output record (None on a real Bpod)."""

    client: BpodClient
    world: World | None
    hifi_port: str | None = None
    """The emulated HiFi module's own USB pty (on the emulator with sound.device: hifi), else None."""


@contextmanager
def open_bench_bpod(settings: Settings, speed: float | None = None) -> Iterator[BenchBpod]:
    """Connect the Bpod of ``settings.bpod`` (starting the emulator at ``speed``, default
    bpod.emulator_speed, when the port is `emulator`); closed and stopped on exit. A missing device,
    not a Bpod, or unsupported firmware raises BpodConnectionError with one sentence."""
    bpod = settings.bpod
    server: EmulatorServer | None = None
    port = bpod.port
    hifi: HiFiEmulator | None = None
    if port == EMULATOR_PORT:
        server = EmulatorServer(firmware=bpod.firmware, model=bpod.model,
                                speed=speed if speed is not None else bpod.emulator_speed)
        if settings.sound.device == "hifi":  # plugged in before the client connects, as on the rig
            hifi = HiFiEmulator().start()
            server.world.attach_module(HIFI_MODULE_PORT, hifi)
        server.start()
        port = server.port
        log.info("Bpod emulator (model %s, firmware %d) on %s", bpod.model, bpod.firmware, port)
    try:
        client = BpodClient(port, timeout_s=bpod.timeout_s)
        client.connect()
        try:
            yield BenchBpod(client, server.world if server is not None else None,
                            hifi.port if hifi is not None else None)
        finally:
            client.close()
    finally:
        if server is not None:
            server.stop()
        if hifi is not None:
            hifi.stop()
