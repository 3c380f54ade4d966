"""The simulated subject on disk: its state between sessions, and the ground truth of each session.

- `<subject folder>/sim/subject-state.json` (`SUBJECT_STATE_FILE`): `Subject.to_dict()` under a format
  number, replaced atomically, read when the next session of the subject starts, so one `rig run` per day
  continues the same mouse. Only the simulator reads it.
- `<session folder>/sim-truth.jsonl` (`TRUTH_FILE`): one line per trial the mouse lived, with the latent
  state in force, the pattern it expressed, the side it planned, the rig's context label, its bias and
  engagement, and a switch of state after the trial.
- `<session folder>/sim-patterns.npz` (`PATTERNS_FILE`): every pattern the session expressed, as neuron
  weights (`delay/<key>`, `sample/<key>`, Hz right minus left), the stimulus weights (`stimulus/<modality>`)
  and the recipes (`recipes`, JSON).

The truth is for tests that score the analysis; the product (online/, the rig's analysis) never opens it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hardware.sim.neurons import Population

SUBJECT_STATE_FILE = Path("sim") / "subject-state.json"
TRUTH_FILE = "sim-truth.jsonl"
PATTERNS_FILE = "sim-patterns.npz"


class SubjectStateError(ValueError):
    """The simulated subject's state file cannot be used; the message names it and says why."""


def _replace_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_subject_state(subject_dir: Path) -> dict[str, Any] | None:
    """The stored state of the subject in `subject_dir`, or None for a new subject."""
    path = Path(subject_dir) / SUBJECT_STATE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubjectStateError(f"{path}: cannot read the simulated subject's state ({exc}); fix or move "
                                "the file") from None
    if not isinstance(data, dict):
        raise SubjectStateError(f"{path}: the simulated subject's state is not a JSON object; fix or move "
                                "the file")
    return data


def save_subject_state(subject_dir: Path, state: Mapping[str, Any]) -> None:
    _replace_atomically(Path(subject_dir) / SUBJECT_STATE_FILE,
                        (json.dumps(state, indent=1, sort_keys=True) + "\n").encode("utf-8"))


class TruthLog:
    """Collects per-trial truth in the engine thread; `flush` writes it from the session's thread."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.folder: Path | None = None
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._recipes: dict[str, dict[str, float]] = {}
        self._written_recipes = 0

    def add_trial(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending.append(dict(record))

    def add_pattern(self, key: str, recipe: Mapping[str, float]) -> bool:
        """Note a pattern expressed; False if it was known already."""
        with self._lock:
            if key in self._recipes:
                return False
            self._recipes[key] = dict(recipe)
            return True

    def flush(self) -> None:
        """Append the trials so far to sim-truth.jsonl and rewrite sim-patterns.npz if a pattern is new
        (nothing before `folder` is set: those trials stay pending)."""
        if self.folder is None:
            return
        with self._lock:
            lines, self._pending = self._pending, []
            recipes = dict(self._recipes) if len(self._recipes) != self._written_recipes else None
        if lines:
            with (self.folder / TRUTH_FILE).open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        if recipes is not None:
            self._write_patterns(recipes)
            self._written_recipes = len(recipes)

    def _write_patterns(self, recipes: Mapping[str, Mapping[str, float]]) -> None:
        arrays: dict[str, np.ndarray] = {"recipes": np.array(json.dumps(recipes, sort_keys=True))}
        for key, recipe in recipes.items():
            pattern = self.population.define_pattern(key, recipe)
            arrays[f"delay/{key}"], arrays[f"sample/{key}"] = pattern.delay, pattern.sample
        for modality, w in self.population.stimulus_w.items():
            arrays[f"stimulus/{modality}"] = w
        path = self.folder / PATTERNS_FILE if self.folder is not None else None
        assert path is not None
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".npz",
                                         delete=False) as out:
            np.savez(out, **arrays)
        os.replace(out.name, path)


def load_patterns(session_folder: Path) -> dict[str, Any]:
    """sim-patterns.npz of a session: {"delay": {key: w}, "sample": {key: w}, "stimulus": {modality: w},
    "recipes": {key: recipe}} (for tests)."""
    out: dict[str, Any] = {"delay": {}, "sample": {}, "stimulus": {}}
    with np.load(Path(session_folder) / PATTERNS_FILE) as data:
        for name in data.files:
            if name == "recipes":
                out["recipes"] = json.loads(str(data[name]))
            else:
                kind, key = name.split("/", 1)
                out[kind][key] = data[name]
    return out
