"""The ZeroMQ wire format every process speaks: `[topic, header, *buffers]`.

This is the one leaf module of the wire format. It imports nothing from the project (and not even
zmq), so frame sources in `hardware/`, the rig, the online module and the GUI all share it.

Layout of one message (ZeroMQ multipart):

- part 0, topic: a short ASCII name (`TOPIC_FRAME`, `TOPIC_TRIAL`, ...). SUB sockets filter by topic
  *prefix*, so no topic may be a prefix of another.
- part 1, header: UTF-8 JSON object. Envelope keys: `v` (`WIRE_VERSION`), `seq` (per-sender, per-topic
  counter), `t_ns` (sender's `time.time_ns()` when the message was built, for latency only), `src`
  (sender name, optional). When buffers follow: `dtype` (list of numpy dtype strings such as `"<i2"`)
  and `shape` (list of shapes), one entry per buffer. Everything else is the record's own fields.
- parts 2..: raw C-ordered array bytes, sent with `copy=False` and decoded as read-only numpy views
  over the received buffers (no copy).

Sequence numbers count per (sender, topic), not per socket: a subscriber that filters topics would
otherwise see every unsubscribed message as a gap. Receivers key streams by (`src`, topic).

Every header is checked field by field before anything uses it (receivers count and skip what fails):
at most `MAX_HEADER_BYTES` of UTF-8 JSON without NaN or Infinity, nested at most `MAX_HEADER_DEPTH`
levels; `v` the integer `WIRE_VERSION`, `seq` an integer in 0..2**63-1, `t_ns` a 64-bit integer, `src` a
string of at most `MAX_SOURCE_CHARS`; a frame's `frame_index`, `trial`, `channel` and `plane` integers in
0..2**63-1, `timestamp_s` a finite number, `trigger_timestamp_s` one or null, its one buffer a 2-D integer
or float image of at most `MAX_FRAME_SIDE` pixels a side, and `aux_trigger_s` (optional) a list of at most
`MAX_AUX_TRIGGERS` finite numbers. Refusals quote the offending value shortened, never whole.

`did_you_mean` lives here too: every package refuses unknown names with the nearest valid one (settings
keys, contexts, state-machine names, Bpod channels), and this leaf is the one module all of them may
import (`hardware` imports nothing of the project but this and `online.transport`).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import reprlib
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1

TOPIC_FRAME = b"frame"  # imaging frames (one channel/plane per message)
TOPIC_TRIAL = b"trial"  # trial start/end records from the rig
TOPIC_STATE = b"state"  # Bpod state entries and events from the rig
TOPIC_HEALTH = b"health"  # receiver/sender statistics and liveness
TOPIC_TRACES = b"traces"  # per-frame ROI traces from the online module
TOPIC_DECODER = b"decoder"  # per-trial decoder results
TOPIC_DECISION = b"decision"  # closed-loop decisions fed back into the running trial
TOPIC_ROIS = b"rois"  # reference image and ROI outlines from the online module
TOPICS: tuple[bytes, ...] = (
    TOPIC_FRAME,
    TOPIC_TRIAL,
    TOPIC_STATE,
    TOPIC_HEALTH,
    TOPIC_TRACES,
    TOPIC_DECODER,
    TOPIC_DECISION,
    TOPIC_ROIS,
)

ENVELOPE_KEYS = frozenset({"v", "seq", "t_ns", "src", "dtype", "shape"})
MAX_TOPIC_BYTES = 64
MAX_HEADER_BYTES = 1 << 20
"""A header is at most this long (a trial record with thousands of events is tens of kB)."""
MAX_HEADER_DEPTH = 32
"""Nesting levels of objects and lists a header may have (a trial record has about six)."""
MAX_SOURCE_CHARS = 256
MAX_AUX_TRIGGERS = 256
"""Aux-trigger edges one frame may report."""
MAX_FRAME_SIDE = 1 << 16
INT64_MAX = (1 << 63) - 1
_JSON = json.JSONEncoder(
    separators=(",", ":"), allow_nan=False
)  # reused: json.dumps(**kw) builds one per call

# What a message part may be: bytes, a zmq.Frame, a memoryview, a numpy array (anything with a buffer).
Part = Any


class WireError(ValueError):
    """A message that does not follow the wire format; the text says which rule it broke."""


@dataclass(frozen=True)
class Message:
    """One decoded message. `arrays` are read-only views over the received buffers: keep the
    Message (or the arrays) alive only as long as you need the memory, copy to keep longer."""

    topic: bytes
    header: dict[str, Any]
    arrays: tuple[np.ndarray, ...] = ()

    @property
    def seq(self) -> int:
        return self.header["seq"]

    @property
    def t_ns(self) -> int:
        return self.header["t_ns"]

    @property
    def source(self) -> str:
        return self.header.get("src", "")

    @property
    def fields(self) -> dict[str, Any]:
        """The record's own fields: the header without the envelope keys."""
        return {k: v for k, v in self.header.items() if k not in ENVELOPE_KEYS}


