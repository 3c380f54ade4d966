"""The online module as a child process of the rig: started with the session, watched, restarted if it
dies, stopped with it.

    with OnlineProcess(settings, session_folder, subject_dir, app_port=sim.app_port) as online:
        ...  # run trials; online.running, online.pid; online.check(trial) from a watcher, often
    online.exit_status  # 0 after a clean stop

`start()` writes the online settings (`online_process_settings`: the online section and what the module
needs of the others, as JSON in `<session>/online-settings.json`) and runs `python -m online --settings
<that file> --session DIR --subject-dir DIR [--app-port P] [--rois R] --exit-with-parent`, then waits until
the child prints `ready` (its sockets are bound and connected), or raises `OnlineProcessError` with the tail
of its log if it exits or stays silent for `ready_timeout_s`.
The child's stderr (its log) goes to `<session>/online.log`.

Watching (`check(trial)`, called every fraction of a second by `rig.children.ChildWatcher`): a child that
exited while the session runs is an `OnlineGap` (host time it was found dead, its exit status, the trial
then running) and is restarted, at most `max_restarts` times (online.max_restarts), without waiting for it:
the session's trials never wait on a restart. The new child takes the ROIs and reference the first one
saved in the session folder (`--rois <session>`), so its traces continue the same files over the same
ROIs; its decoders start again from the trials after the gap. The gap closes when the new child prints
`ready`. Frames lost in the gap are counted from the session's traces index, which records each frame's
number on the lossless path: the numbers missing between the last frame the dead child wrote and the first
the new one wrote (counted once the new child has written one; frames the source could not queue meanwhile
are among them). Trials affected: from the trial of the last frame before the gap (or the trial running
when it was found) to the trial running when the new child was ready, or of its first frame.

`stop()` (also at exit) sends SIGTERM, waits `stop_timeout_s` for the child to finalise its trials and close
its files, then kills it; `exit_status` keeps the return code (negative: killed by that signal) and a
non-zero status is logged as an error.

Dying with the parent: `--exit-with-parent` makes the child ask the kernel (prctl PR_SET_PDEATHSIG) for
SIGTERM when its parent dies, so a rig killed with `kill -9` leaves no orphan. Linux ties that signal to
the THREAD that started the child: start `OnlineProcess` from a thread that lives as long as the session
(the session's main thread), and call `check` (which starts replacements) from one that lives until
`stop()` (the watcher's thread, stopped after the online module).
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
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from online.settings import OnlineLinkSettings, OnlineProcessSettings
from online.store import ROIS_FILE, index_length, read_index
from rig.errors import UserError
from rig.settings import Settings

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
LOG_FILE = "online.log"
READY_LINE = "ready"
ONLINE_SETTINGS_FILE = "online-settings.json"


class OnlineProcessError(UserError):
    """The online module did not start (its log's last lines are in the message)."""


def _now() -> str:
    return datetime.now().isoformat(timespec="milliseconds")


def online_process_settings(settings: Settings) -> OnlineProcessSettings:
    """What the online module is started with, from the rig's validated settings (online/settings.py)."""
    net = settings.network
    link = OnlineLinkSettings(events_pub=net.events_pub, control=net.control, frames=net.frames,
                              online_results=net.online_results, bind_loopback_only=net.bind_loopback_only,
                              keys=net.keys, authorized_keys=net.authorized_keys)
    return OnlineProcessSettings(online=settings.online,
                                 frame_rate_hz=settings.imaging.frame_rate_hz / settings.imaging.planes,
                                 planes=settings.imaging.planes,
                                 channel=settings.imaging.functional_channel - 1,
                                 data_root=Path(settings.data.root), network=link)


def write_online_settings(settings: Settings, path: Path) -> Path:
    """`online_process_settings` as the JSON file `python -m online --settings` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(online_process_settings(settings).model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def run_online_module(settings: Settings, command: list[str], options: list[str]) -> int:
    """`python -m online COMMAND --settings <online settings of `settings`> OPTIONS` in the foreground;
    returns its exit status. Ctrl-C reaches the child itself (it finishes its files before it exits), and
    SIGTERM is passed on to it."""
    with tempfile.TemporaryDirectory(prefix="rig-online-") as folder:
        path = write_online_settings(settings, Path(folder) / ONLINE_SETTINGS_FILE)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "online", *command, "--settings", str(path), *options],
                                env=env)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)


@dataclass
class OnlineGap:
    """A time the session ran without an online module: from finding its child dead to a new one ready."""

    started: str
    """Host time the dead child was found (it died at most one watch interval before)."""
    exit_status: int | None
    trial_at_death: int | None
    ended: str | None = None
    """Host time the restarted child was ready; None while it is not (or if it was not restarted)."""
    restarted: bool = False
    trial_at_ready: int | None = None
    frames_lost: int | None = None
    """Frames no online module processed; None until the restarted child has written its first frame."""
    trials_affected: list[int] = field(default_factory=list)
    seconds: float | None = None
    note: str | None = None
    rows_before: int = 0
    """Frames in the traces index when the child was found dead (all written by the dead child)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "rows_before"}


