"""Serve an emulated Bpod on ptys: `python -m hardware.bpod.emulator --firmware 23`.

Prints `main: <path>` (and `app: <path>` on firmware 23, `analog: <path>` on the r2+) on stdout,
then serves until SIGINT or SIGTERM. With --exit-with-parent the kernel sends SIGTERM when the
parent dies, even after a `kill -9` of the parent, so a crashed rig never leaves an orphan
emulator behind.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import threading
from types import FrameType

from hardware.bpod.emulator.server import EmulatorServer

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hardware.bpod.emulator",
                                     description="Serve an emulated Bpod state machine on ptys.")
    parser.add_argument("--firmware", type=int, choices=(22, 23), default=23)
    parser.add_argument("--model", default="r2", choices=("r2", "r2.5", "r2plus", "r1"))
    parser.add_argument("--speed", type=float, default=1.0, help="virtual seconds per host second")
    parser.add_argument("--faithful-quirks", action="store_true",
                        help="reproduce firmware bugs a client must survive (a queued machine not started)")
    parser.add_argument("--usb-frames", action="store_true",
                        help="deliver bytes at USB frame boundaries (1 ms on r1/r2, 125 us on r2.5/r2+)")
    parser.add_argument("--exit-with-parent", action="store_true", help="exit when the parent process dies")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.exit_with_parent:
        _die_with_parent()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with EmulatorServer(firmware=args.firmware, model=args.model, speed=args.speed,
                        faithful_quirks=args.faithful_quirks, usb_frames=args.usb_frames) as server:
        print(f"main: {server.port}", flush=True)
        if server.app_port:
            print(f"app: {server.app_port}", flush=True)
        if server.analog_port:
            print(f"analog: {server.analog_port}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
