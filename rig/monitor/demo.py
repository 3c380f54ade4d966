"""`rig monitor --demo`: a short simulated session in this process, watched by the monitor.

The session (the simulated rig at `speed` times real time, data in a temporary folder) runs in a
background thread on free loopback ports, and starts the online module beside it as `rig run` does. With
`--screenshot FILE.png` the window renders (offscreen when there is no display) for `seconds`, is saved,
and the session is stopped cleanly.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from rig.free_endpoints import free_network_overrides
from rig.settings import load_settings

log = logging.getLogger(__name__)

DEMO_SPEED = 20.0
DEMO_SECONDS = 8.0


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
    settings = load_settings(settings_path, overrides=free_network_overrides())
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
    if failures:
        return 1
    return status
