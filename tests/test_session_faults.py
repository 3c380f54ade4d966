"""Faults a real rig meets during a session, produced for real: a second `rig run` for a running subject,
the Bpod lost (its emulator process killed), the ScanImage folder going silent, the data disk filling
(a small tmpfs), a stop while a trial is queued, and subject ids that would leave the data root."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.subject_file import SUBJECT_STATE_FILE
from protocols.training import SubjectTrainingState
from protocols.trial_record import TrialRecord
from rig.control import send_request
from rig.free_endpoints import free_network
from rig.store import SessionStore, SubjectBusyError, SubjectLock, read_jsonl, recover_sessions
from rig.subject import SubjectRecord, save_subject

SIM_FOLDER = SUBJECT_STATE_FILE.parts[0]  # the simulated mouse's own state beside the sessions

ANSWERED = ("hit", "error", "no_response")
STARTED = datetime(2024, 5, 1, 12, 0, 0)
UNFINISHED = {"ended": None, "end_reason": None}
# A long StopLicking: once the outcome is known the next trial waits in the Bpod's queue for 5 s of Bpod
# time, so a test can act while a trial is queued.
QUEUE_WINDOW = {"task": {"timing": {"sample": 0.1, "answer_period": 0.2, "stop_licking": 5.0}}}


def _settings_file(path: Path, extra: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {"network": free_network(), "online": {"enabled": False},
                            "imaging": {"source": "none"}, "pole_motor": {"port": None},
                            "sound": {"device": "pwm"}}  # the external emulator has no motor, no HiFi
    for key, value in (extra or {}).items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(yaml.safe_dump(data))
    return path


def _rig(data: Path, settings: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rig", "run", "--data", str(data), "--settings", str(settings), "--no-gui",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def _running(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _session_folder(subject_dir: Path, proc: subprocess.Popen[str], timeout_s: float = 60) -> Path:
    deadline = time.monotonic() + timeout_s
    while True:
        folders = [p for p in subject_dir.iterdir() if p.is_dir() and p.name != SIM_FOLDER] \
            if subject_dir.is_dir() else []
        if folders and (folders[0] / "session.json").exists():
            return folders[0]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no session folder"
        time.sleep(0.02)


def _wait_until(condition: Any, proc: subprocess.Popen[str], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _lines(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path)) if path.exists() else []


def _journal(folder: Path) -> dict[int, dict[str, Any]]:
    """Per trial of the events journal: whether its header (queued or started) is there, its states and
    its events, as the rig received them."""
    trials: dict[int, dict[str, Any]] = {}
    for line in _lines(folder / "events.jsonl"):
        entry = trials.setdefault(line["trial"], {"header": False, "states": [], "events": []})
        if line["kind"] == "trial":
            entry["header"] = True
        else:
            entry["states" if line["kind"] == "state" else "events"].append(line["name"])
    return trials


def _queued(folder: Path, after: int = 1) -> bool:
    """A trial past `after` is waiting in the Bpod's queue: its header is journaled, none of its states."""
    journal = _journal(folder)
    return any(n > after and t["header"] and not t["states"] for n, t in journal.items())


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _event_names(bpod: dict[str, Any]) -> list[str]:
    return sorted(name for name, times in bpod["Events"].items() for _ in times)


# -- the subject lock ----------------------------------------------------------------------------------------


