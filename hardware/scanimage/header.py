"""Pure parsing of ScanImage metadata text into typed Python values.

ScanImage stores its settings as MATLAB literals (`SI.key = value` lines, or `state.key=value` separated by
carriage returns in ScanImage 3.x, or JSON in the 2018a "resj" variant) and the frame-varying data as a short
`key = value` description per page. Everything here works on strings only, so the reader, the writer and the
folder follower share one interpretation and it can be tested without files. A line that does not parse is
reported (logged and counted in `malformed`), never fatal: one odd setting must not cost a recording.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

logger = logging.getLogger(__name__)

_LINE_SPLIT = re.compile(r"\r\n|\r|\n")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:\(\d+\)[\w.]*)*)\s*=\s?(.*)$")
_INT = re.compile(r"[+-]?\d+$")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_SPECIAL_NUMBERS = {"Inf": math.inf, "+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan, "-NaN": math.nan}
_JSON_SPECIAL = {"_NaN_": math.nan, "_Inf_": math.inf, "_-Inf_": -math.inf}
_DELIMITERS = frozenset(" \t,;]}\n\r")
_NUMERIC_ARRAY = re.compile(r"\[[-+\d\s.,;eEInfNa]*\]$")  # [1 2;3 4], [200 Inf]: the common case
_SIZE_CALL = re.compile(r"(zeros|ones|false|true|NaN|nan)\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)$")


class MatlabValueError(ValueError):
    """Text that is not a MATLAB literal this parser understands."""


@dataclass(frozen=True)
class MalformedLine:
    """One line that could not be parsed, with the reason; kept so callers can count and show them."""

    line_number: int
    text: str
    reason: str


# --------------------------------------------------------------------------------------------------------
# MATLAB literals
# --------------------------------------------------------------------------------------------------------


def _convert_token(token: str) -> Any:
    """A bare token: number, Inf/NaN, logical, `zeros(m,n)`-style constructor or an identifier (enum name)."""
    if _INT.match(token):
        return int(token)
    if _FLOAT.match(token):
        return float(token)
    special = _SPECIAL_NUMBERS.get(token)
    if special is not None:
        return special
    if token == "true":
        return True
    if token == "false":
        return False
    call = _SIZE_CALL.match(token)
    if call is not None:
        name, rows, cols = call.group(1), int(call.group(2)), int(call.group(3) or call.group(2))
        fill: Any = {"zeros": 0, "ones": 1, "false": False, "true": True}.get(name, math.nan)
        if rows == 0 or cols == 0:
            return []
        if rows == 1:
            return [fill] * cols
        if cols == 1:
            return [fill] * rows
        return [[fill] * cols for _ in range(rows)]
    if re.match(r"^[A-Za-z_@][\w.@]*$", token):
        return token  # an enumeration member or function handle, e.g. scanimage.types.BeamAdjustTypes.None
    raise MatlabValueError(f"unknown token {token!r}")


class _Parser:
    """Recursive-descent parser over one value string; positions index into `text`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> MatlabValueError:
        return MatlabValueError(f"{message} at column {self.pos + 1} of {self.text[:60]!r}")

    def skip_spaces(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        self.pos = pos

    def value(self) -> Any:
        self.skip_spaces()
        if self.pos >= len(self.text):
            raise self.error("value expected")
        char = self.text[self.pos]
        if char == "[":
            return self.sequence("]")
        if char == "{":
            return self.sequence("}")
        if char in "'\"":
            return self.string(char)
        return self.token()

    def string(self, quote: str) -> str:
        text = self.text
        pos = self.pos + 1
        parts: list[str] = []
        while True:
            end = text.find(quote, pos)
            if end < 0:
                raise self.error("unterminated string")
            parts.append(text[pos:end])
            if end + 1 < len(text) and text[end + 1] == quote:  # '' inside a MATLAB string is one quote
                parts.append(quote)
                pos = end + 2
                continue
            self.pos = end + 1
            return "".join(parts)

    def token(self) -> Any:
        text = self.text
        start = pos = self.pos
        depth = 0
        while pos < len(text):
            char = text[pos]
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth < 0:
                    raise self.error("unbalanced ')'")
            elif depth == 0 and char in _DELIMITERS:
                break
            pos += 1
        if depth:
            raise self.error("unbalanced '('")
        self.pos = pos
        token = text[start:pos]
        if not token:
            raise self.error(f"unexpected {text[pos]!r}")
        try:
            return _convert_token(token)
        except MatlabValueError as exc:
            raise self.error(str(exc)) from None

    def sequence(self, close: str) -> list[Any]:
        """`[...]` arrays and `{...}` cells: rows split by `;`, elements by spaces or commas."""
        text = self.text
        self.pos += 1
        rows: list[list[Any]] = [[]]
        while True:
            self.skip_spaces()
            if self.pos >= len(text):
                raise self.error(f"missing {close!r}")
            char = text[self.pos]
            if char == close:
                self.pos += 1
                break
            if char in "]}":
                raise self.error(f"mismatched {char!r}")
            if char in ";\n\r":
                self.pos += 1
                rows.append([])
                continue
            if char == ",":
                self.pos += 1
                continue
            rows[-1].append(self.value())
        return _shape_rows(rows)


def _shape_rows(rows: list[list[Any]]) -> list[Any]:
    """MATLAB rows as Python: a row or column vector flat, a matrix as a list of rows, nothing as []."""
    rows = [row for row in rows if row]
    if not rows:
        return []
    if len(rows) == 1:
        return rows[0]  # row vector
    if all(len(row) == 1 for row in rows):
        return [row[0] for row in rows]  # column vector, e.g. channelSave = [1;2]
    return rows


def parse_matlab_value(text: str) -> Any:
    """Convert one MATLAB literal (as ScanImage prints it) into Python.

    Numbers become int or float (`Inf`, `NaN` included), `'text'` a str, `true`/`false` a bool, `[a b c]`
    and `[a;b]` a flat list, a matrix a list of rows, `{...}` cells nested lists, `[]`, `{}` and
    `zeros(1,0)` an empty list, and a bare identifier (an enumeration name) its text.
    Raises MatlabValueError on anything else, so callers decide whether that is fatal.
    """
    stripped = text.strip()
    if not stripped:
        return ""
    first = stripped[0]
    # fast paths: most header lines are plain scalars or simple strings
    if first == "'" and stripped[-1] == "'" and len(stripped) >= 2 and "'" not in stripped[1:-1]:
        return stripped[1:-1]
    if first not in "[{'\"" and " " not in stripped and "," not in stripped:
        return _convert_token(stripped)
    if stripped in ("[]", "{}"):
        return []
    if first == "[" and _NUMERIC_ARRAY.match(stripped):
        body = stripped[1:-1].replace(",", " ")
        return _shape_rows([[_convert_token(token) for token in row.split()] for row in body.split(";")])
    parser = _Parser(stripped)
    value = parser.value()
    parser.skip_spaces()
    if parser.pos != len(stripped):
        raise parser.error("unexpected text after the value")
    return value


def format_matlab_value(value: Any, *, column: bool = False) -> str:
    """The MATLAB literal for a Python value: the inverse of `parse_matlab_value` (used by the writer).

    `column=True` writes a flat list as a column vector (`[1;2]`), as ScanImage does for `channelSave`.
    """
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        value = value.tolist()
    if value is None:
        return "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, Mapping):
        raise MatlabValueError("a mapping has no MATLAB literal here; flatten it into dotted keys")
    if isinstance(value, Iterable):
        items = list(value)
        if not items:
            return "[]"
        scalar = (bool, int, float)
        if all(isinstance(item, scalar) for item in items):
            return "[" + (";" if column else " ").join(format_matlab_value(item) for item in items) + "]"
        rows_are_numeric = all(
            isinstance(row, (list, tuple)) and row and all(isinstance(item, scalar) for item in row)
            for row in items
        )
        if rows_are_numeric and len({len(row) for row in items}) == 1:
            return "[" + ";".join(" ".join(format_matlab_value(item) for item in row) for row in items) + "]"
        return "{" + " ".join(format_matlab_value(item) for item in items) + "}"
    raise MatlabValueError(f"no MATLAB literal for {type(value).__name__}")


# --------------------------------------------------------------------------------------------------------
# key = value text
# --------------------------------------------------------------------------------------------------------


@dataclass
class ParsedText:
    """Typed `key -> value` pairs plus the lines that did not parse (unparsed values kept as text)."""

    values: dict[str, Any] = field(default_factory=dict)
    malformed: list[MalformedLine] = field(default_factory=list)


def _report(malformed: list[MalformedLine], what: str) -> None:
    if not malformed:
        return
    first = "; ".join(f"line {m.line_number}: {m.reason}" for m in malformed[:3])
    more = f" (and {len(malformed) - 3} more)" if len(malformed) > 3 else ""
    logger.warning(
        "%s: %d malformed line(s) skipped or kept as text: %s%s", what, len(malformed), first, more
    )


def parse_key_value_text(text: str, *, what: str = "ScanImage text") -> ParsedText:
    """Parse `key = value` lines (any of \\n, \\r\\n, \\r as separators; space padding ignored).

    A line without `=` is malformed and skipped; a value that is not a MATLAB literal is kept as its text;
    both are reported. Later duplicates win, as when MATLAB evaluates the lines in order.
    """
    result = ParsedText()
    values = result.values
    for number, raw in enumerate(_LINE_SPLIT.split(text), start=1):
        line = raw.strip()
        if not line or line == "\x00":
            continue
        match = _KEY_VALUE.match(line)
        if match is None:
            result.malformed.append(MalformedLine(number, line[:200], "not a 'key = value' line"))
            continue
        key, raw_value = match.group(1), match.group(2)
        try:
            values[key] = parse_matlab_value(raw_value)
        except MatlabValueError as exc:
            values[key] = raw_value.strip()
            result.malformed.append(MalformedLine(number, line[:200], f"{key}: {exc}"))
    _report(result.malformed, what)
    return result


# --------------------------------------------------------------------------------------------------------
# static metadata: SI.* text + ROI JSON, 2018a JSON, ScanImage 3.x state.*
# --------------------------------------------------------------------------------------------------------

FLAVOR_SI = "si"  # ScanImage 2016+: `SI.key = value` lines
FLAVOR_JSON = "json"  # ScanImage 2018a "resj" files: JSON metadata and descriptions
FLAVOR_SI3 = "si3"  # ScanImage 3.x: `state.key=value` separated by carriage returns


@dataclass
class StaticMetadata:
    """The non-varying settings of an acquisition: flat dotted keys (`SI.hRoiManager.scanFrameRate`,
    `state.acq.frameRate`) with typed values, the ROI groups, and what did not parse.

    The ROI JSON is parsed on first access of `rois`: in real files it can be megabytes (integration and
    photostim ROI groups) and a frame follower that only needs the layout should not wait for it.
    """

    values: dict[str, Any]
    flavor: str
    malformed: list[MalformedLine] = field(default_factory=list)
    roi_text: str = ""
    _rois: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def rois(self) -> dict[str, Any]:
        if self._rois is None:
            try:
                self._rois = parse_roi_json(self.roi_text)
            except ValueError as exc:
                logger.warning("ScanImage ROI JSON does not parse (%s); ROIs left empty", exc)
                self.malformed.append(MalformedLine(0, self.roi_text[:200], f"ROI JSON: {exc}"))
                self._rois = {}
        return self._rois


def _json_specials(obj: Any) -> Any:
    """ScanImage's JSON writes non-finite numbers as the strings `_NaN_`, `_Inf_`, `_-Inf_`."""
    if isinstance(obj, dict):
        return {key: _json_specials(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_json_specials(item) for item in obj]
    if isinstance(obj, str):
        return _JSON_SPECIAL.get(obj, obj)
    return obj


def _json_objects(text: str) -> list[Any]:
    """All JSON values in `text`, which may hold several concatenated objects (SI settings, then ROIs)."""
    decoder = json.JSONDecoder()
    objects = []
    pos = 0
    text = text.replace("\x00", "")
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return objects
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            _flatten(f"{prefix}.{key}" if prefix else key, value, out)
    else:
        out[prefix] = obj


def parse_roi_json(text: str) -> dict[str, Any]:
    """The ROI-group JSON (`{"RoiGroups": {...}}`); empty text gives {}. Raises ValueError if not JSON."""
    stripped = text.replace("\x00", "").strip()
    if not stripped:
        return {}
    obj = json.loads(stripped)
    if not isinstance(obj, dict):
        raise ValueError("ROI data is not a JSON object")
    return obj


def split_static_text(text: str) -> tuple[str, str]:
    """Split `ScanImageTiffReader.metadata()` output (SI text, blank line, ROI JSON) into its two parts."""
    match = re.search(r"^[ \t]*\{", text, flags=re.MULTILINE)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.start() :]


def parse_static_metadata(text: str, roi_json: str | None = None) -> StaticMetadata:
    """Parse the static header in whichever flavor it comes: SI text (+ ROI JSON, in `text` after a blank
    line or given separately), JSON (2018a), or a ScanImage 3.x `state.*` string."""
    text = text.replace("\x00", "\n")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _parse_json_static(stripped, roi_json)
    if stripped.startswith("state."):
        parsed = parse_key_value_text(stripped, what="ScanImage 3.x header")
        return StaticMetadata(parsed.values, FLAVOR_SI3, parsed.malformed, _rois={})
    si_text, embedded_json = split_static_text(text)
    parsed = parse_key_value_text(si_text, what="ScanImage header")
    rois_text = roi_json if roi_json is not None else embedded_json
    return StaticMetadata(parsed.values, FLAVOR_SI, parsed.malformed, roi_text=rois_text)


def _parse_json_static(text: str, roi_json: str | None) -> StaticMetadata:
    values: dict[str, Any] = {}
    rois: dict[str, Any] = {}
    malformed: list[MalformedLine] = []
    try:
        objects = _json_objects(text)
    except ValueError as exc:
        logger.warning("ScanImage JSON header does not parse: %s", exc)
        return StaticMetadata({}, FLAVOR_JSON, [MalformedLine(0, text[:200], f"JSON: {exc}")], _rois={})
    for obj in objects:
        obj = _json_specials(obj)
        if not isinstance(obj, dict):
            malformed.append(MalformedLine(0, str(obj)[:200], "JSON value is not an object"))
            continue
        for key, value in obj.items():
            if key == "RoiGroups":
                rois["RoiGroups"] = value
            else:
                _flatten(key, value, values)
    if roi_json:
        try:
            rois = _json_specials(parse_roi_json(roi_json))
        except ValueError as exc:
            malformed.append(MalformedLine(0, roi_json[:200], f"ROI JSON: {exc}"))
    _report(malformed, "ScanImage JSON header")
    return StaticMetadata(values, FLAVOR_JSON, malformed, _rois=rois)


def find_value(values: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of `keys` present in `values` (so callers can list a key's spellings across versions)."""
    for key in keys:
        if key in values:
            return values[key]
    return default


def scanimage_version(values: Mapping[str, Any]) -> str | None:
    """`2022.1.0` from SI.VERSION_MAJOR/MINOR/UPDATE, `3.8` from state.software.version, else None."""
    major = find_value(values, "SI.VERSION_MAJOR", "SI.VERSION_MAJOR_STR")
    if major is not None:
        parts = [str(major)]
        for key in ("SI.VERSION_MINOR", "SI.VERSION_UPDATE"):
            if key in values and values[key] not in ("", None, []):
                parts.append(str(values[key]))
        return ".".join(parts)
    software = values.get("state.software.version")
    if software is not None:
        return format_matlab_value(software)
    return None


# --------------------------------------------------------------------------------------------------------
# acquisition layout derived from the static values
# --------------------------------------------------------------------------------------------------------


def _as_int_list(value: Any) -> list[int]:
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, (int, float)):
        return [int(value)]
    if isinstance(value, list):
        out: list[int] = []
        for item in value:
            out.extend(_as_int_list(item))
        return out
    return []


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "on", "yes"}
    if isinstance(value, list):
        return bool(value) and all(_truthy(item) for item in value)
    return bool(value)


def _positive_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class AcquisitionLayout:
    """How pages map to (time, plane, channel), and the rate of time points, from the static settings.

    `planes` counts every z position stored per volume, flyback frames included when ScanImage saved them
    (`flyback_planes` of those are at the end of each volume); page index = ((t * planes + z) * C + c).
    """

    channels: tuple[int, ...] = (1,)
    planes: int = 1
    flyback_planes: int = 0
    frame_rate_hz: float | None = None
    scan_frame_rate_hz: float | None = None
    lines_per_frame: int | None = None
    pixels_per_line: int | None = None
    acq_state: str | None = None
    log_file_counter: int | None = None
    frames_per_file: float | None = None
    version: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def imaging_planes(self) -> int:
        return self.planes - self.flyback_planes

    @property
    def pages_per_frame(self) -> int:
        """Pages per time point (all planes and channels)."""
        return self.planes * len(self.channels)

    def page_position(self, page_index: int) -> tuple[int, int, int]:
        """(time point, plane index, channel index) of a page, from its index in the file."""
        n_channels = len(self.channels)
        channel = page_index % n_channels
        plane = (page_index // n_channels) % self.planes
        return page_index // self.pages_per_frame, plane, channel

    def page_index(self, frame: int, plane: int = 0, channel: int = 0) -> int:
        return (frame * self.planes + plane) * len(self.channels) + channel


def acquisition_layout(values: Mapping[str, Any]) -> AcquisitionLayout:
    """Channels, planes (FastZ, flyback) and the rate of time points from static values of any flavor."""
    if any(key.startswith("state.") for key in values):
        return _layout_si3(values)
    notes: list[str] = []
    channels = _as_int_list(find_value(values, "SI.hChannels.channelSave", default=1)) or [1]
    fast_z = _truthy(find_value(values, "SI.hFastZ.enable", default=False))
    stack_enabled = _truthy(find_value(values, "SI.hStackManager.enable", default=False))
    stack_mode = find_value(values, "SI.hStackManager.stackMode", default="")
    if stack_enabled and stack_mode == "fast":
        fast_z = True
    planes = 1
    flyback = 0
    if fast_z:
        slices = find_value(
            values, "SI.hStackManager.actualNumSlices", "SI.hStackManager.numSlices", default=1
        )
        planes = max(1, int(slices)) if isinstance(slices, (int, float)) else 1
        n_flyback = find_value(values, "SI.hFastZ.numDiscardFlybackFrames", default=0)
        n_flyback = int(n_flyback) if isinstance(n_flyback, (int, float)) else 0
        discard = _truthy(find_value(values, "SI.hFastZ.discardFlybackFrames", default=False))
        with_flyback = find_value(values, "SI.hStackManager.numFramesPerVolumeWithFlyback")
        per_volume = find_value(values, "SI.hStackManager.numFramesPerVolume")
        if not discard and n_flyback > 0:
            flyback = n_flyback
        elif (
            not discard
            and isinstance(with_flyback, int)
            and isinstance(per_volume, int)
            and with_flyback > per_volume
        ):
            flyback = with_flyback - per_volume
        planes += flyback
    elif stack_enabled:
        notes.append("slow z-stack: slices are stored one after another, reported as one plane")
    frame_rate = _positive_float(find_value(values, "SI.hRoiManager.scanFrameRate"))
    volume_rate = _positive_float(find_value(values, "SI.hRoiManager.scanVolumeRate"))
    if planes > 1:
        rate = volume_rate if volume_rate is not None else (frame_rate / planes if frame_rate else None)
    else:
        rate = frame_rate if frame_rate is not None else volume_rate
    counter = find_value(values, "SI.hScan2D.logFileCounter", "SI.hSlmScan.logFileCounter")
    return AcquisitionLayout(
        channels=tuple(channels),
        planes=planes,
        flyback_planes=flyback,
        frame_rate_hz=rate,
        scan_frame_rate_hz=frame_rate,
        lines_per_frame=_int_or_none(find_value(values, "SI.hRoiManager.linesPerFrame")),
        pixels_per_line=_int_or_none(find_value(values, "SI.hRoiManager.pixelsPerLine")),
        acq_state=find_value(values, "SI.acqState"),
        log_file_counter=_int_or_none(counter),
        frames_per_file=_float_or_none(find_value(values, "SI.hScan2D.logFramesPerFile")),
        version=scanimage_version(values),
        notes=tuple(notes),
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _layout_si3(values: Mapping[str, Any]) -> AcquisitionLayout:
    channels = [n for n in range(1, 5) if _truthy(values.get(f"state.acq.savingChannel{n}", 0))]
    notes = ["ScanImage 3.x: no per-frame timestamps in the file"]
    slices = _int_or_none(values.get("state.acq.numberOfZSlices")) or 1
    if slices > 1:
        notes.append("ScanImage 3.x z-stack: slices are stored one after another, reported as one plane")
    return AcquisitionLayout(
        channels=tuple(channels or [1]),
        planes=1,
        frame_rate_hz=_positive_float(values.get("state.acq.frameRate")),
        scan_frame_rate_hz=_positive_float(values.get("state.acq.frameRate")),
        lines_per_frame=_int_or_none(values.get("state.acq.linesPerFrame")),
        pixels_per_line=_int_or_none(values.get("state.acq.pixelsPerLine")),
        frames_per_file=_float_or_none(values.get("state.acq.framesPerFile")),
        version=scanimage_version(values),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------------
# per-page (frame-varying) descriptions
# --------------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _optional_time(value: Any) -> float | None:
    """ScanImage writes -1 for 'no such event' (no start trigger, no next-file marker)."""
    number = _number(value)
    return None if number is None or number == -1.0 else number


def _times(value: Any) -> tuple[float, ...]:
    if isinstance(value, bool):
        return ()
    if isinstance(value, (int, float)):
        return (float(value),)
    if isinstance(value, list):
        out: list[float] = []
        for item in value:
            out.extend(_times(item))
        return tuple(out)
    return ()


@dataclass(frozen=True)
class FrameMetadata:
    """The frame-varying data of one page, typed. Absent fields are None (e.g. ScanImage 3.x pages).

    Timestamps are seconds on the imaging clock (since the acquisition mode started); trigger fields that
    ScanImage marks -1 ("none") are None here. `values` keeps every parsed key, known or not.
    """

    frame_number: int | None = None
    acquisition_number: int | None = None
    frame_number_acquisition: int | None = None
    timestamp_s: float | None = None
    acq_trigger_timestamp_s: float | None = None
    next_file_marker_timestamp_s: float | None = None
    end_of_acquisition: bool = False
    end_of_acquisition_mode: bool = False
    dc_over_voltage: bool = False
    epoch: tuple[float, ...] | None = None
    aux_triggers: tuple[tuple[float, ...], ...] = ((), (), (), ())
    i2c_data: Any = None
    values: dict[str, Any] = field(default_factory=dict)
    flavor: str = FLAVOR_SI
    malformed: int = 0

    @property
    def epoch_datetime(self) -> datetime | None:
        """Wall-clock start of the acquisition mode (`epoch = [Y M D h m s.sss]`), naive local time."""
        if not self.epoch or len(self.epoch) != 6:
            return None
        year, month, day, hour, minute, seconds = self.epoch
        try:
            start = datetime(int(year), int(month), int(day), int(hour), int(minute))
        except ValueError:
            return None
        return start + timedelta(seconds=float(seconds))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (non-finite numbers become None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(item) for item in value]
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            return value

        return clean(
            {
                "frame_number": self.frame_number,
                "acquisition_number": self.acquisition_number,
                "frame_number_acquisition": self.frame_number_acquisition,
                "timestamp_s": self.timestamp_s,
                "acq_trigger_timestamp_s": self.acq_trigger_timestamp_s,
                "next_file_marker_timestamp_s": self.next_file_marker_timestamp_s,
                "end_of_acquisition": self.end_of_acquisition,
                "end_of_acquisition_mode": self.end_of_acquisition_mode,
                "epoch": list(self.epoch) if self.epoch is not None else None,
                "aux_triggers": [list(t) for t in self.aux_triggers],
            }
        )


def frame_metadata_from_values(
    values: dict[str, Any], *, flavor: str = FLAVOR_SI, malformed: int = 0
) -> FrameMetadata:
    """Type the known description keys; unknown keys stay in `values`."""

    def integer(key: str) -> int | None:
        return _int_or_none(values.get(key))

    epoch = values.get("epoch")
    epoch_tuple = _times(epoch) if isinstance(epoch, list) and epoch else None
    return FrameMetadata(
        frame_number=integer("frameNumbers"),
        acquisition_number=integer("acquisitionNumbers"),
        frame_number_acquisition=integer("frameNumberAcquisition"),
        timestamp_s=_number(values.get("frameTimestamps_sec")),
        acq_trigger_timestamp_s=_optional_time(values.get("acqTriggerTimestamps_sec")),
        next_file_marker_timestamp_s=_optional_time(values.get("nextFileMarkerTimestamps_sec")),
        end_of_acquisition=_truthy(values.get("endOfAcquisition", False)),
        end_of_acquisition_mode=_truthy(values.get("endOfAcquisitionMode", False)),
        dc_over_voltage=_truthy(values.get("dcOverVoltage", False)),
        epoch=epoch_tuple,
        aux_triggers=tuple(_times(values.get(f"auxTrigger{n}", [])) for n in range(4)),
        i2c_data=values.get("I2CData"),
        values=values,
        flavor=flavor,
        malformed=malformed,
    )


def parse_frame_description(text: str) -> FrameMetadata:
    """Parse one page's ImageDescription: `key = value` lines, the 2018a JSON form (optionally wrapped in
    `FrameHeader`), or a ScanImage 3.x page (static `state.*` text only: an empty FrameMetadata)."""
    stripped = text.replace("\x00", "").strip()
    if not stripped:
        return FrameMetadata()
    if stripped.startswith("state."):
        return FrameMetadata(flavor=FLAVOR_SI3)
    if stripped.startswith("{"):
        try:
            obj = _json_specials(json.loads(stripped))
        except ValueError as exc:
            logger.warning("page description is not valid JSON: %s", exc)
            return FrameMetadata(flavor=FLAVOR_JSON, malformed=1)
        if isinstance(obj, dict) and isinstance(obj.get("FrameHeader"), dict):
            obj = obj["FrameHeader"]
        if not isinstance(obj, dict):
            return FrameMetadata(flavor=FLAVOR_JSON, malformed=1)
        return frame_metadata_from_values(dict(obj), flavor=FLAVOR_JSON)
    parsed = parse_key_value_text(stripped, what="page description")
    return frame_metadata_from_values(parsed.values, malformed=len(parsed.malformed))
