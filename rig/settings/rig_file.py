"""Which sections belong to the rig box (a rig file per box) and which to the experiment (settings.yaml).

A lab runs one protocol on several boxes: the task, its contexts and the online analysis are the
experiment's, written once in settings.yaml; the Bpod's port, model and firmware, the wiring, the valve
calibration, the devices, the network endpoints and keys and the data root are the box's, in its
``rig.yaml``. Every section that is not the experiment's is the box's, so a device section added to the
settings (a motor, a sound module) lands in the rig file without being listed here.

With a rig file the two files hold disjoint sections: a box section in settings.yaml, or an experiment
section in the rig file, is refused with a sentence saying where it belongs (there is no silent
precedence between two values of one key). Without a rig file (none given, none beside settings.yaml),
settings.yaml may hold everything, as one file for the built-in simulated rig; missing sections take
their defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rig.settings.problems import SettingsError
from rig.settings.schema import Settings

RIG_FILE_NAME = "rig.yaml"
"""The rig file looked for beside a settings file when none is given."""

EXPERIMENT_SECTIONS: tuple[str, ...] = ("task", "session", "contexts", "imaging", "online", "sim", "metadata")
"""The experiment's sections (settings.yaml): the task and its training, the contexts, the imaging
acquisition, the online analysis, a session's end criteria, the simulated mouse and microscope of a
simulated study, and the metadata the NWB export adds (lab, experimenters, optics)."""


def rig_sections() -> tuple[str, ...]:
    """The rig box's sections (rig.yaml): every section of the settings that is not the experiment's."""
    return tuple(name for name in Settings.model_fields if name not in EXPERIMENT_SECTIONS)


def find_rig_file(settings_path: Path, rig: Path | str | None = None) -> Path | None:
    """The rig file to use: ``rig`` if given, else rig.yaml beside the settings file if there is one (and
    it is not the settings file itself), else None (the built-in simulated rig, or the rig sections of
    settings.yaml)."""
    if rig is not None:
        return Path(rig)
    beside = settings_path.parent / RIG_FILE_NAME
    if not beside.is_file() or (settings_path.is_file() and beside.samefile(settings_path)):
        return None
    return beside


def _misplaced(keys: Iterable[str], wanted: tuple[str, ...]) -> list[str]:
    known = set(Settings.model_fields)
    return [str(key) for key in keys if str(key) in known and str(key) not in wanted]


def check_placement(experiment: Mapping[str, Any], experiment_path: Path,
                    rig: Mapping[str, Any], rig_path: Path) -> None:
    """Refuse box sections in the experiment's file and experiment sections in the rig file, one line
    each naming the file and the section (unknown sections are left to the model, which names them)."""
    problems = [
        f"{experiment_path}: {key}: belongs to the rig file ({rig_path}), not the experiment's settings; "
        f"move it there"
        for key in _misplaced(experiment, EXPERIMENT_SECTIONS)
    ] + [
        f"{rig_path}: {key}: belongs to the experiment's settings ({experiment_path}), not a rig file; "
        "move it there"
        for key in _misplaced(rig, rig_sections())
    ]
    if problems:
        raise SettingsError(problems, experiment_path)


def rig_file_keys(rig: Mapping[str, Any]) -> set[str]:
    """The top-level keys whose problems are the rig file's: its sections, and what it wrote."""
    return set(rig_sections()) | {str(key) for key in rig}


def split_sections(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A whole settings mapping -> (experiment sections, rig sections), in the order given."""
    experiment = {key: value for key, value in data.items() if key in EXPERIMENT_SECTIONS}
    rig = {key: value for key, value in data.items() if key not in EXPERIMENT_SECTIONS}
    return experiment, rig
