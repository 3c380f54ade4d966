"""`rig monitor --demo`: a short simulated session in this process, watched by the monitor.

The session (the simulated rig at `speed` times real time, data in a temporary folder) runs in a
background thread on free loopback ports; the online module runs beside it as its own process when it is
installed (`python -m online`), otherwise the imaging panels say that it is not running. With
`--screenshot FILE.png` the window renders (offscreen when there is no display) for `seconds`, is saved,
and the session is stopped cleanly.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rig.settings import Settings, dump_settings, load_settings

log = logging.getLogger(__name__)

DEMO_SPEED = 20.0
DEMO_SECONDS = 8.0
ENDPOINTS = ("events_pub", "control", "frames", "frames_display", "online_results")


def free_endpoints() -> dict[str, str]:
    """Loopback TCP endpoints on ports that are free now, for every `network` entry."""
    ports: list[int] = []
    sockets = []
    try:
        for _ in ENDPOINTS:  # hold them all open so that no two are the same
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in sockets:
            s.close()
    return {f"network.{name}": f"tcp://127.0.0.1:{port}" for name, port in zip(ENDPOINTS, ports, strict=True)}


def online_module() -> str | None:
    """The module that runs the online processor (`python -m ...`), or None when it is not installed."""
    for module, run_as in (("online.__main__", "online"), ("online.process", "online.process")):
        try:
            if importlib.util.find_spec(module) is not None:
                return run_as
        except (ImportError, ValueError):
            continue
    return None


def start_online(settings: Settings, folder: Path) -> subprocess.Popen[bytes] | None:
    module = online_module()
    if module is None or not settings.online.enabled:
        return None
    settings_file = folder / "demo-settings.yaml"
    settings_file.write_text(dump_settings(settings), encoding="utf-8")
    command = [sys.executable, "-m", module, "--settings", str(settings_file)]
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as exc:
        log.warning("could not start the online module: %s", exc)
        return None
    log.info("online module started: %s", " ".join(command))
    return process


def stop_online(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode not in (0, -15) and stderr.strip():
        log.warning("online module exited with %s: %s", process.returncode, stderr.strip().splitlines()[-1])


def run_demo(
    settings_path: Path | None = None,
    *,
    seconds: float | None = None,
    screenshot: Path | None = None,
    speed: float = DEMO_SPEED,
) -> int:
    """Run the demo; returns the exit status (0 when the window ran and the screenshot, if any, was saved)."""
    from rig.monitor.window import run_monitor  # Qt is imported only here
    from rig.session import RunOptions, SessionRunner

    if screenshot is not None and seconds is None:
        seconds = DEMO_SECONDS
    overrides: dict[str, object] = dict(free_endpoints())
    if online_module() is None:  # nobody would take frames on the lossless path
        log.info("online module not installed: the imaging panels show frames only")
        overrides["online.enabled"] = False
    settings = load_settings(settings_path, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="rig-monitor-demo-") as tmp:
        runner = SessionRunner(
            settings,
            RunOptions(
                subject="demo", speed=speed, data_root=Path(tmp), handle_signals=False, status_stream=None
            ),
        )
        failures: list[BaseException] = []

        def session() -> None:
            try:
                runner.run()
            except BaseException as exc:  # reported after the window closes
                failures.append(exc)
                log.exception("the demo session failed")

        thread = threading.Thread(target=session, name="demo-session", daemon=True)
        online = start_online(settings, Path(tmp))
        thread.start()
        try:
            status = run_monitor(settings, screenshot=screenshot, seconds=seconds)
        finally:
            runner.request_stop("the end of the demo")
            started = time.monotonic()
            thread.join(timeout=20)
            if thread.is_alive():
                log.error("the demo session did not stop within %.0f s", time.monotonic() - started)
                status = 1
            stop_online(online)
    if failures:
        return 1
    return status
