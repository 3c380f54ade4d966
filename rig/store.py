"""Crash-safe session data on disk.

Layout (DESIGN.md): `<root>/<subject>/<YYYY-MM-DD_HHMMSS>/` with `settings.yaml` and `rig.yaml` (the
experiment's and the rig box's settings as they ran), `session.json`,
`trials.jsonl` (one fsynced line per finished trial) and `events.jsonl`, the journal of every trial's
header, state entries and events as they arrive (flushed to the OS, so a killed process loses nothing);
`<root>/<subject>/subject.json` carries the training state between sessions, replaced atomically.

A running session holds an OS lock (`flock`) on `<root>/<subject>/session.lock`, which names it (pid, host,
folder): a second session for the subject is refused, and a killed session is repaired only once its lock
is free, the next time its subject runs: its unfinished trial becomes an `aborted` line with the events
received so far, and its session.json is marked as ended by a crash.

A full disk is one `DiskFullError` naming the file; each session folder keeps a small reserve file that is
given up at that moment, so the trial being written, the end of the session and the subject's state still
land on disk, and trials.jsonl never keeps a torn line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from online.store import JsonLinesError, read_jsonl, write_bytes_atomic
from protocols.trial_record import TrialRecord, spec_fields
from rig.errors import UserError

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.jsonl"
EVENTS_FILE = "events.jsonl"
SESSION_FILE = "session.json"
SETTINGS_FILE = "settings.yaml"
RIG_SNAPSHOT_FILE = "rig.yaml"
SUBJECT_FILE = "subject.json"
LOCK_FILE = "session.lock"
RESERVE_FILE = ".disk-reserve"
RESERVE_BYTES = 256 * 1024
"""Room kept free in each session folder until the disk fills: the running trial's record, the session's
end and the subject's state (a few tens of kB) fit in it."""
SESSION_DIR_FORMAT = "%Y-%m-%d_%H%M%S"
_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class DataError(UserError):
    """A data folder or file that cannot be used as it is; the message names the file."""


class SubjectBusyError(DataError):
    """The subject's folder is locked by a running session."""


class DiskFullError(DataError):
    """A write failed because the disk is full; `path` is the file that could not be written."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"disk full at {path}")
        self.path = path


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC,
                                                                                         errno.EDQUOT))


def check_subject_id(subject: str) -> str:
    if not _SUBJECT_ID.fullmatch(subject):
        raise DataError(f"subject id {subject!r}: use 1-64 letters, digits, '_', '-' or '.', starting "
                        "with a letter or digit (it becomes a folder name)")
    return subject


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace `path` so that a crash leaves either the old or the new file, never half of one."""
    try:
        write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as exc:
        if _is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise


