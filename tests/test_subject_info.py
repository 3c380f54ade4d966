"""The subject's description (species, sex, birth or age, genotype), its weight and supplementary water:
validated, asked for where missing, kept in subject.json and session.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from protocols.training import SubjectTrainingState
from rig.errors import UserError
from rig.subject import SubjectRecord, load_subject, save_subject
from rig.subject_info import (
    SubjectInfo,
    ask_subject_info,
    ask_supplementary_water,
    ask_weight,
    parse_subject_info,
    record_supplementary_water,
)


def answers(*replies: str) -> Callable[[str], str]:
    """An `ask` that gives these replies in order and records the questions."""
    left = list(replies)

    def ask(question: str) -> str:
        ask.questions.append(question)  # type: ignore[attr-defined]
        return left.pop(0)

    ask.questions = []  # type: ignore[attr-defined]
    return ask


def test_valid_info_and_each_bad_field_named() -> None:
    info = SubjectInfo.model_validate({"sex": "F", "date_of_birth": "2026-01-02", "genotype": "wild type"})
    assert info.species == "Mus musculus" and info.date_of_birth == date(2026, 1, 2)
    assert SubjectInfo(sex="M", age="P90D", genotype="Thy1-GCaMP6s +/-").age == "P90D"
    bad = {"sex": ({"sex": "male"}, "sex"), "age": ({"age": "90 days"}, "age: must be an ISO 8601"),
           "species": ({"species": "mouse"}, "species: must be a Latin binomial"),
           "future": ({"date_of_birth": (date.today() + timedelta(days=2)).isoformat()}, "in the future"),
           "neither": ({"age": None}, "give date_of_birth or age")}
    for data, words in bad.values():
        with pytest.raises(UserError, match=words):
            parse_subject_info({"sex": "M", "age": "P60D", "genotype": "wt", **data}, "subject m1")


def test_missing_fields_are_asked_and_a_bad_answer_is_asked_again() -> None:
    ask = answers("", "X", "", "P12W", "wild type", "C57BL/6J", "F")
    info = ask_subject_info({"genotype": None}, ask)
    assert info == SubjectInfo(species="Mus musculus", sex="F", age="P12W", genotype="wild type",
                               strain="C57BL/6J")
    assert ask.questions[-1].startswith("sex: ")  # type: ignore[attr-defined]
    assert ask_subject_info(info.to_json(), answers()) == info  # nothing missing: nothing asked


def test_weight_and_water_are_checked_and_recorded(tmp_path: Path) -> None:
    assert ask_weight(answers("heavy", "2500", "23.4")) == 23.4
    assert ask_supplementary_water(answers("-1", "300"), 65.0) == 300.0
    (tmp_path / "session.json").write_text(json.dumps({"water": {"delivered_ul": 65.0}}))
    record_supplementary_water(tmp_path, 300.0)
    assert json.loads((tmp_path / "session.json").read_text())["water"] == {"delivered_ul": 65.0,
                                                                           "supplementary_ul": 300.0}
    with pytest.raises(UserError, match="supplementary water"):
        record_supplementary_water(tmp_path, 1e6)


def test_subject_record_keeps_the_description(tmp_path: Path) -> None:
    info = SubjectInfo(sex="M", age="P90D", genotype="wt").to_json()
    state = SubjectTrainingState(stage="full", context="tactile")
    save_subject(tmp_path, SubjectRecord("m1", state, info=info))
    loaded = load_subject(tmp_path, "m1")
    assert loaded is not None and loaded.info == info


def test_rig_run_on_a_real_rig_asks_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from rig import cli
    from rig.session import RunOptions
    from rig.settings import load_settings

    settings, options = load_settings(), RunOptions(subject="m1", data_root=tmp_path)
    replies = iter(["", "F", "2026-01-02", "wild type", "", "23.0"])
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: next(replies))
    asked = cli._ask_subject_care(settings, options, None)
    assert asked.weight_g == 23.0
    assert asked.subject_info == {"species": "Mus musculus", "sex": "F", "date_of_birth": "2026-01-02",
                                  "age": None, "genotype": "wild type", "strain": None}
    monkeypatch.setattr(cli, "_interactive", lambda: False)
    unasked = cli._ask_subject_care(settings, options, 21.0)
    assert unasked.weight_g == 21.0 and unasked.subject_info is None
    assert "no species, sex, birth or genotype" in caplog.text
    with pytest.raises(UserError, match="weight"):
        cli._ask_subject_care(settings, options, 250.0)
