"""The wire format without sockets: encoding, zero-copy decoding, records, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq

from online.wire import (
    TOPIC_FRAME,
    TOPIC_STATE,
    TOPIC_TRIAL,
    TOPICS,
    WIRE_VERSION,
    Event,
    FrameHeader,
    Message,
    Sender,
    WireError,
    decode_message,
    encode_event,
    encode_frame,
    encode_message,
)


def _as_received(parts: list) -> list[zmq.Frame]:
    """What recv_multipart(copy=False) hands over: zmq.Frame objects owning their memory."""
    return [zmq.Frame(bytes(memoryview(p))) for p in parts]


def _frame_header(**changes: object) -> FrameHeader:
    values: dict = dict(
        seq=7,
        frame_index=41,
        timestamp_s=1.375,
        trigger_timestamp_s=0.25,
        trial=3,
        channel=1,
        plane=0,
        height=512,
        width=512,
        dtype="int16",
        t_ns=1_700_000_000_000_000_000,
    )
    values.update(changes)
    return FrameHeader(**values)


def test_topics_are_bytes_and_no_topic_is_a_prefix_of_another() -> None:
    # SUB filters by prefix: b"trial" must not also catch another topic.
    for a in TOPICS:
        assert isinstance(a, bytes) and a
        for b in TOPICS:
            assert a == b or not b.startswith(a)


def test_round_trip_keeps_fields_arrays_and_adds_the_envelope() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(-32768, 32767, size=(512, 512), dtype=np.int16),
        rng.random((3, 4, 5), dtype=np.float32),
        np.arange(10, dtype=">u2"),  # explicit byte order survives
        np.zeros((0, 4), dtype=np.float64),
        np.array(3.5),  # 0-d stays 0-d
    ]
    parts = encode_message(b"traces", {"seq": 12, "t_ns": 99, "roi_ids": [1, 2], "note": "é"}, arrays)
    message = decode_message(_as_received(parts))
    assert message.topic == b"traces"
    assert message.header["v"] == WIRE_VERSION
    assert (message.seq, message.t_ns) == (12, 99)
    assert message.fields == {"roi_ids": [1, 2], "note": "é"}
    assert len(message.arrays) == len(arrays)
    for got, sent in zip(message.arrays, arrays, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)


def test_encode_stamps_t_ns_when_missing_and_copies_only_non_contiguous_arrays() -> None:
    image = np.arange(64, dtype=np.int16).reshape(8, 8)
    parts = encode_message(b"frame", {"seq": 0}, [image, image.T])
    assert isinstance(json.loads(parts[1])["t_ns"], int)
    assert np.shares_memory(parts[2], image)  # zero-copy on the way out
    assert not np.shares_memory(parts[3], image)  # transposed: made contiguous
    message = decode_message(parts)
    np.testing.assert_array_equal(message.arrays[1], image.T)


def test_decode_is_zero_copy_and_read_only() -> None:
    pixels = np.arange(512 * 512, dtype=np.int16).reshape(512, 512)
    received = _as_received(encode_message(b"frame", {"seq": 0}, [pixels]))
    array = decode_message(received).arrays[0]
    assert np.shares_memory(array, np.frombuffer(received[2].buffer, dtype=np.uint8))
    assert not array.flags.owndata
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0, 0] = 1


def test_frame_header_round_trips_through_its_header_dict_and_the_wire() -> None:
    header = _frame_header()
    assert header.dtype == "<i2"  # normalised spelling
    assert FrameHeader.from_header(header.to_header()) == header
    pixels = np.full((512, 512), 5, dtype=np.int16)
    message = decode_message(_as_received(encode_frame(header, pixels, source="scope")))
    assert message.topic == TOPIC_FRAME and message.source == "scope"
    assert FrameHeader.from_message(message) == header
    untriggered = _frame_header(trigger_timestamp_s=None)
    assert FrameHeader.from_header(untriggered.to_header()).trigger_timestamp_s is None


def test_frame_header_refuses_what_is_not_a_frame() -> None:
    header = _frame_header().to_header()
    del header["frame_index"]
    with pytest.raises(WireError, match="frame_index"):
        FrameHeader.from_header(header)
    with pytest.raises(WireError, match="pixels are"):
        encode_frame(_frame_header(), np.zeros((512, 512), dtype=np.uint16))
    event = decode_message(encode_event(TOPIC_TRIAL, {"trial": 1}, seq=0))
    with pytest.raises(WireError, match="expected a b'frame' message"):
        FrameHeader.from_message(event)
    bad = _frame_header().to_header()
    bad["channel"] = "red"
    with pytest.raises(WireError, match="channel must be an integer"):
        FrameHeader.from_header(bad)


def test_event_round_trip_keeps_payload_apart_from_the_envelope() -> None:
    data = {"trial": 12, "context": "tactile", "seq": "payload keys may reuse envelope names", "v": 3.5}
    parts = encode_event(TOPIC_STATE, data, seq=4, t_ns=10, source="rig")
    event = Event.from_message(decode_message(parts))
    assert event == Event(topic=TOPIC_STATE, data=data, seq=4, t_ns=10, source="rig")
    with pytest.raises(WireError, match="'data' object"):
        Event.from_message(decode_message(encode_message(b"trial", {"seq": 0})))


def test_sender_numbers_each_topic_separately_and_can_give_a_number_back() -> None:
    sender = Sender("test")
    seqs = [decode_message(sender.event(topic, {})).seq for topic in (b"trial", b"state", b"trial", b"trial")]
    assert seqs == [0, 0, 1, 2]
    sender.rollback(b"trial")
    assert decode_message(sender.event(b"trial", {})).seq == 2
    pixels = np.zeros((4, 6), dtype=np.uint16)
    message = decode_message(
        sender.frame(pixels, frame_index=0, timestamp_s=0.0, trigger_timestamp_s=None, trial=1, channel=2)
    )
    frame = FrameHeader.from_message(message)
    assert (frame.seq, frame.height, frame.width, frame.channel, message.source) == (0, 4, 6, 2, "test")
    assert message.header == frame.to_header("test")  # the fast path writes FrameHeader's layout
    with pytest.raises(WireError, match="2-D"):
        sender.frame(np.zeros(3), frame_index=1, timestamp_s=0.0, trigger_timestamp_s=None, trial=1)
    with pytest.raises(WireError, match="plain JSON"):
        sender.message(b"trial", {"bad": float("nan")})
    assert decode_message(sender.event(b"trial", {})).seq == 3  # failed encodes used no number


@pytest.mark.parametrize(
    ("topic", "fields", "arrays", "match"),
    [
        ("frame", {"seq": 0}, [], "topic must be non-empty bytes"),
        (b"frame", {"t_ns": 1}, [], "integer seq"),
        (b"frame", {"seq": True}, [], "integer seq"),
        (b"frame", {"seq": 0, "dtype": ["<i2"]}, [], "reserved"),
        (b"frame", {"seq": 0, "v": 99}, [], "v=99"),
        (b"frame", {"seq": 0, "when": object()}, [], "plain JSON"),
        (b"frame", {"seq": 0}, [np.array([object()])], "plain numeric"),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(topic, fields, arrays, match) -> None:
    with pytest.raises(WireError, match=match):
        encode_message(topic, fields, arrays)


def _good() -> list[bytes]:
    parts = encode_message(b"frame", {"seq": 1, "t_ns": 2}, [np.zeros((4, 4), dtype=np.int16)])
    return [bytes(memoryview(p)) for p in parts]


def _with_header(**changes: object) -> list[bytes]:
    parts = _good()
    header = json.loads(parts[1])
    for key, value in changes.items():
        if value is KeyError:
            del header[key]
        else:
            header[key] = value
    parts[1] = json.dumps(header).encode()
    return parts


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([b"frame"], "got 1 part"),
        ([b"", b"{}"], "topic of 0 bytes"),
        ([b"frame", b"\xff\xfe"], "not UTF-8 JSON"),
        ([b"frame", b"{not json"], "not UTF-8 JSON"),
        ([b"frame", b"[1, 2]"], "JSON list"),
        (_with_header(v=KeyError), "lacks required key 'v'"),
        (_with_header(seq=KeyError), "lacks required key 'seq'"),
        (_with_header(t_ns=KeyError), "lacks required key 't_ns'"),
        (_with_header(v=2), "wire version 2"),
        (_with_header(seq=-1), "seq -1"),
        (_with_header(t_ns="now"), "t_ns 'now'"),
        (_with_header(dtype="<i2"), "must be lists"),
        (_with_header(dtype=["object"]), "plain numeric"),
        (_with_header(dtype=["nonsense"]), "not a plain numeric"),
        (_with_header(dtype=["(2,)i2"]), "not a plain numeric"),
        (_with_header(dtype=[7]), "not a plain numeric"),
        (_with_header(shape=[[4, -4]]), "non-negative"),
        (_with_header(shape=[[4, 5]]), "has 32 bytes.*needs 40"),
        (_good()[:2], "carries 0 buffer"),
        ([*_good(), b"extra"], "carries 2 buffer"),
        (_good()[:2] + [b"\x00" * 31], "has 31 bytes"),
    ],
)
def test_decode_names_the_rule_a_malformed_message_breaks(parts, match) -> None:
    with pytest.raises(WireError, match=match):
        decode_message(parts)


def test_message_fields_exclude_the_envelope() -> None:
    message = Message(b"x", {"v": 1, "seq": 0, "t_ns": 0, "src": "a", "dtype": [], "shape": [], "k": 1})
    assert message.fields == {"k": 1}
