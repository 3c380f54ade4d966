"""Real ZeroMQ sockets over tcp loopback and ipc: both paths, statistics, failures, no leaks."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from online.transport import (
    LosslessReceiver,
    LosslessSender,
    LossyPublisher,
    LossySubscriber,
    ReceiverStats,
    SendTimeout,
    TransportError,
)
from online.wire import (
    TOPIC_FRAME,
    TOPIC_STATE,
    TOPIC_TRIAL,
    Event,
    FrameHeader,
    decode_message,
    encode_message,
)

SHAPE = (512, 512)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A fresh context per test; its term() hangs if a socket was left open, so bound it."""
    context = zmq.Context()
    yield context
    done = threading.Thread(target=context.term, daemon=True)
    done.start()
    done.join(5.0)
    if done.is_alive():
        context.destroy(linger=0)
        pytest.fail("zmq context did not terminate: a socket was left open")


@pytest.fixture(params=["tcp", "ipc"])
def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "tcp://127.0.0.1:0" if request.param == "tcp" else f"ipc://{tmp_path}/frames.sock"


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32767, size=SHAPE, dtype=np.int16)


def _wait_for_subscription(pub: LossyPublisher, sub: LossySubscriber) -> None:
    """Slow joiner: publish until the subscriber sees something, then drain."""
    deadline = time.monotonic() + 5
    while sub.recv(0.01) is None:
        assert time.monotonic() < deadline, "subscription never reached the publisher"
        pub.send_event(b"health", {"hello": True})
    while sub.recv(0.05) is not None:
        pass


def test_lossless_round_trip_is_exact_for_several_channels(ctx: zmq.Context, endpoint: str) -> None:
    with (
        LosslessReceiver(endpoint, context=ctx) as rx,
        LosslessSender(rx.endpoint, source="scope", context=ctx) as tx,
    ):
        sent = {}
        for frame_index in range(4):
            for channel in range(3):
                pixels = _image(10 * frame_index + channel)
                sent[frame_index, channel] = pixels
                tx.send_frame(
                    pixels,
                    frame_index=frame_index,
                    timestamp_s=frame_index / 30,
                    trigger_timestamp_s=0.5,
                    trial=2,
                    channel=channel,
                )
        for n in range(12):
            message = rx.recv(2.0)
            assert message is not None
            header = FrameHeader.from_message(message)
            assert header.seq == n and (header.frame_index, header.channel) == divmod(n, 3)
            assert (header.trial, header.trigger_timestamp_s, header.dtype) == (2, 0.5, "<i2")
            assert header.timestamp_s == pytest.approx(header.frame_index / 30)
            pixels = message.arrays[0]
            np.testing.assert_array_equal(pixels, sent[header.frame_index, header.channel])
            assert not pixels.flags.writeable and not pixels.flags.owndata  # a view of the zmq buffer
        report = rx.stats.report()
    assert report["received"] == 12 and report["gaps"] == report["malformed"] == 0
    assert report["by_topic"] == {"frame": 12}
    assert 0 <= report["latency_p50_ms"] <= report["latency_p99_ms"] < 1000


def test_received_arrays_share_memory_with_the_zmq_frame(ctx: zmq.Context) -> None:
    with LosslessSender("tcp://127.0.0.1:0", bind=True, context=ctx) as tx:
        pull = ctx.socket(zmq.PULL)
        try:
            pull.connect(tx.endpoint)
            tx.send(TOPIC_FRAME, {"note": "x"}, [_image(1)])
            assert pull.poll(2000)
            parts = pull.recv_multipart(copy=False)
            array = decode_message(parts).arrays[0]
            assert np.shares_memory(array, np.frombuffer(parts[2].buffer, dtype=np.uint8))
        finally:
            pull.close(linger=0)


