"""The monitoring GUI (`rig monitor`): the session's header, live frame, ROI traces, registration, PSTHs,
preparatory decoding, behaviour, the last trial's timeline, health and session controls (the manual valve
among them), in its own process so that closing or crashing it never touches the session.

This module stays free of Qt: the session process imports it only to start and stop the GUI process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def display_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a window can be shown here (an X11 or Wayland display is set)."""
    env = os.environ if environ is None else environ
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _die_with(parent_pid: int) -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def monitor_command(settings_path: Path | None) -> list[str]:
    command = [sys.executable, "-m", "rig", "--log-level", "WARNING", "monitor"]
    if settings_path is not None:
        command += ["--settings", str(settings_path)]
    return command


def start_monitor_process(
    settings_path: Path | None, command: Sequence[str] | None = None
) -> subprocess.Popen[bytes] | None:
    """Start the monitor in a separate process that dies with this one; None if it cannot start.

    The child gets its own session (terminal Ctrl-C goes to the rig only) and SIGTERM when its parent
    dies, so a killed session never leaves a window behind; `stop_monitor_process` ends it normally.
    """
    argv = list(command) if command is not None else monitor_command(settings_path)
    parent = os.getpid()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: _die_with(parent),
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("could not start the monitor (%s); the session runs without it", exc)
        return None
    log.info("monitor started (pid %d)", process.pid)
    return process


def stop_monitor_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 3.0) -> None:
    """Terminate the monitor at the end of the session (kill it if it does not close in time)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)
