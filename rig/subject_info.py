"""Who the subject is and what it got: the facts an NWB export (and a lab's animal records) need.

`SubjectInfo` (species, sex, date of birth or age, genotype, strain) is kept in the subject's record
(subject.json `info`); `SessionCare` (weight before the session, supplementary water after it) in the
session's session.json, beside the water the valves delivered (`water.delivered_ul`, computed by the rig
from the calibrated valve times, rig/water.py). On a real rig `rig run` asks for what is missing
(`ask_subject_info`, `ask_weight`, `ask_supplementary_water`); a simulated session asks nothing. Every
value is validated, and a bad one is answered with one sentence naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hardware.settings import date_from_text
from rig.errors import UserError
from rig.store import SESSION_FILE, read_json, write_json_atomic

_DURATION = r"P(?=\d)(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?"
_ISO_AGE = re.compile(f"{_DURATION}(?:/(?:{_DURATION})?)?")
_BINOMIAL = re.compile(r"[A-Z][a-z]+ [a-z]+( [a-z]+)?|http://purl\.obolibrary\.org/obo/NCBITaxon_\d+")
MAX_WEIGHT_G = 100.0
"""Above this a weight is a typo (kilograms or milligrams), not a mouse or a rat pup."""
MAX_SUPPLEMENT_UL = 5000.0


class SubjectInfo(BaseModel):
    """The subject's description, as DANDI asks for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    species: str = "Mus musculus"
    """Latin binomial (Mus musculus) or an NCBI Taxonomy URL."""
    sex: Literal["M", "F", "U", "O"]
    """M, F, U (unknown) or O (other)."""
    date_of_birth: date | None = None
    """Day of birth (YYYY-MM-DD); or give age."""
    age: str | None = None
    """Age at the first session as an ISO 8601 duration (P90D, P12W), when the birth date is not known."""
    genotype: str = Field(min_length=1, max_length=200)
    """Genotype (e.g. wild type, or Thy1-GCaMP6s GP4.3 +/-)."""
    strain: str | None = Field(None, max_length=200)
    """Strain (e.g. C57BL/6J)."""

    _date = field_validator("date_of_birth", mode="before")(date_from_text)

    @field_validator("date_of_birth")
    @classmethod
    def _not_future(cls, value: date | None) -> date | None:
        if value is not None and value > date.today():
            raise ValueError("is in the future")
        return value

    @field_validator("species")
    @classmethod
    def _species(cls, value: str) -> str:
        if not _BINOMIAL.fullmatch(value):
            raise ValueError("must be a Latin binomial such as 'Mus musculus' or an NCBI Taxonomy URL")
        return value

    @field_validator("age")
    @classmethod
    def _age(cls, value: str | None) -> str | None:
        if value is not None and not _ISO_AGE.fullmatch(value):
            raise ValueError("must be an ISO 8601 duration such as P90D or P12W")
        return value

    @model_validator(mode="after")
    def _birth_or_age(self) -> SubjectInfo:
        if self.date_of_birth is None and self.age is None:
            raise ValueError("give date_of_birth or age")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_subject_info(data: Mapping[str, Any], where: str) -> SubjectInfo:
    """From subject.json's `info`; a UserError naming `where` and the field when it is not valid."""
    try:
        return SubjectInfo.model_validate(dict(data))
    except ValidationError as exc:
        raise UserError(f"{where}: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(p) for p in error["loc"]) or "info"
    return f"{key}: {error['msg'].removeprefix('Value error, ')}"


Ask = Callable[[str], str]
"""Asks one question and returns the answer (`input` at the terminal)."""


def ask_subject_info(current: Mapping[str, Any] | None, ask: Ask) -> SubjectInfo:
    """The subject's info, asking for each missing field (again until the answer is valid)."""
    data: dict[str, Any] = dict(current or {})
    questions = (("species", "species [Mus musculus]: "), ("sex", "sex (M, F, U, O): "),
                 ("date_of_birth", "date of birth (YYYY-MM-DD, empty if unknown): "),
                 ("genotype", "genotype: "), ("strain", "strain (empty if none): "))
    for key, question in questions:
        answered = data.get(key) not in (None, "") or (key == "strain" and key in data)
        if answered or (key == "date_of_birth" and data.get("age")):
            continue
        answer = ask(question).strip()
        if key == "species" and not answer:
            answer = "Mus musculus"
        if answer:
            data[key] = answer
        elif key == "date_of_birth" and data.get("age") is None:
            data["age"] = ask("age at this session (ISO 8601, e.g. P90D): ").strip() or None
    while True:
        try:
            return SubjectInfo.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = str(error["loc"][0]) if error["loc"] else "date_of_birth"
            problem = error["msg"].removeprefix("Value error, ")
            answer = ask(f"{key}: {problem}; {key}: ").strip()
            data[key] = answer or None


def check_weight_g(value: float) -> float:
    if not 0 < value <= MAX_WEIGHT_G:
        raise UserError(f"weight {value:g} g: must be more than 0 and at most {MAX_WEIGHT_G:g} g")
    return value


def check_supplement_ul(value: float) -> float:
    if not 0 <= value <= MAX_SUPPLEMENT_UL:
        raise UserError(f"supplementary water {value:g} uL: must be 0 to {MAX_SUPPLEMENT_UL:g} uL")
    return value


def _ask_number(ask: Ask, question: str, check: Callable[[float], float]) -> float:
    while True:
        answer = ask(question).strip()
        try:
            return check(float(answer))
        except ValueError:
            question = f"{answer!r} is not a number; {question}"
        except UserError as exc:
            question = f"{exc}; {question}"


def ask_weight(ask: Ask) -> float:
    """The subject's weight before the session (g)."""
    return _ask_number(ask, "weight before the session (g): ", check_weight_g)


def ask_supplementary_water(ask: Ask, delivered_ul: float | None) -> float:
    """Water given after the session, beside the valves' (uL)."""
    got = f" (the valves gave {delivered_ul:g} uL)" if delivered_ul is not None else ""
    return _ask_number(ask, f"supplementary water given after the session{got} (uL, 0 for none): ",
                       check_supplement_ul)


def record_supplementary_water(session_folder: Path, ul: float) -> None:
    """Write the supplementary water into the session's session.json (water.supplementary_ul)."""
    path = Path(session_folder) / SESSION_FILE
    info = read_json(path)
    water = dict(info.get("water") or {})
    water["supplementary_ul"] = check_supplement_ul(ul)
    write_json_atomic(path, {**info, "water": water})
