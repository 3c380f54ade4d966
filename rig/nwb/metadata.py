"""The file-level metadata of an exported session: the subject, the session's description and clock, the
care it got (weight, water), and the DANDI file name.

Simulated sessions export too, said so in the session description and keywords; a simulated subject with
no recorded description is an unknown-sex mouse of unknown age ("P0D/": at least zero days), never an
invented one.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any

from pynwb.file import Subject

from rig.errors import UserError
from rig.nwb.source import SessionFolder
from rig.subject_info import SubjectInfo, parse_subject_info

log = logging.getLogger(__name__)

SIMULATED_MARK = "SIMULATED SESSION (emulated Bpod, simulated mouse and microscope)"
_NOT_DANDI = re.compile(r"[^A-Za-z0-9-]+")


def dandi_label(text: str) -> str:
    """An id as DANDI file names take it: letters, digits and '-' only."""
    return _NOT_DANDI.sub("-", text).strip("-") or "unknown"


def dandi_path(subject: str, session: str, ophys: bool) -> Path:
    """`sub-<id>/sub-<id>_ses-<id>_behavior+ophys.nwb` (DANDI's layout), relative to the export folder."""
    sub, ses = dandi_label(subject), dandi_label(session)
    modality = "behavior+ophys" if ophys else "behavior"
    return Path(f"sub-{sub}") / f"sub-{sub}_ses-{ses}_{modality}.nwb"


@dataclass(frozen=True)
class SessionCare:
    """Weight before the session and the water the subject got (uL)."""

    weight_g: float | None
    delivered_ul: float | None
    supplementary_ul: float | None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> SessionCare:
        water = info.get("water") if isinstance(info.get("water"), dict) else {}
        def number(value: Any) -> float | None:
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        return cls(number(info.get("weight_g")), number(water.get("delivered_ul")),
                   number(water.get("supplementary_ul")))

    def describe(self) -> str:
        def part(value: float | None, unit: str) -> str:
            return f"{value:g} {unit}" if value is not None else "not recorded"
        return (f"weight before the session: {part(self.weight_g, 'g')}; water from the valves (calibrated "
                f"open times): {part(self.delivered_ul, 'uL')}; supplementary water: "
                f"{part(self.supplementary_ul, 'uL')}")


def subject_info(session: SessionFolder) -> SubjectInfo | None:
    """The subject's recorded info (subject.json `info`), None when there is none."""
    info = session.subject_record.get("info")
    if not info:
        return None
    return parse_subject_info(info, f"{session.folder.parent / 'subject.json'} info")


def start_time(session: SessionFolder) -> datetime:
    """When the session started, with the host's time zone (session.json keeps local time)."""
    text = session.info.get("started")
    try:
        started = datetime.fromisoformat(str(text))
    except ValueError:
        raise UserError(f"{session.folder / 'session.json'}: 'started' {text!r} is not a date and "
                        "time") from None
    return started if started.tzinfo is not None else started.astimezone()


def make_subject(session: SessionFolder, care: SessionCare) -> Subject:
    info = subject_info(session)
    weight = f"{care.weight_g:g} g" if care.weight_g is not None else None
    if info is None:
        if not session.simulated:
            log.warning("subject %s has no species, sex, birth or genotype in subject.json (info); they are "
                        "exported as unknown", session.subject)
        what = "simulated mouse" if session.simulated else "subject without a recorded description"
        return Subject(subject_id=session.subject, species="Mus musculus", sex="U", age="P0D/",
                       description=what, genotype="unknown", weight=weight)
    born = (datetime.combine(info.date_of_birth, time()).astimezone() if info.date_of_birth is not None
            else None)
    return Subject(subject_id=session.subject, species=info.species, sex=info.sex, age=info.age,
                   date_of_birth=born, genotype=info.genotype, strain=info.strain, weight=weight,
                   description="simulated mouse" if session.simulated else None)


def session_description(session: SessionFolder) -> str:
    contexts = sorted({t.context for t in session.trials if t.context})
    text = (f"Delayed-response directional licking, {len(session.trials)} trials, contexts: "
            f"{', '.join(contexts) or 'none'}; ended: {session.info.get('end_reason') or 'unknown'}")
    return f"{SIMULATED_MARK}. {text}" if session.simulated else text


def identifier(session: SessionFolder) -> str:
    """The same id for the same session at every export (a re-export replaces, it does not duplicate)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rig-session:{session.subject}/{session.name}"))