def test_malformed_messages_are_counted_logged_once_and_skipped(
    ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    good = encode_message(b"trial", {"seq": 0, "src": "rig", "data": {}})
    malformed = [
        [b"trial"],  # wrong part count
        [b"trial", b"\x00junk"],  # junk header
        encode_message(b"frame", {"seq": 1}, [np.zeros(4, np.int16)])[:2] + [b"\x00" * 7],  # wrong size
        [b"trial", b'{"v": 999, "seq": 0, "t_ns": 0}'],  # wrong version
    ]
    with LosslessReceiver("tcp://127.0.0.1:0", context=ctx) as rx:
        push = ctx.socket(zmq.PUSH)
        try:
            push.connect(rx.endpoint)
            caplog.set_level(logging.WARNING, logger="online.transport")
            for parts in malformed:
                push.send_multipart(parts)
            push.send_multipart(good)
            message = rx.recv(2.0)
            assert message is not None and message.topic == b"trial"
            push.send_multipart(encode_message(b"trial", {"seq": 1, "src": "rig", "data": {}}))
            assert rx.recv(2.0).seq == 1  # still working
        finally:
            push.close(linger=0)
        assert rx.stats.malformed == 4 and rx.stats.received == 2 and rx.stats.gaps == 0
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited to one per second


def test_gaps_duplicates_and_out_of_order_are_counted_from_crafted_seqs(ctx: zmq.Context) -> None:
    seqs = [0, 1, 2, 5, 3, 3, 6, 0, 1]
    with (
        LosslessReceiver("tcp://127.0.0.1:0", context=ctx) as rx,
        LosslessSender(rx.endpoint, context=ctx) as tx,
    ):
        for seq in seqs:
            tx.send_parts(encode_message(TOPIC_STATE, {"seq": seq, "src": "rig"}))
        outcomes = []
        for _ in seqs:
            message = rx.recv(2.0)
            assert message is not None
            outcomes.append(message.seq)
    assert outcomes == seqs  # PUSH/PULL keeps order
    report = rx.stats.report()
    # 5 skips 3 and 4 (2 gaps); 3 arrives late (gap taken back); 3 again is a duplicate; 0 restarts.
    assert (report["gaps"], report["out_of_order"], report["duplicates"], report["restarts"]) == (1, 1, 1, 1)
    assert report["received"] == len(seqs)


def test_stats_keep_one_stream_per_source_and_topic_and_count_from_the_first_seen() -> None:
    stats = ReceiverStats()
    observe = stats.observe
    assert observe(b"frame", "a", 100, 0, 0) == "first"  # joined late: no gaps for 0..99
    assert observe(b"frame", "b", 0, 0, 0) == "first"  # another sender
    assert observe(b"trial", "a", 7, 0, 0) == "first"  # another topic
    assert observe(b"frame", "a", 101, 0, 0) == "ok"
    assert observe(b"frame", "a", 99, 0, 0) == "out_of_order"  # sent before we joined
    assert observe(b"frame", "b", 4, 0, 0) == "gap"
    assert observe(b"frame", "a", 101, 0, 0) == "duplicate"
    assert (stats.gaps, stats.out_of_order, stats.duplicates) == (3, 1, 1)
    for seq in (1, 2, 3):
        assert observe(b"frame", "b", seq, 0, 0) == "out_of_order"
    assert stats.gaps == 0


def test_stats_latency_window_and_report() -> None:
    stats = ReceiverStats(latency_window=100)
    assert stats.report()["latency_p50_ms"] is None
    for seq in range(1000):
        stats.observe(b"frame", "a", seq, t_ns=0, received_ns=(seq % 100) * 1_000_000)
    report = stats.report()
    assert report["latency_window"] == 100
    assert report["latency_p50_ms"] == pytest.approx(49.5) and report["latency_max_ms"] == 99


def test_lossless_slow_consumer_blocks_the_sender_and_loses_nothing(ctx: zmq.Context, endpoint: str) -> None:
    n_frames, delay_s = 30, 0.01
    pixels = [_image(i) for i in range(3)]
    with (
        LosslessReceiver(endpoint, hwm=2, context=ctx) as rx,
        LosslessSender(rx.endpoint, hwm=2, timeout_s=5.0, context=ctx) as tx,
    ):
        got: list[int] = []

        def consume() -> None:
            for _ in range(n_frames):
                message = rx.recv(5.0)
                if message is None:
                    return
                np.testing.assert_array_equal(message.arrays[0], pixels[message.seq % 3])
                got.append(message.seq)
                time.sleep(delay_s)  # a slow online processor

        consumer = threading.Thread(target=consume)
        consumer.start()
        start = time.perf_counter()
        for i in range(n_frames):
            tx.send_frame(pixels[i % 3], frame_index=i, timestamp_s=0.0, trigger_timestamp_s=None, trial=0)
        send_s = time.perf_counter() - start
        consumer.join(10)
    assert got == list(range(n_frames))
    assert rx.stats.gaps == 0
    # Unblocked, 30 sends take ~10 ms; blocked, the sender waits for the 10 ms/frame consumer.
    assert send_s > 0.3 * n_frames * delay_s


def test_lossy_slow_consumer_drops_counts_gaps_and_keeps_latency_bounded(ctx: zmq.Context) -> None:
    with (
        LossyPublisher("tcp://127.0.0.1:0", context=ctx) as pub,
        LossySubscriber(pub.endpoint, topics=[TOPIC_FRAME, b"health"], context=ctx) as sub,
    ):
        _wait_for_subscription(pub, sub)
        stop = threading.Event()
        shown: list[int] = []

        def display() -> None:  # a 20 ms-per-frame display pulling the newest
            while not stop.is_set():
                newest = sub.latest(0.05)
                if TOPIC_FRAME in newest:
                    shown.append(newest[TOPIC_FRAME].seq)
                    time.sleep(0.02)

        viewer = threading.Thread(target=display)
        viewer.start()
        pixels = _image(0)
        start = time.perf_counter()
        n_sent = 300
        for i in range(n_sent):
            pub.send_frame(pixels, frame_index=i, timestamp_s=0.0, trigger_timestamp_s=None, trial=0)
            time.sleep(0.002)
        send_s = time.perf_counter() - start
        time.sleep(0.2)
        stop.set()
        viewer.join(5)
    report = sub.stats.report()
    assert send_s < 3.0  # the publisher never waited for the display
    assert report["gaps"] > n_sent // 3  # most frames dropped, and every drop is visible
    assert report["by_topic"]["frame"] + report["gaps"] <= n_sent
    assert shown == sorted(shown) and len(shown) > 10
    assert report["latency_p99_ms"] < 500  # bounded; default HWM would queue for seconds


def test_subscriber_filtering_topics_sees_no_false_gaps(ctx: zmq.Context) -> None:
    with (
        LossyPublisher("tcp://127.0.0.1:0", hwm=100, context=ctx) as pub,
        LossySubscriber(pub.endpoint, topics=[TOPIC_TRIAL], hwm=100, context=ctx) as sub,
    ):
        deadline = time.monotonic() + 5
        while sub.recv(0.01) is None:  # slow joiner: trial messages until one arrives
            assert time.monotonic() < deadline
            pub.send_event(TOPIC_TRIAL, {"warmup": True})
        for trial in range(5):
            pub.send_event(TOPIC_STATE, {"state": "DelayPeriod"})
            pub.send_event(TOPIC_TRIAL, {"trial": trial})
        events = [Event.from_message(sub.recv(2.0)) for _ in range(5)]
        assert sub.recv(0.05) is None
    assert [e.data["trial"] for e in events] == list(range(5))
    assert sub.stats.gaps == 0 and set(sub.stats.by_topic) == {TOPIC_TRIAL}


def test_latest_returns_the_newest_per_topic_and_counts_the_rest(ctx: zmq.Context) -> None:
    with (
        LossyPublisher("tcp://127.0.0.1:0", hwm=100, context=ctx) as pub,
        LossySubscriber(pub.endpoint, hwm=100, context=ctx) as sub,
    ):
        _wait_for_subscription(pub, sub)
        for i in range(5):
            pub.send_event(TOPIC_TRIAL, {"i": i})
            pub.send_event(TOPIC_STATE, {"i": i})
        time.sleep(0.1)
        newest = sub.latest(1.0)
        assert {t: Event.from_message(m).data["i"] for t, m in newest.items()} == {
            TOPIC_TRIAL: 4,
            TOPIC_STATE: 4,
        }
        assert sub.stats.superseded == 8 and sub.stats.gaps == 0
        assert sub.latest(0.0) == {}


def test_sender_with_no_receiver_raises_a_clear_timeout_then_delivers_what_it_queued(
    ctx: zmq.Context, tmp_path: Path
) -> None:
    address = f"ipc://{tmp_path}/nobody.sock"
    with LosslessSender(address, hwm=2, timeout_s=0.2, context=ctx) as tx:
        start = time.perf_counter()
        queued = 0
        with pytest.raises(SendTimeout, match="receiver is gone or stalled.*Nothing was dropped"):
            for queued in range(10):  # noqa: B007
                tx.send_event(TOPIC_TRIAL, {"n": queued})
        assert time.perf_counter() - start < 2.0
        assert queued <= 3  # the HWM took a couple, then the sender blocked and gave up
        with LosslessReceiver(address, context=ctx) as rx:  # the receiver comes (back)
            tx.send_event(TOPIC_TRIAL, {"n": "retry"})
            seqs = [rx.recv(2.0).seq for _ in range(queued + 1)]
            assert seqs == list(range(queued + 1)) and rx.stats.gaps == 0  # no seq lost to the timeout


def test_sender_raises_when_the_receiver_goes_away(ctx: zmq.Context) -> None:
    rx = LosslessReceiver("tcp://127.0.0.1:0", hwm=2, context=ctx)
    with LosslessSender(rx.endpoint, hwm=2, timeout_s=0.2, linger_ms=100, context=ctx) as tx:
        tx.send_event(TOPIC_TRIAL, {})
        assert rx.recv(2.0) is not None
        rx.close()
        pixels = _image(0)
        start = time.perf_counter()
        with pytest.raises(SendTimeout):
            for i in range(200):
                tx.send_frame(pixels, frame_index=i, timestamp_s=0.0, trigger_timestamp_s=None, trial=0)
        assert time.perf_counter() - start < 3.0


def test_a_sender_process_that_closes_and_exits_delivers_everything(ctx: zmq.Context, tmp_path: Path) -> None:
    # close() terms the sender's own context, which flushes; a bare exit would lose the queued tail.
    with LosslessReceiver(f"ipc://{tmp_path}/exit.sock", context=ctx) as rx:
        code = textwrap.dedent(f"""
            import numpy as np
            from online.transport import LosslessSender
            with LosslessSender({rx.endpoint!r}) as tx:
                for i in range(20):
                    tx.send_frame(np.full((512, 512), i, np.int16), frame_index=i, timestamp_s=0.0,
                                  trigger_timestamp_s=None, trial=0)
        """)
        root = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=30)
        values = []
        while (message := rx.recv(0.5)) is not None:
            values.append(int(message.arrays[0][0, 0]))
    assert values == list(range(20)) and rx.stats.gaps == 0


def test_receive_timeout_returns_none_promptly(ctx: zmq.Context) -> None:
    with LosslessReceiver("tcp://127.0.0.1:0", context=ctx) as rx:
        start = time.perf_counter()
        assert rx.recv(0.05) is None
        assert time.perf_counter() - start < 0.5


def test_endpoints_are_checked_before_any_socket_is_left_open(ctx: zmq.Context) -> None:
    with pytest.raises(TransportError, match="not a loopback address"):
        LosslessReceiver("tcp://0.0.0.0:0", context=ctx)
    with pytest.raises(TransportError, match="expected tcp://host:port"):
        LosslessSender("udp://127.0.0.1:5", context=ctx)
    with LosslessReceiver("tcp://127.0.0.1:0", context=ctx) as rx:
        with pytest.raises(TransportError, match="cannot bind"):
            LosslessReceiver(rx.endpoint, context=ctx)
        assert repr(rx).endswith("bound)")
    assert rx.closed
    rx.close()  # twice is fine
