"""Crash-safe session data on disk.

Layout (DESIGN.md): `<root>/<subject>/<YYYY-MM-DD_HHMMSS>/` with `settings.yaml`, `session.json`,
`trials.jsonl` (one fsynced line per finished trial) and `events.jsonl`, the journal of every trial's
header, state entries and events as they arrive (flushed to the OS, so a killed process loses nothing);
`<root>/<subject>/subject.json` carries the training state between sessions, replaced atomically.

A session that was killed is repaired the next time its subject runs: its unfinished trial becomes an
`aborted` line with the events received so far, and its session.json is marked as ended by a crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from online.store import write_bytes_atomic
from rig.errors import UserError

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.jsonl"
EVENTS_FILE = "events.jsonl"
SESSION_FILE = "session.json"
SETTINGS_FILE = "settings.yaml"
SUBJECT_FILE = "subject.json"
SESSION_DIR_FORMAT = "%Y-%m-%d_%H%M%S"
_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class DataError(UserError):
    """A data folder or file that cannot be used as it is; the message names the file."""


def check_subject_id(subject: str) -> str:
    if not _SUBJECT_ID.fullmatch(subject):
        raise DataError(f"subject id {subject!r}: use 1-64 letters, digits, '_', '-' or '.', starting "
                        "with a letter or digit (it becomes a folder name)")
    return subject


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Replace `path` so that a crash leaves either the old or the new file, never half of one."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-write) is skipped with a warning."""
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not line.endswith("\n"):
                log.warning("%s: line %d is incomplete (writer killed mid-line); skipped", path, number)
                continue
            raise DataError(f"{path}:{number}: not valid JSON") from None


class SessionStore:
    """One session's folder: append-only trial records, fsynced at each trial end, and the journal."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._trials: IO[str] | None = None
        self._journal: IO[str] | None = None
        self._journal_lock = threading.Lock()

    @classmethod
    def create(cls, root: Path, subject: str, started: datetime, settings_yaml: str,
               session_info: Mapping[str, Any]) -> SessionStore:
        subject_dir = Path(root) / check_subject_id(subject)
        folder = subject_dir / started.strftime(SESSION_DIR_FORMAT)
        suffix = 1
        while folder.exists():  # two sessions within one second
            suffix += 1
            folder = subject_dir / f"{started.strftime(SESSION_DIR_FORMAT)}_{suffix}"
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise DataError(f"cannot create the session folder {folder}: {exc.strerror}") from exc
        (folder / SETTINGS_FILE).write_text(settings_yaml, encoding="utf-8")
        store = cls(folder)
        store.write_session_info(dict(session_info))
        return store

    @property
    def trials_path(self) -> Path:
        return self.folder / TRIALS_FILE

    def write_session_info(self, info: Mapping[str, Any]) -> None:
        write_json_atomic(self.folder / SESSION_FILE, info)

    def journal(self, trial: int, kind: str, **fields: Any) -> None:
        """One line of the running trials' journal (header, state entry, event); any thread.
        Flushed, not fsynced: it survives a killed process, and costs no disk round trip per lick."""
        line = json.dumps({"trial": trial, "kind": kind, **fields}) + "\n"
        with self._journal_lock:
            if self._journal is None:
                self._journal = (self.folder / EVENTS_FILE).open("a", encoding="utf-8")
            self._journal.write(line)
            self._journal.flush()

    def append_trial(self, record: Mapping[str, Any]) -> None:
        """Write a finished trial and make it durable (fsync) before anything else happens."""
        if self._trials is None:
            self._trials = self.trials_path.open("a", encoding="utf-8")
        self._trials.write(json.dumps(record, sort_keys=True) + "\n")
        self._trials.flush()
        os.fsync(self._trials.fileno())

    def close(self) -> None:
        with self._journal_lock:
            for f in (self._trials, self._journal):
                if f is not None:
                    f.close()
            self._trials = self._journal = None

    def trials(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.trials_path)) if self.trials_path.exists() else []


def recover_sessions(subject_dir: Path) -> list[Path]:
    """Repair every session of a subject that was killed: each journaled trial with no record
    becomes an `aborted` record with the events received so far, and session.json says how the
    session ended. Returns the repaired folders."""
    repaired: list[Path] = []
    if not subject_dir.is_dir():
        return repaired
    for folder in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
        info_path = folder / SESSION_FILE
        if not info_path.exists():
            continue
        info = read_json(info_path)
        if info.get("ended") is not None or info.get("end_reason") is not None:
            continue
        store = SessionStore(folder)
        recorded = {t.get("trial") for t in store.trials()}
        journal = folder / EVENTS_FILE
        for aborted in (_aborted_trials(journal, recorded) if journal.exists() else []):
            store.append_trial(aborted)
            log.warning("%s: the session was killed during trial %s; recorded it as aborted with %d events",
                        folder, aborted["trial"], len(aborted["events_received"]))
        store.close()
        info["end_reason"] = "killed"
        info["recovered_at"] = datetime.now().isoformat(timespec="seconds")
        write_json_atomic(info_path, info)
        repaired.append(folder)
    return repaired


def _aborted_trials(journal: Path, recorded: set[Any]) -> list[dict[str, Any]]:
    trials: dict[int, dict[str, Any]] = {}
    for line in read_jsonl(journal):
        number, kind = line.pop("trial", None), line.pop("kind", None)
        if number in recorded or number is None:
            continue
        if kind == "trial":
            trials[number] = {**line, "trial": number, "outcome": "aborted", "aborted": True,
                              "abort_reason": "process killed", "events_received": [], "states_entered": []}
        elif number in trials and kind in ("event", "state"):
            trials[number]["events_received" if kind == "event" else "states_entered"].append(line)
    return [trials[n] for n in sorted(trials)]