class SubjectLock:
    """The OS lock a running session holds on its subject's folder (`flock` on `session.lock`, released by
    the OS even when the process is killed), with the holder's pid, host and session folder written in it
    so that a refused second session can say which one is running."""

    def __init__(self, subject_dir: Path) -> None:
        self.path = Path(subject_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> SubjectLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(f"cannot create {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            session = holder.get("session") or "starting"
            raise SubjectBusyError(
                f"subject {self.path.parent.name} is already in a session: {session}"
                f" (pid {holder.get('pid', '?')} on {holder.get('host', '?')}); stop it (rig stop) or wait "
                "for it to end") from None
        self._fd = fd
        self.name_session(None)
        return self

    def name_session(self, folder: Path | None) -> None:
        """Write who holds the lock (and, once it exists, the session folder) into the lock file."""
        assert self._fd is not None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "session": str(folder) if folder else None,
                  "since": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor; the file stays (no unlink race)
            self._fd = None

    def __enter__(self) -> SubjectLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _lock_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file; {} while it is being written."""
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


class SessionStore:
    """One session's folder: append-only trial records, fsynced at each trial end, and the journal."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.disk_full: Path | None = None
        """The first file a full disk refused (the reserve is then given up), or None."""
        self._trials: int | None = None
        self._journal: int | None = None
        self._journal_lock = threading.Lock()
        self._write_lock = threading.Lock()

    @classmethod
    def create(cls, root: Path, subject: str, started: datetime, settings_yaml: str,
               session_info: Mapping[str, Any], rig_yaml: str | None = None) -> SessionStore:
        """The session's folder with its settings snapshot: settings.yaml and, given ``rig_yaml``, the rig
        file beside it (as `load_settings` finds it)."""
        subject_dir = Path(root) / check_subject_id(subject)
        folder = subject_dir / started.strftime(SESSION_DIR_FORMAT)
        suffix = 1
        while folder.exists():  # two sessions within one second
            suffix += 1
            folder = subject_dir / f"{started.strftime(SESSION_DIR_FORMAT)}_{suffix}"
        try:
            folder.mkdir(parents=True)
            (folder / SETTINGS_FILE).write_text(settings_yaml, encoding="utf-8")
            if rig_yaml is not None:
                (folder / RIG_SNAPSHOT_FILE).write_text(rig_yaml, encoding="utf-8")
            (folder / RESERVE_FILE).write_bytes(os.urandom(RESERVE_BYTES))  # random: no compression eats it
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFullError(folder) from exc
            raise DataError(f"cannot create the session folder {folder}: {exc.strerror}") from exc
        store = cls(folder)
        store.write_session_info(dict(session_info))
        return store

    @property
    def trials_path(self) -> Path:
        return self.folder / TRIALS_FILE

    def durable_write(self, path: Path, write: Callable[[], None]) -> None:
        """Run `write` (of `path`); if the disk is full, give up the reserve, note it in `disk_full` and
        write again in the room it leaves. A DiskFullError naming `path` when even that does not fit."""
        try:
            write()
            return
        except OSError as exc:
            if not _is_disk_full(exc):
                raise
            with self._write_lock:
                first = self.disk_full is None
                if first:
                    self.disk_full = path
                    (self.folder / RESERVE_FILE).unlink(missing_ok=True)
            if not first:
                raise DiskFullError(path) from exc
            log.error("disk full at %s: using the space kept in reserve to end the session", path)
        try:
            write()
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFullError(path) from exc
            raise

    def write_session_info(self, info: Mapping[str, Any]) -> None:
        path = self.folder / SESSION_FILE
        self.durable_write(path, lambda: write_json_atomic(path, info))

    def journal(self, trial: int, kind: str, **fields: Any) -> None:
        """One line of the running trials' journal (header, state entry, event); any thread.
        Written to the OS, not fsynced: it survives a killed process, and costs no disk round trip per
        lick. On a full disk the journal stops (the trial records still carry every event)."""
        line = (json.dumps({"trial": trial, "kind": kind, **fields}) + "\n").encode()
        path = self.folder / EVENTS_FILE
        with self._journal_lock:
            if self._journal is None:
                self._journal = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            fd = self._journal
            try:
                self.durable_write(path, lambda: _append_whole(fd, line, sync=False))
            except DiskFullError:
                log.debug("journal line dropped: disk full at %s", path)

    def append_trial(self, record: TrialRecord) -> None:
        """Write a finished trial and make it durable (fsync) before anything else happens."""
        if self._trials is None:
            self._trials = os.open(self.trials_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fd, line = self._trials, (json.dumps(record.to_json(), sort_keys=True) + "\n").encode()
        self.durable_write(self.trials_path, lambda: _append_whole(fd, line, sync=True))

    def close(self) -> None:
        with self._journal_lock:
            for fd in (self._trials, self._journal):
                if fd is not None:
                    os.close(fd)
            self._trials = self._journal = None
        (self.folder / RESERVE_FILE).unlink(missing_ok=True)

    def trials(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.trials_path)) if self.trials_path.exists() else []


def _append_whole(fd: int, data: bytes, *, sync: bool) -> None:
    """Append `data` to an O_APPEND file, all of it or none: a failed write is cut off again, so the file
    never ends in a torn line that the next append would glue onto."""
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except OSError:
        os.ftruncate(fd, size)
        raise


def recover_sessions(subject_dir: Path, lock: SubjectLock | None = None) -> list[Path]:
    """Repair every session of a subject that was killed: each journaled trial with no record
    becomes an `aborted` record with the events received so far, and session.json says how the
    session ended and how many trials it has. Only with the subject's lock (`lock`, held by the caller,
    or taken here): a running session holds it, so it is never taken for a killed one (SubjectBusyError).
    Returns the repaired folders."""
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        return []
    if lock is None:
        with SubjectLock(subject_dir) as held:
            return recover_sessions(subject_dir, held)
    if not lock.held or lock.path != subject_dir / LOCK_FILE:
        raise ValueError(f"recovering {subject_dir} needs its own lock, held")
    repaired: list[Path] = []
    for folder in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
        info_path = folder / SESSION_FILE
        if not info_path.exists():
            continue
        info = read_json(info_path)
        if info.get("ended") is not None or info.get("end_reason") is not None:
            continue
        store = SessionStore(folder)
        journal = folder / EVENTS_FILE
        try:
            recorded = {t.get("trial") for t in store.trials()}
            unfinished = _aborted_trials(journal, recorded) if journal.exists() else []
        except JsonLinesError as exc:  # damage, not a crash: the user must look at it
            raise DataError(str(exc)) from None
        for aborted in unfinished:
            store.append_trial(aborted)
            log.warning("%s: the session was killed during trial %s; recorded it as aborted with %d events",
                        folder, aborted.trial, len(aborted.events_received or ()))
        store.close()
        info["end_reason"] = "killed"
        info["trials"] = len(store.trials())
        info["recovered_at"] = datetime.now().isoformat(timespec="seconds")
        write_json_atomic(info_path, info)
        repaired.append(folder)
    return repaired


def _aborted_trials(journal: Path, recorded: set[Any]) -> list[TrialRecord]:
    headers: dict[int, dict[str, Any]] = {}
    received: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for line in read_jsonl(journal):
        number, kind = line.pop("trial", None), line.pop("kind", None)
        if number in recorded or number is None:
            continue
        if kind == "trial":
            headers[number], received[number] = line, {"event": [], "state": []}
        elif number in headers and kind in ("event", "state"):
            received[number][kind].append(line)
    return [TrialRecord(trial=n, **spec_fields(headers[n]), outcome="aborted", aborted=True,
                        abort_reason="process killed", events_received=tuple(received[n]["event"]),
                        states_entered=tuple(received[n]["state"]))
            for n in sorted(headers)]
