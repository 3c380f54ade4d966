"""Serve an emulated Zaber controller on a pty: `python -m hardware.zaber.emulator --axes 2 --speed 10`.

Prints `port: <path>` on stdout, then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from hardware.zaber.emulator.device import Device
from hardware.zaber.emulator.server import ZaberEmulatorServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware.zaber.emulator",
                                     description="Serve an emulated Zaber controller (ASCII) on a pty.")
    parser.add_argument("--address", type=int, default=1, help="device address (1-99)")
    parser.add_argument("--axes", type=int, default=1, help="number of motor axes")
    parser.add_argument("--speed", type=float, default=1.0, help="stage seconds per host second")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with ZaberEmulatorServer(Device(address=args.address, axes=args.axes), speed=args.speed) as server:
        print(f"port: {server.port}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
