"""ScanImage text parsing: MATLAB literals, key = value headers, descriptions, layouts, real headers."""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from pathlib import Path

import pytest

from hardware.scanimage.header import (
    FLAVOR_JSON,
    FLAVOR_SI,
    FLAVOR_SI3,
    MatlabValueError,
    acquisition_layout,
    format_matlab_value,
    parse_frame_description,
    parse_key_value_text,
    parse_matlab_value,
    parse_static_metadata,
    split_static_text,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BERGAMO_HEADER = DATA / "scanimage2022_bergamo_header.txt.gz"
BERGAMO_FRAME0 = DATA / "scanimage2022_bergamo_frame0_description.txt"
needs_data = pytest.mark.skipif(not BERGAMO_HEADER.is_file(), reason="shared sample data not present")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("-3", -3),
        ("30.0119", 30.0119),
        ("8e+07", 8e7),
        ("6.31062e-05", 6.31062e-05),
        ("-0.000021560", -0.00002156),
        ("Inf", math.inf),
        ("-Inf", -math.inf),
        ("true", True),
        ("false", False),
        ("''", ""),
        ("'loop'", "loop"),
        ("'$scim_colorMap(''gray'',8,5)'", "$scim_colorMap('gray',8,5)"),
        ("'F:\\Backup\\config\\a b.cfg'", "F:\\Backup\\config\\a b.cfg"),
        ("[]", []),
        ("{}", []),
        ("[1 2]", [1, 2]),
        ("[1;2]", [1, 2]),
        ("[2023  7 24 14 14 17.854]", [2023, 7, 24, 14, 14, 17.854]),
        ("[200 Inf]", [200, math.inf]),
        ("[true true]", [True, True]),
        ("[-9 -9;9 -9;9 9;-9 9]", [[-9, -9], [9, -9], [9, 9], [-9, 9]]),
        ("{'green' 'red'}", ["green", "red"]),
        ("{[0 130] [-3 900]}", [[0, 130], [-3, 900]]),
        ("{14 14 14 14}", [14, 14, 14, 14]),
        ("{{'dat_roi_50'}}", [["dat_roi_50"]]),
        ("{'a','b';'c','d'}", [["a", "b"], ["c", "d"]]),
        ("zeros(1,0)", []),
        ("zeros(0,2)", []),
        ("zeros(1,3)", [0, 0, 0]),
        ("scanimage.types.BeamAdjustTypes.None", "scanimage.types.BeamAdjustTypes.None"),
        (
            "[scanimage.types.BeamAdjustTypes.Exponential scanimage.types.BeamAdjustTypes.None]",
            ["scanimage.types.BeamAdjustTypes.Exponential", "scanimage.types.BeamAdjustTypes.None"],
        ),
        ("{'@(vals,varargin)f(vals)'}", ["@(vals,varargin)f(vals)"]),
    ],
)
def test_matlab_literals(text: str, expected: object) -> None:
    value = parse_matlab_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_nan_is_a_float() -> None:
    assert math.isnan(parse_matlab_value("NaN"))
    assert math.isnan(parse_matlab_value("[1 NaN]")[1])


@pytest.mark.parametrize("text", ["[1 2", "{'a'", "'open", "[1 2]]", "1 2", "a+b*", "[1 (2]"])
def test_malformed_literals_raise(text: str) -> None:
    with pytest.raises(MatlabValueError):
        parse_matlab_value(text)


@pytest.mark.parametrize(
    "value",
    [1, -2.5, 30.0119, math.inf, -math.inf, True, False, "it's", "", [1, 2, 3], [[1, 2], [3, 4]], ["a", "b"],
     [[0, 130], [-3, 900, 1]], 1e-06, 8e7],
)  # fmt: skip
def test_format_round_trips(value: object) -> None:
    assert parse_matlab_value(format_matlab_value(value)) == value


def test_format_column_vector_and_none() -> None:
    assert format_matlab_value([1, 2], column=True) == "[1;2]"
    assert format_matlab_value(None) == "[]"
    assert format_matlab_value(30.0) == "30"


def test_malformed_lines_are_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    text = "SI.a = 1\nthis line has no equals sign\nSI.b = [1 2\nSI.c = 'ok'\n"
    with caplog.at_level(logging.WARNING):
        parsed = parse_key_value_text(text)
    assert parsed.values["SI.a"] == 1 and parsed.values["SI.c"] == "ok"
    assert parsed.values["SI.b"] == "[1 2"  # unparsed value kept as text
    assert [m.line_number for m in parsed.malformed] == [2, 3]
    assert "2 malformed line(s)" in caplog.text