def test_a_second_run_for_a_running_subject_is_refused_and_other_subjects_run_beside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _rig(data, _settings_file(tmp_path / "a.yaml"), "--subject", "m", "--speed", "20")
    with _running(first):
        folder = _session_folder(data / "m", first)
        _wait_until(lambda: len(_lines(folder / "trials.jsonl")) >= 1, first, "no trial in the first session")
        other_ports = _settings_file(tmp_path / "b.yaml")
        second = _rig(data, other_ports, "--subject", "m", "--trials", "2", "--speed", "50")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2, err
        sentence = _last_line(err)
        assert "already in a session" in sentence and str(folder) in sentence
        assert f"pid {first.pid}" in sentence and socket.gethostname() in sentence
        # the first session's folder, subject.json, the simulated mouse's sim/ and the lock; the first
        # session may be mid-way through replacing subject.json (its temporary file), which is not the
        # second run's doing
        entries = {p.name for p in (data / "m").iterdir() if not p.name.endswith(".tmp")}
        assert "Traceback" not in err and entries == {folder.name, "subject.json", "sim", "session.lock"}
        live = json.loads((folder / "session.json").read_text())
        assert live["end_reason"] is None and "recovered_at" not in live
        assert all(r["outcome"] in ANSWERED for r in _lines(folder / "trials.jsonl"))

        beside = _rig(data, other_ports, "--subject", "n", "--trials", "2", "--speed", "50")
        out, err = beside.communicate(timeout=120)
        assert beside.returncode == 0, err
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    records = _lines(folder / "trials.jsonl")
    subject = json.loads((data / "m" / "subject.json").read_text())
    learned = sum(r["outcome"] in ANSWERED for r in records)  # a trial ended by the stop is not learned from
    assert subject["sessions"] == 1 and subject["training"]["total_trials"] == learned
    info = json.loads((folder / "session.json").read_text())
    assert info["end_reason"] == "stopped by SIGTERM" and info["trials"] == len(records)


def test_recovery_refuses_a_subject_whose_session_holds_the_lock(tmp_path: Path) -> None:
    store = SessionStore.create(tmp_path, "m", STARTED, "", {"subject": "m", **UNFINISHED})
    store.journal(1, "trial", side="left")
    store.close()
    with SubjectLock(tmp_path / "m"), pytest.raises(SubjectBusyError, match="already in a session"):
        recover_sessions(tmp_path / "m")
    assert json.loads((store.folder / "session.json").read_text())["end_reason"] is None
    assert recover_sessions(tmp_path / "m") == [store.folder]  # the lock is free again


