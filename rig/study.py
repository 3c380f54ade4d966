"""A simulated study: one real `rig run` per simulated day on the emulator, for one subject, with contexts
switched by a schedule (or by the rig at criterion).

Each day is its own `rig run` process, so a study exercises exactly what a lab runs: the subject's record,
the simulated mouse's learning and its field of view carry from day to day through the subject's folder, as
they would for a real mouse. A day that fails stops the study with the day and the reason named; the days
before it stay on disk.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from online.process import die_with_parent
from rig.errors import UserError
from rig.settings import DEFAULT_SETTINGS_PATH
from rig.settings.files import parse_settings, read_settings_file

STUDY_SETTINGS_FILE = "study-settings.yaml"
_STATUS_TRIAL = re.compile(rb"trial\s+(\d+)\s*\|")


class StudyError(UserError):
    """A schedule that cannot be run, or a day that failed."""


@dataclass(frozen=True)
class StudyDay:
    """One simulated day: its number (1-based), the context to run, or None for the subject's current one
    (the rig switches at criterion)."""

    number: int
    context: str | None


def parse_schedule(text: str, known_contexts: Sequence[str]) -> list[StudyDay]:
    """'tactile:3,tactile-reversed:4' -> seven days. Context names are checked against the settings'."""
    days: list[StudyDay] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = part.rpartition(":")
        if not sep or not name:
            raise StudyError(f"schedule item {part!r}: write CONTEXT:DAYS, e.g. tactile:3")
        if name not in known_contexts:
            raise StudyError(f"schedule item {part!r}: unknown context {name!r}; the settings define "
                             f"{', '.join(known_contexts)}")
        try:
            n = int(count)
        except ValueError:
            raise StudyError(f"schedule item {part!r}: {count!r} is not a number of days") from None
        if not 1 <= n <= 1000:
            raise StudyError(f"schedule item {part!r}: days must be 1 to 1000, got {n}")
        first = len(days) + 1
        days.extend(StudyDay(first + i, name) for i in range(n))
    if not days:
        raise StudyError(f"schedule {text!r} names no day; write e.g. tactile:3,tactile-reversed:4")
    return days


def write_study_settings(source: Path | None, subject_dir: Path, *, switch_at_criterion: bool) -> Path:
    """The settings every day runs with, kept beside the subject's sessions: the user's settings, with the
    rig's automatic context switching off when a schedule decides the contexts, and a fixed simulator seed
    (from the subject's name) where the settings ask for a fresh one, so every day images the same mouse."""
    raw = read_settings_file(source if source is not None else DEFAULT_SETTINGS_PATH)
    task = dict(raw.get("task") or {})
    task["context_switch"] = {**dict(task.get("context_switch") or {}), "enabled": switch_at_criterion}
    raw["task"] = task
    sim = dict(raw.get("sim") or {})
    if "seed" in sim and sim["seed"] is None:  # a fresh seed a day would give the mouse new neurons each day
        sim["seed"] = int.from_bytes(hashlib.sha256(subject_dir.name.encode()).digest()[:4], "little")
        raw["sim"] = sim
    parse_settings(raw, source)  # refused here, once, rather than on every day
    subject_dir.mkdir(parents=True, exist_ok=True)
    path = subject_dir / STUDY_SETTINGS_FILE
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class StudyPlan:
    subject: str
    days: list[StudyDay]
    trials_per_session: int
    speed: float
    data_root: Path
    settings: Path | None = None
    rig_file: Path | None = None
    python: str = field(default_factory=lambda: sys.executable)

    def command(self, day: StudyDay) -> list[str]:
        argv = [self.python, "-m", "rig", "run", "--no-gui", "--subject", self.subject,
                "--trials", str(self.trials_per_session), "--speed", f"{self.speed:g}",
                "--data", str(self.data_root)]
        if day.context is not None:
            argv += ["--context", day.context]
        if self.settings is not None:
            argv += ["--settings", str(self.settings)]
        if self.rig_file is not None:
            argv += ["--rig", str(self.rig_file)]
        return argv


@dataclass(frozen=True)
class DayResult:
    day: StudyDay
    session: Path | None
    seconds: float


def _pump(stream, log: TextIO, on_trial: Callable[[int], None]) -> None:
    """Copy a day's output to the study log, reporting the trial numbers its status line shows."""
    for chunk in iter(lambda: stream.read1(4096), b""):
        log.write(chunk.decode("utf-8", "replace"))
        found = _STATUS_TRIAL.findall(chunk)
        if found:
            on_trial(int(found[-1]))


def run_day(plan: StudyPlan, day: StudyDay, log: TextIO, on_trial: Callable[[int], None]) -> DayResult:
    """One `rig run`; its child processes end with it, and it ends with this process."""
    started = time.monotonic()
    log.write(f"\n=== day {day.number}: {' '.join(plan.command(day))}\n")
    log.flush()
    process = subprocess.Popen(plan.command(day), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    assert process.stdout is not None
    pump = threading.Thread(target=_pump, args=(process.stdout, log, on_trial), daemon=True)
    pump.start()
    try:
        code = process.wait()
    except BaseException:
        process.terminate()
        process.wait(timeout=30)
        raise
    finally:
        pump.join(timeout=10)
        log.flush()
    if code != 0:
        raise StudyError(f"day {day.number} ({day.context or 'current context'}): rig run exited with "
                         f"status {code}; its output is in {log.name}")
    sessions = sorted(p.parent for p in (plan.data_root / plan.subject).glob("*/session.json"))
    return DayResult(day, sessions[-1] if sessions else None, time.monotonic() - started)


def run_study(plan: StudyPlan, status: TextIO | None = None) -> list[DayResult]:
    """Every day in order, with a status line; the log of every day in <data>/<subject>/study.log."""
    subject_dir = plan.data_root / plan.subject
    subject_dir.mkdir(parents=True, exist_ok=True)
    results: list[DayResult] = []
    n = len(plan.days)
    with open(subject_dir / "study.log", "a", encoding="utf-8") as log:
        for day in plan.days:
            def show(trial: int, day: StudyDay = day) -> None:
                if status is not None:
                    status.write(f"\rday {day.number}/{n} {day.context or '(current context)':<20} "
                                 f"trial {trial:4d}/{plan.trials_per_session}")
                    status.flush()
            show(0)
            results.append(run_day(plan, day, log, show))
            if status is not None:
                status.write(f"\rday {day.number}/{n} {day.context or '(current context)':<20} done in "
                             f"{results[-1].seconds:.0f} s: {results[-1].session}\n")
    return results