def test_scanimage3_carriage_return_header() -> None:
    text = "state.configName='ajdm'\rstate.acq.frameRate=8.13802083333333\rstate.acq.numberOfFrames=30\r"
    text += "state.acq.savingChannel1=0\rstate.acq.savingChannel2=1\rstate.motor.absZZPosition=NaN\r"
    static = parse_static_metadata(text)
    assert static.flavor == FLAVOR_SI3
    assert static.values["state.acq.frameRate"] == pytest.approx(8.13802083333333)
    assert static.values["state.acq.numberOfFrames"] == 30
    assert math.isnan(static.values["state.motor.absZZPosition"])
    layout = acquisition_layout(static.values)
    assert layout.channels == (2,) and layout.planes == 1
    assert layout.frame_rate_hz == pytest.approx(8.13802083333333)
    assert static.rois == {}


def test_static_text_with_roi_json() -> None:
    text = 'SI.VERSION_MAJOR = 2022\nSI.VERSION_MINOR = 1\n\n{\n  "RoiGroups": {"imagingRoiGroup": {}}\n}'
    si, roi = split_static_text(text)
    assert si.strip() == "SI.VERSION_MAJOR = 2022\nSI.VERSION_MINOR = 1" and roi.startswith("{")
    static = parse_static_metadata(text)
    assert static.flavor == FLAVOR_SI
    assert static.rois == {"RoiGroups": {"imagingRoiGroup": {}}}
    assert acquisition_layout(static.values).version == "2022.1"


def test_json_2018a_static_and_description() -> None:
    static_json = {"SI": {"VERSION_MAJOR": "2018a", "VERSION_MINOR": 0, "hChannels": {"channelSave": [1, 2]},
                          "hRoiManager": {"scanFrameRate": 15.0, "linesPerFrame": 256},
                          "hScan2D": {"logFramesPerFile": "_Inf_"}},
                   "RoiGroups": {"imagingRoiGroup": {"name": "g"}}}  # fmt: skip
    static = parse_static_metadata(json.dumps(static_json))
    assert static.flavor == FLAVOR_JSON
    assert static.values["SI.hChannels.channelSave"] == [1, 2]
    assert static.values["SI.hScan2D.logFramesPerFile"] == math.inf
    assert static.rois["RoiGroups"]["imagingRoiGroup"]["name"] == "g"
    layout = acquisition_layout(static.values)
    assert layout.channels == (1, 2) and layout.frame_rate_hz == 15.0 and layout.version == "2018a.0"

    description = (
        '{\n  "frameNumbers": 3,\n  "acquisitionNumbers": 1,\n  "frameNumberAcquisition": 3,\n'
        '  "frameTimestamps_sec": 0.133000000,\n  "acqTriggerTimestamps_sec": -0.000087000,\n'
        '  "nextFileMarkerTimestamps_sec": -1.000000000,\n  "endOfAcquisition": 0,\n'
        '  "epoch": [2018,10, 9,11,58,49.866],\n  "auxTrigger0": [0.1,0.12],\n  "auxTrigger1": [],\n'
        '  "auxTrigger2": [],\n  "auxTrigger3": [],\n  "I2CData": []\n}'
    )
    meta = parse_frame_description(description)
    assert meta.flavor == FLAVOR_JSON
    assert meta.frame_number == 3 and meta.timestamp_s == pytest.approx(0.133)
    assert meta.acq_trigger_timestamp_s == pytest.approx(-0.000087)
    assert meta.next_file_marker_timestamp_s is None
    assert meta.aux_triggers[0] == (0.1, 0.12)
    assert meta.epoch_datetime is not None and meta.epoch_datetime.year == 2018
    wrapped = parse_frame_description(json.dumps({"FrameHeader": {"frameNumbers": 7}}))
    assert wrapped.frame_number == 7


def test_description_with_aux_triggers_and_padding() -> None:
    text = (
        "frameNumbers = 12\nacquisitionNumbers = 2\nframeNumberAcquisition = 4\n"
        "frameTimestamps_sec = 0.400000000\nacqTriggerTimestamps_sec = 0.250000000\n"
        "nextFileMarkerTimestamps_sec = -1.000000000\nendOfAcquisition = 1\nendOfAcquisitionMode = 0\n"
        "dcOverVoltage = 0\nepoch = [2024  1  2  3  4  5.500]\nauxTrigger0 = [0.401000000 0.402500000]\n"
        "auxTrigger1 = []\nauxTrigger2 = 0.41\nauxTrigger3 = []\nI2CData = {}\n" + " " * 500
    )
    meta = parse_frame_description(text)
    assert (meta.frame_number, meta.acquisition_number, meta.frame_number_acquisition) == (12, 2, 4)
    assert meta.timestamp_s == 0.4 and meta.acq_trigger_timestamp_s == 0.25
    assert meta.end_of_acquisition and not meta.end_of_acquisition_mode
    assert meta.aux_triggers == ((0.401, 0.4025), (), (0.41,), ())
    assert str(meta.epoch_datetime) == "2024-01-02 03:04:05.500000"
    assert meta.malformed == 0
    assert meta.to_dict()["aux_triggers"][0] == [0.401, 0.4025]


