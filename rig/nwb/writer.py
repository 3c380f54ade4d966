"""`rig export-nwb`: a session folder (or every session of a subject not yet exported) as NWB 2.x files,
named the DANDI way, beside the data: `<data_root>/nwb/sub-<id>/sub-<id>_ses-<id>_behavior+ophys.nwb`.

trials.jsonl stays the crash-safe record written during the session; the NWB file is made from it
afterwards, written to a temporary name and renamed, so a failed export leaves no half file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml
from hdmf.common import DynamicTable, VectorData
from pynwb import NWBHDF5IO, NWBFile

from protocols.contexts import SIDES
from protocols.settings import TaskSettings
from rig import __version__
from rig.errors import UserError
from rig.nwb.behaviour import TaskProgram, add_behaviour, exported_trials
from rig.nwb.decoding import add_decoding
from rig.nwb.imaging import ImagingMetadata, add_imaging
from rig.nwb.metadata import (
    SessionCare,
    dandi_path,
    identifier,
    make_subject,
    session_description,
    start_time,
)
from rig.nwb.source import SessionFolder, read_session
from rig.settings import Settings
from rig.store import SESSION_FILE
from rig.water import session_water_ul, valve_curves

log = logging.getLogger(__name__)

EXPORT_FOLDER = "nwb"


@dataclass(frozen=True)
class Exported:
    session: Path
    path: Path
    trials: int
    planes: int


def default_path(session_folder: Path, ophys: bool) -> Path:
    """Where a session's file goes by default: `<data_root>/nwb/<DANDI path>`."""
    folder = Path(session_folder).resolve()
    return folder.parent.parent / EXPORT_FOLDER / dandi_path(folder.parent.name, folder.name, ophys)


def build_nwb(session: SessionFolder, out: Path) -> NWBFile:
    """The NWB file of a session (not written); `out` is where it will be, for the imaging files' links."""
    settings = session.settings
    trials = exported_trials(session.trials)
    care = SessionCare.from_info(session.info)
    if care.delivered_ul is None:  # sessions from before the rig recorded it
        care = SessionCare(care.weight_g, session_water_ul(trials, valve_curves(settings)),
                           care.supplementary_ul)
    meta = settings.metadata
    nwb = NWBFile(
        session_description=session_description(session), identifier=identifier(session),
        session_start_time=start_time(session), session_id=session.name,
        experimenter=list(meta.experimenter) or None, lab=meta.lab, institution=meta.institution,
        experiment_description="Head-fixed mice lick left or right after a delay, by a cue (pole position or "
                               "tone) whose mapping is the task context; ALM is imaged with two photons and "
                               "upcoming lick direction is decoded online from delay activity.",
        keywords=["directional licking", "motor planning", "ALM", "two-photon", "Bpod",
                  *(["simulated"] if session.simulated else [])],
        notes=f"{care.describe()}. Times are seconds on the Bpod session clock, which the rig resets when it "
              "connects to the Bpod, moments after session_start_time.",
        source_script=f"rig export-nwb (rig {__version__})",
        source_script_file_name="rig/nwb/writer.py", subject=make_subject(session, care),
    )
    wiring = settings.wiring
    add_behaviour(nwb, trials, settings.task.timing.model_dump(), valve_curves(settings),
                  {side: wiring.lick(side) for side in SIDES}, _task_program(settings))
    _add_water(nwb, care)
    trial_starts = {t.trial: float(t.trial_start_s) for t in trials if t.trial_start_s is not None}
    imaging_meta = ImagingMetadata(location=meta.imaging_location, indicator=meta.indicator,
                                   excitation_lambda_nm=meta.excitation_lambda_nm,
                                   emission_lambda_nm=meta.emission_lambda_nm)
    add_imaging(nwb, session, trial_starts, imaging_meta, settings.imaging, out.parent)
    add_decoding(nwb, session.decoder, session.decisions, session.coding_directions, trial_starts)
    return nwb


def _task_program(settings: Settings) -> TaskProgram:
    """The task and context settings (YAML, as in settings.yaml), with the JSON schema of the task's model."""
    program = {"task": settings.task.model_dump(mode="json"),
               "contexts": {name: c.model_dump(mode="json") for name, c in settings.contexts.items()}}
    return TaskProgram(text=yaml.safe_dump(program, sort_keys=False), language="YAML",
                       schema=json.dumps(TaskSettings.model_json_schema()), schema_version=__version__)


def _add_water(nwb: NWBFile, care: SessionCare) -> None:
    module = nwb.create_processing_module("behavior", "the subject's care in this session")
    sources = [("valves", care.delivered_ul), ("supplementary", care.supplementary_ul)]
    module.add(DynamicTable(name="Water", description="water the subject got this session (uL; NaN: not "
                            "recorded): from the reward valves, by their calibrated open times, and after it",
                            columns=[VectorData(name="source", description="valves or supplementary",
                                                data=[s for s, _ in sources]),
                                     VectorData(name="volume_ul", description="water (uL)",
                                                data=[math.nan if v is None else v for _, v in sources])]))


def export_session(folder: str | Path, out: str | Path | None = None) -> Exported:
    """Write one session's NWB file (replacing an earlier export of it); returns where."""
    session = read_session(folder)
    if not session.trials:
        raise UserError(f"{session.folder}: no trials recorded; nothing to export")
    ophys = bool(session.planes or session.traces)
    path = Path(out) if out is not None else default_path(session.folder, ophys)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # tables are linked before they are placed in the file: harmless
        warnings.filterwarnings("ignore", message="The linked table for DynamicTableRegion")
        nwb = build_nwb(session, path)
    tmp = path.with_name(f".{path.stem}.tmp.nwb")
    try:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s -> %s", session.folder, path)
    return Exported(session.folder, path, len(exported_trials(session.trials)), len(session.planes))


def session_folders(subject_dir: Path) -> list[Path]:
    """The subject's session folders (those with a session.json), oldest first."""
    return sorted(p for p in Path(subject_dir).iterdir() if (p / SESSION_FILE).is_file())


def export_subject(subject_dir: str | Path) -> list[Exported]:
    """Export every session of a subject that has ended and has no NWB file yet."""
    subject_dir = Path(subject_dir)
    done = []
    for folder in session_folders(subject_dir):
        if any(default_path(folder, ophys).exists() for ophys in (True, False)):
            continue
        session = read_session(folder)
        if session.info.get("ended") is None:
            log.info("%s: not ended (running, or killed and not yet recovered); skipped", folder)
            continue
        if not session.trials:
            log.info("%s: no trials; skipped", folder)
            continue
        done.append(export_session(folder))
    return done
