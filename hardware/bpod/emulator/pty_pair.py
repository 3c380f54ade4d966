"""A pseudo-terminal pair that an emulator serves a device on: unmodified clients open `path`."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pty
import struct
import termios
import tty

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 1 << 20


class PtyPair:
    """One pty pair; the slave stays open here so the master never sees EIO."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.pending = bytearray()

    def unread(self) -> int:
        """Bytes written to the client that nobody has read yet."""
        buf = fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]

    def flush(self) -> None:
        while self.pending:
            try:
                n = os.write(self.master, self.pending)
            except BlockingIOError:
                return
            del self.pending[:n]

    def queue(self, data: bytes) -> None:
        if not data:
            return
        self.pending += data
        if len(self.pending) > MAX_PENDING_BYTES:
            logger.warning("%s: nobody reads; dropping %d bytes", self.path, len(self.pending))
            self.pending.clear()

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