def test_scanimage3_description_is_empty_metadata() -> None:
    meta = parse_frame_description("state.configName='x'\rstate.acq.frameRate=4\r")
    assert meta.flavor == FLAVOR_SI3 and meta.timestamp_s is None and meta.frame_number is None


def test_layout_fast_z_and_flyback() -> None:
    values = {
        "SI.hChannels.channelSave": [1, 2],
        "SI.hFastZ.enable": True,
        "SI.hStackManager.actualNumSlices": 4,
        "SI.hFastZ.numDiscardFlybackFrames": 1,
        "SI.hFastZ.discardFlybackFrames": False,
        "SI.hRoiManager.scanFrameRate": 50.0,
        "SI.hRoiManager.scanVolumeRate": 10.0,
    }
    layout = acquisition_layout(values)
    assert (layout.planes, layout.flyback_planes, layout.imaging_planes) == (5, 1, 4)
    assert layout.frame_rate_hz == 10.0 and layout.pages_per_frame == 10
    assert layout.page_position(23) == (2, 1, 1)
    assert layout.page_index(2, 1, 1) == 23
    discarded = acquisition_layout({**values, "SI.hFastZ.discardFlybackFrames": True})
    assert (discarded.planes, discarded.flyback_planes) == (4, 0)
    no_volume_rate = {k: v for k, v in values.items() if k != "SI.hRoiManager.scanVolumeRate"}
    assert acquisition_layout(no_volume_rate).frame_rate_hz == pytest.approx(10.0)
    slow = acquisition_layout({"SI.hStackManager.enable": True, "SI.hStackManager.stackMode": "slow"})
    assert slow.planes == 1 and slow.notes


@needs_data
def test_real_bergamo_header_parses_fast_to_typed_values() -> None:
    with gzip.open(BERGAMO_HEADER, "rt", encoding="utf-8") as fh:
        text = fh.read()
    assert text.count("\n") > 19_000
    # CPU time, not wall time: other test processes on a small CI machine must not make this flaky
    start = time.process_time()
    static = parse_static_metadata(text)
    si_only = time.process_time() - start
    rois = static.rois  # the ~2 MB ROI JSON (855k integers of integration masks), parsed on first access
    elapsed = time.process_time() - start
    assert elapsed < 0.5, f"parsing the full Bergamo header took {elapsed:.3f} s of CPU"
    assert si_only < 0.15, f"parsing the SI.* part took {si_only:.3f} s of CPU"
    values = static.values
    assert static.malformed == []
    assert values["SI.hRoiManager.scanFrameRate"] == pytest.approx(30.0119)
    assert values["SI.hRoiManager.linesPerFrame"] == 512
    assert values["SI.hChannels.channelSave"] == 1
    assert values["SI.acqState"] == "loop"
    assert values["SI.hScan2D.logFramesPerFile"] == math.inf
    assert values["SI.extTrigEnable"] == 1
    assert values["SI.hScan2D.channelsDataType"] == "int16"
    assert values["SI.hChannels.channelOffset"] == [-192, -380]
    assert values["SI.hMotionManager.motionMarkersXY"] == []
    assert set(rois["RoiGroups"]) == {"imagingRoiGroup", "photostimRoiGroups", "integrationRoiGroup"}
    layout = acquisition_layout(values)
    assert layout.version == "2022.1.0" and layout.channels == (1,) and layout.planes == 1
    assert layout.frame_rate_hz == pytest.approx(30.0119) and layout.acq_state == "loop"


@needs_data
def test_real_frame0_description() -> None:
    text = BERGAMO_FRAME0.read_text()
    assert len(text) == 2000  # space-padded as ScanImage writes it
    meta = parse_frame_description(text)
    assert (meta.frame_number, meta.acquisition_number, meta.frame_number_acquisition) == (1, 1, 1)
    assert meta.timestamp_s == 0.0
    assert meta.acq_trigger_timestamp_s == pytest.approx(-0.00002156)
    assert meta.next_file_marker_timestamp_s is None
    assert meta.aux_triggers == ((), (), (), ())
    assert meta.i2c_data == []
    assert meta.epoch == (2023, 7, 24, 14, 14, 17.854)
    assert str(meta.epoch_datetime) == "2023-07-24 14:14:17.854000"
    assert not meta.end_of_acquisition and meta.malformed == 0