class OnlineProcess:
    """Starts, watches and stops `python -m online` for one session (see the module docstring)."""

    def __init__(self, settings: Settings, session_folder: str | Path, subject_dir: str | Path | None,
                 app_port: str | None = None, *,
                 rois: str | Path | None = None, ready_timeout_s: float = 60.0,
                 stop_timeout_s: float = 10.0, log_level: str = "INFO", python: str = sys.executable,
                 extra_args: tuple[str, ...] = (), max_restarts: int | None = None) -> None:
        self.settings = settings
        self.session_folder = Path(session_folder).resolve()
        self.subject_dir = Path(subject_dir).resolve() if subject_dir is not None else None
        self.app_port = app_port
        self.rois = Path(rois).resolve() if rois is not None else None
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_level = log_level
        self.python = python
        self.extra_args = extra_args
        self.max_restarts = settings.online.max_restarts if max_restarts is None else max_restarts
        self.exit_status: int | None = None
        self.log_path = self.session_folder / LOG_FILE
        self.gaps: list[OnlineGap] = []
        self.restarts = 0
        self.pids: list[int] = []
        self._proc: subprocess.Popen[str] | None = None
        self._log_file: IO[str] | None = None
        self._settings_used: Path | None = None
        self._ready = threading.Event()
        self._stdout_thread: threading.Thread | None = None
        self._lock = threading.RLock()  # check() (watcher thread) against stop() (session thread)
        self._stopping = False
        self._gave_up = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, settings_path: Path, rois: Path | None = None) -> list[str]:
        cmd = [self.python, "-m", "online", "--settings", str(settings_path), "--session",
               str(self.session_folder), "--exit-with-parent", "--log-level", self.log_level]
        if self.subject_dir is not None:
            cmd += ["--subject-dir", str(self.subject_dir)]
        if self.app_port:
            cmd += ["--app-port", self.app_port]
        rois = rois if rois is not None else self.rois
        if rois is not None:
            cmd += ["--rois", str(rois)]
        return cmd + list(self.extra_args)

    def _settings_file(self) -> Path:
        path = self.session_folder / ONLINE_SETTINGS_FILE
        write_online_settings(self.settings, path)
        return path

    def _spawn(self, rois: Path | None = None) -> subprocess.Popen[str]:
        """Start a child without waiting for it (its `ready` line sets `_ready`)."""
        assert self._settings_used is not None and self._log_file is not None
        cmd = self.command(self._settings_used, rois)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        log.info("starting the online module: %s", " ".join(cmd))
        ready = self._ready = threading.Event()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=self._log_file, text=True, env=env)
        self._proc = proc
        self.pids.append(proc.pid)
        self._stdout_thread = threading.Thread(target=self._read_stdout, args=(proc, ready),
                                               name="online-stdout", daemon=True)
        self._stdout_thread.start()
        return proc

    def start(self) -> OnlineProcess:
        if self._proc is not None:
            raise RuntimeError("the online process is already started")
        self.session_folder.mkdir(parents=True, exist_ok=True)
        self._settings_used = self._settings_file()
        self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop())
        proc = self._spawn()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if proc.poll() is not None:
                status = proc.returncode
                self._cleanup(status)
                raise OnlineProcessError(f"the online module exited with status {status} before it was "
                                         f"ready; its log ({self.log_path}) ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OnlineProcessError(f"the online module was not ready within {self.ready_timeout_s:g} "
                                         f"s; its log ({self.log_path}) ends with:\n{self.log_tail()}")
        log.info("online module ready (pid %d)", proc.pid)
        return self

    def _read_stdout(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.rstrip("\n")
            if text.strip() == READY_LINE:
                ready.set()
            elif text:
                log.info("online: %s", text)

    # -- watching -----------------------------------------------------------------------------------

    @property
    def open_gap(self) -> OnlineGap | None:
        return self.gaps[-1] if self.gaps and self.gaps[-1].ended is None and not self._gave_up else None

    def check(self, trial: int | None = None) -> bool:
        """Look at the child once (`trial`: the session's running trial). A dead child opens a gap and is
        restarted while restarts are left; a restarted child that became ready closes it; frames lost are
        counted once known. Returns True when something changed (for session.json)."""
        with self._lock:
            if self._stopping or self._proc is None:
                return False
            changed = self._count_lost_frames()
            proc = self._proc
            if proc.poll() is not None:
                return self._on_exit(proc, trial) or changed
            gap = self.open_gap
            if gap is not None and self._ready.is_set():
                gap.ended = _now()
                gap.trial_at_ready = trial
                gap.seconds = round((datetime.fromisoformat(gap.ended)
                                     - datetime.fromisoformat(gap.started)).total_seconds(), 3)
                log.warning("online module back (pid %d) after a gap of %.1f s", proc.pid, gap.seconds)
                return True
            return changed

    def _on_exit(self, proc: subprocess.Popen[str], trial: int | None) -> bool:
        status = proc.returncode
        self.exit_status = status
        gap = self.open_gap
        if gap is None:
            if self._gave_up:
                return False
            gap = OnlineGap(started=_now(), exit_status=status, trial_at_death=trial,
                            rows_before=index_length(self.session_folder))
            self.gaps.append(gap)
            log.error("the online module (pid %d) ended during the session (%s); frames are not processed "
                      "until it is back", proc.pid, _describe_status(status))
        else:  # the replacement died before it was ready
            gap.exit_status = status
            log.error("the restarted online module (pid %d) ended before it was ready (%s)", proc.pid,
                      _describe_status(status))
        self._join_stdout()
        if self.restarts >= self.max_restarts:
            self._gave_up = True
            gap.note = (f"not restarted: online.max_restarts ({self.max_restarts}) reached; no online "
                        "processing for the rest of the session")
            log.error("the online module is not restarted again: %s", gap.note)
            self._proc = None
            return True
        self.restarts += 1
        gap.restarted = True
        self._log_line(f"--- the rig restarts the online module ({self.restarts} of at most "
                       f"{self.max_restarts}) after {_describe_status(status)} ---")
        saved = self.session_folder / ROIS_FILE
        self._spawn(rois=self.session_folder if self.rois is None and saved.exists() else None)
        return True

    def _count_lost_frames(self) -> bool:
        """Fill in frames lost and trials affected of closed gaps once the new child has written a frame."""
        changed = False
        for gap in self.gaps:
            if gap.frames_lost is not None or not gap.restarted or gap.ended is None:
                continue
            after = read_index(self.session_folder, gap.rows_before, gap.rows_before + 1)
            if not len(after):
                continue
            before = read_index(self.session_folder, gap.rows_before - 1, gap.rows_before)
            last_seq = int(before["seq"][0]) if len(before) else -1
            gap.frames_lost = max(0, int(after["seq"][0]) - last_seq - 1)
            first = int(before["trial"][0]) if len(before) else gap.trial_at_death
            ends = [t for t in (gap.trial_at_ready, int(after["trial"][0])) if t is not None]
            if first is not None and ends:
                gap.trials_affected = list(range(first, max(ends) + 1))
            log.warning("online gap from %s: %d frame(s) lost, trials %s", gap.started, gap.frames_lost,
                        _trial_span(gap.trials_affected))
            changed = True
        return changed

    def _log_line(self, text: str) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log_file.write(f"{_now()} {text}\n")
                self._log_file.flush()

    # -- stopping -----------------------------------------------------------------------------------

    def stop(self) -> int | None:
        """SIGTERM, wait, then kill; returns (and keeps in `exit_status`) the child's return code."""
        with self._lock:
            self._stopping = True
            proc = self._proc
            if proc is None:  # never started, or not restarted again
                self._finish_gaps()
                self._close_files()
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
            self._finish_gaps()
            return self.exit_status

    def _finish_gaps(self) -> None:
        """At the end: the last counts, and a gap still open ends with the session."""
        self._count_lost_frames()
        for gap in self.gaps:
            if gap.ended is None:
                gap.note = gap.note or "the online module was not back when the session ended"
                gap.ended = _now()
                gap.seconds = round((datetime.fromisoformat(gap.ended)
                                     - datetime.fromisoformat(gap.started)).total_seconds(), 3)
            if gap.frames_lost is None and gap.note is None:
                gap.note = "frames lost unknown: the restarted module wrote no frame"

    def _join_stdout(self) -> None:
        if self._stdout_thread is not None:
            self._stdout_thread.join(timeout=2)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def _close_files(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup(self, status: int | None) -> None:
        self.exit_status = status
        self._join_stdout()
        self._close_files()
        if status == 0:
            log.info("online module exited cleanly")
        elif status is not None:
            log.error("online module %s; see %s", _describe_status(status), self.log_path)
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

    # -- reports ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For `rig status` and displays: running, restarts, and the gaps so far (short)."""
        with self._lock:
            gap = self.open_gap
            return {"running": self.running and gap is None, "pid": self.pid, "restarts": self.restarts,
                    "max_restarts": self.max_restarts, "gaps": len(self.gaps),
                    "frames_lost": sum(g.frames_lost or 0 for g in self.gaps),
                    "down_since": gap.started if gap is not None else None,
                    "gave_up": self._gave_up, "last_gap": self.gaps[-1].to_dict() if self.gaps else None}

    def describe(self) -> dict[str, Any]:
        """For session.json."""
        with self._lock:
            return {"pid": self.pid, "pids": list(self.pids), "exit_status": self.exit_status,
                    "log": str(self.log_path), "app_port": self.app_port,
                    "rois": str(self.rois) if self.rois is not None else None, "restarts": self.restarts,
                    "max_restarts": self.max_restarts, "gaps": [g.to_dict() for g in self.gaps]}


def _describe_status(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"ended by signal {signal.Signals(-status).name}"
    return f"exited with status {status}"


def _trial_span(trials: list[int]) -> str:
    if not trials:
        return "unknown"
    return str(trials[0]) if len(trials) == 1 else f"{trials[0]}-{trials[-1]}"
