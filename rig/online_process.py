"""The online module as a child process of the rig: started with the session, stopped with it.

    with OnlineProcess(settings, session_folder, subject_dir, app_port=sim.app_port) as online:
        ...  # run trials; online.running, online.pid
    online.exit_status  # 0 after a clean stop

`start()` runs `python -m online --settings S --session DIR --subject-dir DIR [--app-port P] [--rois R]
--exit-with-parent` and waits until the child prints `ready` (its sockets are bound and connected), or
raises `OnlineProcessError` with the tail of its log if it exits or stays silent for `ready_timeout_s`.
The child's stderr (its log) goes to `<session>/online.log`.

`stop()` (also at exit) sends SIGTERM, waits `stop_timeout_s` for the child to finalise its trials and close
its files, then kills it; `exit_status` keeps the return code (negative: killed by that signal) and a
non-zero status is logged as an error.

Dying with the parent: `--exit-with-parent` makes the child ask the kernel (prctl PR_SET_PDEATHSIG) for
SIGTERM when its parent dies, so a rig killed with `kill -9` leaves no orphan. Linux ties that signal to
the THREAD that started the child: start `OnlineProcess` from a thread that lives as long as the session
(the session's main thread), not from a short-lived worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rig.errors import UserError
from rig.settings import Settings, dump_settings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
LOG_FILE = "online.log"
READY_LINE = "ready"


class OnlineProcessError(UserError):
    """The online module did not start (its log's last lines are in the message)."""


class OnlineProcess:
    """Starts, watches and stops `python -m online` for one session (see the module docstring)."""

    def __init__(self, settings: Settings, session_folder: str | Path, subject_dir: str | Path | None,
                 app_port: str | None = None, settings_path: str | Path | None = None, *,
                 rois: str | Path | None = None, ready_timeout_s: float = 60.0,
                 stop_timeout_s: float = 10.0, log_level: str = "INFO", python: str = sys.executable,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.session_folder = Path(session_folder).resolve()
        self.subject_dir = Path(subject_dir).resolve() if subject_dir is not None else None
        self.app_port = app_port
        self.settings_path = Path(settings_path).resolve() if settings_path is not None else None
        self.rois = Path(rois).resolve() if rois is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_level = log_level
        self.python = python
        self.extra_args = extra_args
        self.exit_status: int | None = None
        self.log_path = self.session_folder / LOG_FILE
        self._proc: subprocess.Popen[str] | None = None
        self._log_file: IO[str] | None = None
        self._temp_settings: Path | None = None
        self._ready = threading.Event()
        self._stdout_thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, settings_path: Path) -> list[str]:
        cmd = [self.python, "-m", "online", "--settings", str(settings_path), "--session",
               str(self.session_folder), "--exit-with-parent", "--log-level", self.log_level]
        if self.subject_dir is not None:
            cmd += ["--subject-dir", str(self.subject_dir)]
        if self.app_port:
            cmd += ["--app-port", self.app_port]
        if self.rois is not None:
            cmd += ["--rois", str(self.rois)]
        return cmd + list(self.extra_args)

    def _settings_file(self) -> Path:
        if self.settings_path is not None:
            return self.settings_path
        fd, name = tempfile.mkstemp(prefix=".online-settings.", suffix=".yaml", dir=self.session_folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_settings(self.settings))
        self._temp_settings = Path(name)
        return self._temp_settings

    def start(self) -> OnlineProcess:
        if self._proc is not None:
            raise RuntimeError("the online process is already started")
        self.session_folder.mkdir(parents=True, exist_ok=True)
        cmd = self.command(self._settings_file())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        log.info("starting the online module: %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._log_file, text=True, env=env)
        self._stdout_thread = threading.Thread(target=self._read_stdout, name="online-stdout", daemon=True)
        self._stdout_thread.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None:
                status = self._proc.returncode
                self._cleanup(status)
                raise OnlineProcessError(f"the online module exited with status {status} before it was "
                                         f"ready; its log ({self.log_path}) ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OnlineProcessError(f"the online module was not ready within {self.ready_timeout_s:g} "
                                         f"s; its log ({self.log_path}) ends with:\n{self.log_tail()}")
        log.info("online module ready (pid %d)", self._proc.pid)
        return self

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            text = line.rstrip("\n")
            if text.strip() == READY_LINE:
                self._ready.set()
            elif text:
                log.info("online: %s", text)

    def stop(self) -> int | None:
        """SIGTERM, wait, then kill; returns (and keeps in `exit_status`) the child's return code."""
        proc = self._proc
        if proc is None:
            return self.exit_status
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.error("the online module did not stop within %g s of SIGTERM: killing it",
                          self.stop_timeout_s)
                proc.kill()
                proc.wait()
        self._cleanup(proc.returncode)
        return self.exit_status

    def _cleanup(self, status: int | None) -> None:
        self.exit_status = status
        if self._stdout_thread is not None:
            self._stdout_thread.join(timeout=2)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._temp_settings is not None:
            self._temp_settings.unlink(missing_ok=True)
            self._temp_settings = None
        if status == 0:
            log.info("online module exited cleanly")
        elif status is not None and status < 0:
            log.error("online module ended by signal %s", signal.Signals(-status).name)
        elif status is not None:
            log.error("online module exited with status %d; see %s", status, self.log_path)
        self._proc = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> OnlineProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        """For session.json."""
        return {"pid": self.pid, "exit_status": self.exit_status, "log": str(self.log_path),
                "app_port": self.app_port}