# -- the Bpod lost, a stop while a trial is queued -----------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The Bpod emulator in its own process (a device that can be unplugged: killed), at 10x real time."""
    proc = subprocess.Popen([sys.executable, "-m", "hardware.bpod.emulator", "--firmware", "23",
                             "--speed", "10", "--exit-with-parent"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("main: "), line
        yield proc, line.removeprefix("main: ").strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.communicate(timeout=10)


def _freeze_while_queued(emulator: subprocess.Popen[str], folder: Path, rig: subprocess.Popen[str],
                         after: int) -> None:
    """Stop the emulator process (SIGSTOP) at a moment the rig has a trial past `after` waiting in the
    Bpod's queue."""
    while True:
        _wait_until(lambda: _queued(folder, after), rig, "no trial was ever queued")
        os.kill(emulator.pid, signal.SIGSTOP)
        time.sleep(0.1)  # the rig takes in what the emulator wrote before it froze
        if _queued(folder, after):
            return
        os.kill(emulator.pid, signal.SIGCONT)


def test_bpod_lost_records_the_running_and_the_queued_trial_and_ends_in_one_sentence(
        tmp_path: Path, emulator: tuple[subprocess.Popen[str], str]) -> None:
    device, port = emulator
    settings = _settings_file(tmp_path / "s.yaml", {"bpod": {"port": port}, **QUEUE_WINDOW})
    data = tmp_path / "data"
    rig = _rig(data, settings, "--subject", "lost")
    with _running(rig):
        folder = _session_folder(data / "lost", rig)
        _freeze_while_queued(device, folder, rig, after=2)
        device.kill()  # the device is gone, as when its USB cable is pulled
        out, err = rig.communicate(timeout=60)
    assert rig.returncode == 1, err
    sentence = _last_line(err)
    assert sentence.startswith(f"lost the Bpod on {port}") and str(folder) in sentence
    assert "Traceback" not in err
    journal = _journal(folder)
    records = _lines(folder / "trials.jsonl")
    assert [r["trial"] for r in records] == sorted(journal)  # every trial the rig knew of has a record
    running, queued = records[-2], records[-1]
    assert queued["outcome"] == "not_started" and queued["abort_reason"] == "bpod lost"
    assert queued["side"] in ("left", "right") and journal[queued["trial"]]["states"] == []
    assert running["outcome"] == "aborted" and running["abort_reason"] == "bpod lost"
    received = journal[running["trial"]]
    assert running["bpod"]["state_sequence"] == received["states"] and received["states"]
    assert _event_names(running["bpod"]) == sorted(received["events"]) and received["events"]
    assert records[:-2] and all(r["outcome"] in ANSWERED for r in records[:-2])  # trials before: intact
    info = json.loads((folder / "session.json").read_text())
    assert info["end_reason"] == "bpod lost" and info["ended"] and info["trials"] == len(records)


def test_an_ordinary_stop_records_the_queued_trial_as_not_started(
        tmp_path: Path, emulator: tuple[subprocess.Popen[str], str]) -> None:
    device, port = emulator
    settings = _settings_file(tmp_path / "s.yaml", {"bpod": {"port": port}, **QUEUE_WINDOW})
    data = tmp_path / "data"
    rig = _rig(data, settings, "--subject", "stop")
    with _running(rig):
        folder = _session_folder(data / "stop", rig)
        _freeze_while_queued(device, folder, rig, after=1)
        control = yaml.safe_load(settings.read_text())["network"]["control"]
        assert send_request(control, "stop")["ok"]
        os.kill(device.pid, signal.SIGCONT)
        out, err = rig.communicate(timeout=60)
    assert rig.returncode == 0, err
    records = _lines(folder / "trials.jsonl")
    *answered, queued = records
    assert answered and all(r["outcome"] in ANSWERED for r in answered)
    assert queued["outcome"] == "not_started" and queued["stopped"]
    assert json.loads((folder / "session.json").read_text())["end_reason"] == "stopped by experimenter"


# -- the imaging source going silent -------------------------------------------------------------------------


def test_scanimage_folder_going_silent_ends_the_session_with_a_clear_reason(tmp_path: Path) -> None:
    scanimage = tmp_path / "scanimage"
    scanimage.mkdir()
    settings = _settings_file(tmp_path / "s.yaml", {"imaging": {
        "source": "scanimage_folder", "scanimage_folder": str(scanimage), "silence_timeout_s": 1.0}})
    data = tmp_path / "data"
    writing = threading.Event()
    writing.set()

    def acquire() -> None:  # ScanImage writing frames until it goes silent
        with ScanImageWriter.for_loop_trial(scanimage, "acq", 1, height=8, width=8, template="compact") as w:
            t = 0
            while writing.is_set():
                w.write_frame(np.full((8, 8), t % 100, np.int16), t / 30)
                t += 1
                time.sleep(0.01)

    writer = threading.Thread(target=acquire, daemon=True)
    rig = _rig(data, settings, "--subject", "quiet", "--speed", "20")
    try:
        with _running(rig):
            folder = _session_folder(data / "quiet", rig)
            # files already there at the start belong to earlier acquisitions: begin once trials run
            _wait_until(lambda: (folder / "events.jsonl").exists(), rig, "no trial started")
            writer.start()
            _wait_until(lambda: len(_lines(folder / "trials.jsonl")) >= 2 or rig.poll() is not None, rig,
                        "no trials with frames")
            writing.clear()
            out, err = rig.communicate(timeout=60)
    finally:
        writing.clear()
        if writer.is_alive():
            writer.join(5)
    assert rig.returncode == 1, err
    sentence = _last_line(err)
    assert sentence.startswith(f"imaging silent: no new frame from {scanimage} for 1 s")
    assert str(folder) in sentence
    assert "Traceback" not in err
    records = _lines(folder / "trials.jsonl")
    assert [r["trial"] for r in records] == list(range(1, len(records) + 1))
    ended = [r for r in records if r["outcome"] not in ANSWERED]
    assert ended and records[-len(ended):] == ended  # only the trials in flight at the end
    assert ended[0]["outcome"] == "aborted" and ended[0]["abort_reason"] == "imaging silent"
    assert all(r["outcome"] == "not_started" for r in ended[1:])
    info = json.loads((folder / "session.json").read_text())
    assert info["end_reason"] == "imaging silent" and info["trials"] == len(records)
    assert info["imaging"]["pages"] > 0  # frames came, then stopped


# -- the data disk filling -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path) -> None:
    """Take every free byte of `disk`, as another program writing there would."""
    with (disk / "filler.bin").open("wb", buffering=0) as f:
        block = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                f.write(block)


def test_disk_full_ends_the_session_with_the_path_and_keeps_the_trials_before(small_disk: Path,
                                                                              tmp_path: Path) -> None:
    rig = _rig(small_disk, _settings_file(tmp_path / "s.yaml"), "--subject", "full", "--speed", "20")
    with _running(rig):
        folder = _session_folder(small_disk / "full", rig)
        _wait_until(lambda: len(_lines(folder / "trials.jsonl")) >= 2, rig, "no trials")
        kept = _lines(folder / "trials.jsonl")
        _fill(small_disk)
        out, err = rig.communicate(timeout=60)
    assert rig.returncode == 1, err
    sentence = _last_line(err)
    assert sentence.startswith(f"disk full at {small_disk}") and str(folder) in sentence
    assert "Traceback" not in err
    records = _lines(folder / "trials.jsonl")
    assert records[:len(kept)] == kept
    assert [r["trial"] for r in records] == list(range(1, len(records) + 1))
    info = json.loads((folder / "session.json").read_text())
    assert info["end_reason"] == "disk full" and info["trials"] == len(records)
    subject = json.loads((small_disk / "full" / "subject.json").read_text())
    assert subject["sessions"] == 1
    answered = [r for r in records if r["outcome"] != "not_started" and not r.get("abort_reason")]
    assert subject["training"]["total_trials"] >= len(answered)


# -- subject ids ---------------------------------------------------------------------------------------------


def test_a_subject_id_outside_the_data_root_is_refused_before_any_file_is_touched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()  # a lab's data root exists, and ../x resolves beside it
    outside = SessionStore.create(tmp_path, "x", STARTED, "", {"subject": "x", **UNFINISHED})
    outside.journal(1, "trial", side="left")
    outside.close()
    save_subject(tmp_path, SubjectRecord(subject="x", training=SubjectTrainingState(stage="full",
                                                                                     context="tactile")))
    before = {p: p.read_bytes() for p in (tmp_path / "x").rglob("*") if p.is_file()}
    settings = _settings_file(tmp_path / "s.yaml")
    proc = _rig(data, settings, "--subject", "../x", "--trials", "1", "--speed", "50")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    assert _last_line(err).startswith("subject id '../x':")
    assert {p: p.read_bytes() for p in (tmp_path / "x").rglob("*") if p.is_file()} == before
    assert list(data.iterdir()) == []


def test_an_empty_subject_id_is_refused_not_replaced_by_the_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = _rig(data, _settings_file(tmp_path / "s.yaml"), "--subject", "", "--trials", "1", "--speed", "50")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and _last_line(err).startswith("subject id '':") and "Traceback" not in err
    assert not data.exists()


# -- recovery ------------------------------------------------------------------------------------------------


def test_a_recovered_session_json_carries_the_trial_count(tmp_path: Path) -> None:
    store = SessionStore.create(tmp_path, "k", STARTED, "", {"subject": "k", "trials": 0, **UNFINISHED})
    for n in (1, 2, 3):
        store.journal(n, "trial", side="left")
        store.append_trial(TrialRecord(trial=n, outcome="hit"))
    store.journal(4, "trial", side="right")
    store.journal(4, "state", name="TrigTrialStart", time_s=0.0)
    store.close()
    assert recover_sessions(tmp_path / "k") == [store.folder]
    info = json.loads((store.folder / "session.json").read_text())
    assert info["end_reason"] == "killed" and info["trials"] == 4
    assert [r["trial"] for r in _lines(store.folder / "trials.jsonl")] == [1, 2, 3, 4]