def _is_int(value: Any) -> bool:
    return type(value) is int  # (not bool; exact types: this runs several times per frame)


def _is_count(value: Any) -> bool:
    """An integer in 0..2**63-1 (what a sequence number, an index or a trial number may be)."""
    return type(value) is int and 0 <= value <= INT64_MAX


def _is_finite_number(value: Any) -> bool:
    return (type(value) is float or type(value) is int) and math.isfinite(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 3


def short_repr(value: Any) -> str:
    """A value as error messages quote it: its repr, shortened (bad input can be megabytes)."""
    return _SHORT.repr(value)


def json_depth(value: Any) -> int:
    """Nesting levels of dicts and lists in a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in item if isinstance(child, dict | list))
    return deepest


def _refuse_constant(name: str) -> Any:
    raise WireError(f"{name} is not a JSON number")


_HEADER_JSON = json.JSONDecoder(parse_constant=_refuse_constant)  # reused: json.loads(**kw) builds one a call


def _check_topic(topic: bytes) -> bytes:
    if not isinstance(topic, bytes) or not topic:
        raise WireError(f"topic must be non-empty bytes, got {topic!r}")
    if len(topic) > MAX_TOPIC_BYTES:
        raise WireError(f"topic is {len(topic)} bytes, at most {MAX_TOPIC_BYTES} allowed")
    return topic


def encode_message(
    topic: bytes, header_fields: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()
) -> list[Part]:
    """Build the parts of one message for `send_multipart(parts, copy=False)`.

    `header_fields` must hold `seq`; `t_ns` defaults to now and `v` is added. `dtype` and `shape`
    are derived from `arrays` and may not be given. Arrays go out as they are (zero-copy) when
    C-contiguous, so the caller must not modify them until ZeroMQ has sent them.
    """
    _check_topic(topic)
    header = {"v": WIRE_VERSION, **header_fields}
    if header["v"] != WIRE_VERSION:
        raise WireError(f"header says v={header['v']!r}, this module writes v={WIRE_VERSION}")
    for key in ("dtype", "shape"):
        if key in header:
            raise WireError(f"header key {key!r} is reserved: it is derived from the arrays")
    if not _is_int(header.get("seq")) or header["seq"] < 0:
        raise WireError(f"header needs an integer seq >= 0, got {header.get('seq')!r}")
    header.setdefault("t_ns", time.time_ns())
    if not _is_int(header["t_ns"]):
        raise WireError(f"t_ns must be an integer (time.time_ns()), got {header['t_ns']!r}")
    buffers: list[np.ndarray] = []
    if arrays:
        dtypes, shapes = [], []
        for i, array in enumerate(arrays):
            array = np.asarray(array)
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            if array.dtype.hasobject or array.dtype.names is not None:
                raise WireError(f"array {i} has dtype {array.dtype}: only plain numeric dtypes travel")
            dtypes.append(array.dtype.str)
            shapes.append(list(array.shape))
            buffers.append(array)
        header["dtype"] = dtypes
        header["shape"] = shapes
    try:
        header_bytes = _JSON.encode(header).encode()
    except (TypeError, ValueError) as exc:
        raise WireError(f"header is not plain JSON (numbers, strings, lists, dicts; no NaN): {exc}") from exc
    return [topic, header_bytes, *buffers]


@functools.lru_cache(maxsize=64)
def _plain_dtype(name: str) -> np.dtype | None:
    """The dtype a header names, or None if it is not a plain numeric one (cached: parsing is slow)."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError):
        return None
    plain = not dtype.hasobject and dtype.names is None and dtype.subdtype is None and dtype.itemsize > 0
    return dtype if plain else None


def _decode_array(index: int, part: Part, dtype_str: Any, shape: Any) -> np.ndarray:
    dtype = _plain_dtype(dtype_str) if isinstance(dtype_str, str) and len(dtype_str) <= 16 else None
    if dtype is None:
        raise WireError(f"buffer {index}: dtype {short_repr(dtype_str)} is not a plain numeric numpy dtype "
                        "string")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise WireError(f"buffer {index}: shape {short_repr(shape)} is not a list of non-negative integers")
    view = memoryview(part)
    expected = math.prod(shape) * dtype.itemsize
    if view.nbytes != expected:
        raise WireError(
            f"buffer {index} has {view.nbytes} bytes, dtype {dtype.str} x shape {tuple(shape)} "
            f"needs {expected}"
        )
    array = np.frombuffer(view, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # the memory belongs to the message (or to the sender's array)
    return array


def _parse_header(topic: bytes, part: Part) -> dict[str, Any]:
    """The header part as a JSON object, within the size and nesting bounds."""
    raw = bytes(part)
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"{topic!r} header is {len(raw)} bytes, at most {MAX_HEADER_BYTES}")
    try:
        header = _HEADER_JSON.decode(raw.decode("utf-8"))
    except WireError as exc:
        raise WireError(f"{topic!r} header is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise WireError(f"{topic!r} header nests deeper than {MAX_HEADER_DEPTH} levels") from None
    except ValueError as exc:  # not UTF-8, not JSON, an integer beyond Python's digit limit
        raise WireError(f"{topic!r} header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"{topic!r} header is JSON {type(header).__name__}, expected an object")
    brackets = raw.count(b"[") + raw.count(b"{")  # (a bound on the depth: most headers need no walk)
    if brackets > MAX_HEADER_DEPTH and json_depth(header) > MAX_HEADER_DEPTH:
        raise WireError(f"{topic!r} header nests deeper than {MAX_HEADER_DEPTH} levels")
    return header


def decode_message(parts: Sequence[Part]) -> Message:
    """Parse the parts of one received message; arrays are zero-copy views. Raises WireError."""
    if len(parts) < 2:
        raise WireError(f"expected [topic, header, *buffers], got {len(parts)} part(s)")
    topic = bytes(parts[0])
    if not topic or len(topic) > MAX_TOPIC_BYTES:
        raise WireError(f"topic of {len(topic)} bytes: must be 1..{MAX_TOPIC_BYTES}")
    header = _parse_header(topic, parts[1])
    for key in ("v", "seq", "t_ns"):
        if key not in header:
            raise WireError(f"{topic!r} header lacks required key {key!r}")
    if not _is_int(header["v"]) or header["v"] != WIRE_VERSION:
        raise WireError(f"{topic!r} header has wire version {short_repr(header['v'])}, this build reads "
                        f"{WIRE_VERSION}")
    if not _is_count(header["seq"]):
        raise WireError(f"{topic!r} header seq {short_repr(header['seq'])} is not an integer in 0..2**63-1")
    if not _is_int(header["t_ns"]) or not -INT64_MAX <= header["t_ns"] <= INT64_MAX:
        raise WireError(f"{topic!r} header t_ns {short_repr(header['t_ns'])} is not a 64-bit integer")
    source = header.get("src", "")
    if not isinstance(source, str) or len(source) > MAX_SOURCE_CHARS:
        raise WireError(f"{topic!r} header src {short_repr(source)} is not a name of at most "
                        f"{MAX_SOURCE_CHARS} characters")
    buffers = parts[2:]
    dtypes = header.get("dtype", [])
    shapes = header.get("shape", [])
    if not isinstance(dtypes, list) or not isinstance(shapes, list):
        raise WireError(f"{topic!r} header dtype and shape must be lists, one entry per buffer")
    if len(dtypes) != len(buffers) or len(shapes) != len(buffers):
        raise WireError(
            f"{topic!r} header describes {len(dtypes)} dtype(s) and {len(shapes)} shape(s), "
            f"message carries {len(buffers)} buffer(s)"
        )
    arrays = tuple(
        _decode_array(i, part, dtype, shape)
        for i, (part, dtype, shape) in enumerate(zip(buffers, dtypes, shapes, strict=True))
    )
    return Message(topic=topic, header=header, arrays=arrays)


@dataclass(frozen=True)
class FrameHeader:
    """One imaging frame's metadata. `timestamp_s` and `trigger_timestamp_s` are on the imaging
    clock (ScanImage `frameTimestamps_sec`, `acqTriggerTimestamps_sec`); `trial` is the acquisition
    (file) number; `t_ns` is host time, for latency only."""

    seq: int
    frame_index: int
    timestamp_s: float
    trigger_timestamp_s: float | None
    trial: int
    channel: int
    plane: int
    height: int
    width: int
    dtype: str
    t_ns: int

    _FIELDS = ("frame_index", "timestamp_s", "trigger_timestamp_s", "trial", "channel", "plane")

    def __post_init__(self) -> None:
        # Normalise numpy scalars and dtype spellings so records compare equal after a round trip.
        dtype = _plain_dtype(self.dtype) if isinstance(self.dtype, str) else None  # (cached: the common case)
        if dtype is None:
            try:
                dtype = np.dtype(self.dtype)
            except TypeError as exc:
                raise WireError(f"frame dtype {self.dtype!r} is not a numpy dtype") from exc
        object.__setattr__(self, "dtype", dtype.str)
        for name in ("seq", "frame_index", "trial", "channel", "plane", "height", "width", "t_ns"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "timestamp_s", float(self.timestamp_s))
        if self.trigger_timestamp_s is not None:
            object.__setattr__(self, "trigger_timestamp_s", float(self.trigger_timestamp_s))

    def to_header(self, source: str | None = None) -> dict[str, Any]:
        """The full wire header of a frame message carrying this frame as its one buffer."""
        header: dict[str, Any] = {"v": WIRE_VERSION, "seq": self.seq, "t_ns": self.t_ns}
        if source:
            header["src"] = source
        header["dtype"] = [self.dtype]
        header["shape"] = [[self.height, self.width]]
        for name in self._FIELDS:
            header[name] = getattr(self, name)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> FrameHeader:
        """Validate a frame header dict (as decoded), field by field, and build the record. Raises
        WireError naming the first field that is wrong."""
        missing = [k for k in ("seq", "t_ns", "dtype", "shape", *cls._FIELDS) if k not in header]
        if missing:
            raise WireError(f"frame header lacks {', '.join(missing)}")
        dtypes, shapes = header["dtype"], header["shape"]
        if not (isinstance(dtypes, list) and isinstance(shapes, list) and len(dtypes) == len(shapes) == 1):
            n = len(dtypes) if isinstance(dtypes, list) else short_repr(dtypes)
            raise WireError(f"a frame message carries exactly one buffer, header describes {n} (dtype and "
                            "shape must be lists of one entry)")
        shape = shapes[0]
        dtype = _plain_dtype(dtypes[0]) if isinstance(dtypes[0], str) and len(dtypes[0]) <= 16 else None
        if dtype is None or dtype.kind not in "iuf":
            raise WireError(f"frame dtype {short_repr(dtypes[0])} is not an integer or float numpy dtype "
                            "string")
        if not (isinstance(shape, list) and len(shape) == 2
                and all(_is_int(n) and 1 <= n <= MAX_FRAME_SIDE for n in shape)):
            raise WireError(f"frame shape must be [height, width] of 1..{MAX_FRAME_SIDE} pixels, got "
                            f"{short_repr(shape)}")
        for name in ("seq", "frame_index", "trial", "channel", "plane"):
            if not _is_count(header[name]):
                raise WireError(f"frame header {name} must be an integer in 0..2**63-1, got "
                                f"{short_repr(header[name])}")
        if not _is_int(header["t_ns"]):
            raise WireError(f"frame header t_ns must be an integer, got {short_repr(header['t_ns'])}")
        if not _is_finite_number(header["timestamp_s"]):
            raise WireError(f"frame header timestamp_s must be a finite number, got "
                            f"{short_repr(header['timestamp_s'])}")
        trigger = header["trigger_timestamp_s"]
        if trigger is not None and not _is_finite_number(trigger):
            raise WireError(f"frame header trigger_timestamp_s must be a finite number or null, got "
                            f"{short_repr(trigger)}")
        return cls(
            seq=header["seq"],
            frame_index=header["frame_index"],
            timestamp_s=header["timestamp_s"],
            trigger_timestamp_s=header["trigger_timestamp_s"],
            trial=header["trial"],
            channel=header["channel"],
            plane=header["plane"],
            height=shape[0],
            width=shape[1],
            dtype=dtypes[0],
            t_ns=header["t_ns"],
        )

    @classmethod
    def from_message(cls, message: Message) -> FrameHeader:
        """The frame record of a decoded frame message (its pixels are `message.arrays[0]`)."""
        if message.topic != TOPIC_FRAME:
            raise WireError(f"expected a {TOPIC_FRAME!r} message, got {message.topic!r}")
        return cls.from_header(message.header)


def frame_aux_triggers(header: Mapping[str, Any]) -> tuple[float, ...]:
    """The aux-trigger edges (imaging clock, s) a frame header reports, none when absent. Raises WireError."""
    aux = header.get("aux_trigger_s", ())
    if aux == ():
        return ()
    if not (isinstance(aux, list) and len(aux) <= MAX_AUX_TRIGGERS and all(map(_is_finite_number, aux))):
        raise WireError(f"frame aux_trigger_s must be a list of at most {MAX_AUX_TRIGGERS} finite numbers, "
                        f"got {short_repr(aux)}")
    return tuple(float(e) for e in aux)


def encode_frame(header: FrameHeader, pixels: np.ndarray, source: str | None = None) -> list[Part]:
    """The parts of a frame message; refuses pixels that do not match the header."""
    if pixels.shape != (header.height, header.width) or pixels.dtype != np.dtype(header.dtype):
        raise WireError(
            f"pixels are {pixels.dtype.str} {pixels.shape}, header says "
            f"{np.dtype(header.dtype).str} {(header.height, header.width)}"
        )
    fields = header.to_header(source)
    for key in ("v", "dtype", "shape"):
        del fields[key]
    return encode_message(TOPIC_FRAME, fields, [pixels])


@dataclass(frozen=True)
class Event:
    """A generic event or result message without arrays: trial and state events, health reports,
    decoder results. The payload lives under the header key `data` so it never collides with the
    envelope."""

    topic: bytes
    data: dict[str, Any]
    seq: int
    t_ns: int
    source: str = ""

    @classmethod
    def from_message(cls, message: Message) -> Event:
        if message.arrays:
            raise WireError(f"{message.topic!r} event carries {len(message.arrays)} buffer(s), expected none")
        data = message.header.get("data")
        if not isinstance(data, dict):
            raise WireError(f"{message.topic!r} event header needs a 'data' object, got {data!r}")
        return cls(message.topic, data, message.seq, message.t_ns, message.source)


def encode_event(
    topic: bytes, data: Mapping[str, Any], seq: int, t_ns: int | None = None, source: str | None = None
) -> list[Part]:
    """The parts of an event message (payload under `data`, no buffers)."""
    fields: dict[str, Any] = {"seq": seq, "data": dict(data)}
    if t_ns is not None:
        fields["t_ns"] = t_ns
    if source:
        fields["src"] = source
    return encode_message(topic, fields)


def default_source() -> str:
    """A sender name unique per process, so a restarted sender starts a new stream at receivers."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Sender:
    """Numbers and stamps outgoing messages: one `seq` counter per topic, starting at 0.

    Socket-free so that any transport (or a test) can use it; `online.transport` wraps it.
    """

    source: str = field(default_factory=default_source)
    _next_seq: dict[bytes, int] = field(default_factory=dict, repr=False)

    def next_seq(self, topic: bytes) -> int:
        """Take the next sequence number of `topic`."""
        seq = self._next_seq.get(topic, 0)
        self._next_seq[topic] = seq + 1
        return seq

    def rollback(self, topic: bytes) -> None:
        """Give back the last number of `topic` after a send that did not happen, so a retry
        does not show as a gap at the receiver."""
        if self._next_seq.get(topic, 0) > 0:
            self._next_seq[topic] -= 1

    def message(
        self, topic: bytes, fields: Mapping[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> list[Part]:
        """A numbered, stamped message with the record's `fields` and `arrays`."""
        header = dict(fields or {})
        header.update(seq=self.next_seq(topic), t_ns=time.time_ns(), src=self.source)
        try:
            return encode_message(topic, header, arrays)
        except WireError:
            self.rollback(topic)
            raise

    def event(self, topic: bytes, data: Mapping[str, Any]) -> list[Part]:
        """A numbered event message with `data` as payload."""
        return self.message(topic, {"data": dict(data)})

    def frame(
        self,
        pixels: np.ndarray,
        *,
        frame_index: int,
        timestamp_s: float,
        trigger_timestamp_s: float | None,
        trial: int,
        channel: int = 0,
        plane: int = 0,
    ) -> list[Part]:
        """A numbered frame message: one 2-D image of one channel and plane. Same header as
        `FrameHeader.to_header()`, built directly because this runs for every frame."""
        if pixels.ndim != 2:
            raise WireError(f"a frame is a 2-D image, got shape {pixels.shape}")
        fields = {
            "frame_index": int(frame_index),
            "timestamp_s": float(timestamp_s),
            "trigger_timestamp_s": None if trigger_timestamp_s is None else float(trigger_timestamp_s),
            "trial": int(trial),
            "channel": int(channel),
            "plane": int(plane),
        }
        return self.message(TOPIC_FRAME, fields, [pixels])


# -- refusals that teach -------------------------------------------------------------------------------


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """"did you mean 'X'?" for the valid name closest to `word`, or "" when none is close enough
    (`cutoff`: difflib's similarity ratio, 0..1)."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}?" if close else ""
