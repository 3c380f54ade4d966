"""The session's watch over the processes it starts: the online module, the frame source (the simulated
microscope's rendering process, or a ScanImage thread) and the monitoring window.

A `ChildWatcher` thread looks at each of them every `interval_s`:

- the online module: `OnlineProcess.check` (a dead one is restarted, up to online.max_restarts, and the
  gap is recorded; see rig/online_child.py);
- the frame source: its `health()["error"]` (the simulated microscope's process ending, a ScanImage
  thread failing) is logged once and recorded as an event; the session goes on without frames;
- the monitor (optional): its exit is logged and recorded; it never stops the session.

Events (`describe()["events"]`) go into session.json under "children"; `status()` is the short form for
`rig status` and the monitor. The watcher never writes files: the session thread calls `report()` (at each
trial end), which runs `on_change` there when something changed, so session.json is rewritten by the one
thread that writes it. The thread lives until `stop()`, after the online module has stopped, since the
online module's replacements are started from it (PR_SET_PDEATHSIG follows the starting thread).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rig.imaging import ImagingSource
from rig.online_child import OnlineProcess

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.2


class ChildWatcher:
    """Watches the session's children from its own thread (see the module docstring)."""

    def __init__(self, *, online: OnlineProcess | None = None, imaging: ImagingSource | None = None,
                 monitor: subprocess.Popen[bytes] | None = None,
                 trial: Callable[[], int | None] = lambda: None, on_change: Callable[[], None] | None = None,
                 interval_s: float = WATCH_INTERVAL_S) -> None:
        self.online = online
        self.imaging = imaging
        self.monitor = monitor
        self.trial = trial
        self.on_change = on_change
        self.interval_s = interval_s
        self.events: list[dict[str, Any]] = []
        self._imaging_error: str | None = None
        self._monitor_status: int | None = None
        self._changed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ChildWatcher:
        self._thread = threading.Thread(target=self._run, name="child-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (after the children are stopped: a stopped child is not a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> ChildWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad look
                log.exception("watching the session's processes failed once; watching on")

    def check(self) -> bool:
        """One look at every child; True when something changed."""
        trial = self.trial()
        changed = self.online.check(trial) if self.online is not None else False
        changed = self._check_imaging(trial) or changed
        changed = self._check_monitor(trial) or changed
        if changed:
            with self._lock:
                self._changed = True
        return changed

    def _event(self, child: str, event: str, trial: int | None, **details: Any) -> None:
        with self._lock:
            self.events.append({"child": child, "event": event,
                                "host_time": datetime.now().isoformat(timespec="milliseconds"),
                                "trial": trial, **details})

    def _check_imaging(self, trial: int | None) -> bool:
        if self.imaging is None or self._imaging_error is not None:
            return False
        error = self.imaging.health().get("error")
        if not error:
            return False
        self._imaging_error = str(error)
        log.error("frame source (%s): %s; the session goes on without frames", self.imaging.kind, error)
        self._event("imaging", "died", trial, source=self.imaging.kind, error=self._imaging_error)
        return True

    def _check_monitor(self, trial: int | None) -> bool:
        if self.monitor is None or self._monitor_status is not None:
            return False
        status = self.monitor.poll()
        if status is None:
            return False
        self._monitor_status = status
        if status == 0:
            log.info("the monitor was closed; the session goes on")
        else:
            log.warning("the monitor (pid %d) ended with status %d; the session goes on without it "
                        "(`rig monitor` opens it again)", self.monitor.pid, status)
        self._event("monitor", "closed" if status == 0 else "died", trial, pid=self.monitor.pid,
                    exit_status=status)
        return True

    def report(self) -> None:
        """From the session's thread: run `on_change` if anything changed since the last call."""
        with self._lock:
            changed, self._changed = self._changed, False
        if changed and self.on_change is not None:
            self.on_change()

    def status(self) -> dict[str, Any]:
        """Short, for `rig status` and the monitor's health line."""
        with self._lock:
            events = list(self.events)
        return {"online": self.online.status() if self.online is not None else None,
                "imaging": {"error": self._imaging_error} if self.imaging is not None else None,
                "monitor": ({"running": self._monitor_status is None, "exit_status": self._monitor_status}
                            if self.monitor is not None else None),
                "events": len(events)}

    def describe(self) -> dict[str, Any]:
        """For session.json (the online module's gaps are under "online")."""
        with self._lock:
            return {"events": list(self.events), "imaging_error": self._imaging_error,
                    "monitor_exit_status": self._monitor_status}
