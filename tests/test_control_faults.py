"""The control socket survives any request: multipart, binary, huge, deeply nested, wrong field types.

Every test talks to a real `ControlServer` over real ZeroMQ sockets; the last one to a running session."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from rig.control import MAX_REQUEST_BYTES, MAX_REQUEST_DEPTH, ControlServer, send_request
from rig.errors import UserError
from rig.free_endpoints import free_loopback_endpoint, free_network_overrides
from rig.settings import load_settings
from rig.store import read_jsonl
from tests.test_session import SessionThread


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


@pytest.fixture
def server(context: zmq.Context) -> Iterator[tuple[ControlServer, list[tuple[str, dict[str, Any]]]]]:
    """A server whose handler records what reached it and answers with the command's name."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(command: str, args: dict[str, Any]) -> dict[str, Any]:
        seen.append((command, args))
        return {"message": command}

    with ControlServer(free_loopback_endpoint(), handler, context) as srv:
        yield srv, seen


def ask(context: zmq.Context, endpoint: str, *parts: bytes) -> dict[str, Any]:
    """Send one (possibly multipart) request on a fresh REQ socket and return the decoded reply."""
    req = context.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(endpoint)
        req.send_multipart(list(parts))
        assert req.poll(5000), "the control socket did not answer"
        reply = json.loads(req.recv())
        assert not req.getsockopt(zmq.RCVMORE)
        return reply
    finally:
        req.close()


def status_works(context: zmq.Context, endpoint: str) -> bool:
    return ask(context, endpoint, b'{"command": "status"}') == {"ok": True, "message": "status"}


def test_a_multipart_request_gets_an_error_and_the_socket_keeps_serving(context: zmq.Context,
                                                                        server: Any) -> None:
    srv, seen = server
    reply = ask(context, srv.endpoint, b'{"command": "stop"}', b"second part", b"third")
    assert reply == {"ok": False, "error": "a request is one message part, got 3"}
    assert seen == []  # not even the valid-looking first part was acted on
    assert status_works(context, srv.endpoint)
    assert seen == [("status", {})]


@pytest.mark.parametrize(("raw", "error"), [
    (b"\x00\xff\xfe binary", "request is not JSON"),
    (b"", "request is not JSON"),
    (b'"status"', "request must be a JSON object with a 'command'"),
    (b'{"command": ["status"]}', "unknown command ['status']; commands: status"),
    (b'{"command": "switch-context", "context": 3}', "'context' must be a string, got 3"),
    (b'{"command": "switch-context", "context": {"a": 1}}', "'context' must be a string, got {'a': 1}"),
    (b'{"command": "closed-loop", "enabled": "yes"}', "'enabled' must be true or false, got 'yes'"),
    (b'{"command": "closed-loop", "enabled": 1}', "'enabled' must be true or false, got 1"),
    (b'{"command": "soft-code", "number": true}', "'number' must be a whole number, got True"),
    (b'{"command": "soft-code", "number": 1.5}', "'number' must be a whole number, got 1.5"),
    (b'{"command": "soft-code", "number": 1, "trial": "3"}', "'trial' must be a whole number, got '3'"),
    (b'{"command": "status", "x": NaN}', "request is not JSON: NaN is not a JSON number"),
    (b'{"command": "status", "command": "stop"}', "request repeats the key 'command'"),
])
def test_bad_requests_get_one_sentence_and_never_reach_the_handler(context: zmq.Context, server: Any,
                                                                   raw: bytes, error: str) -> None:
    srv, seen = server
    reply = ask(context, srv.endpoint, raw)
    assert reply["ok"] is False and reply["error"].startswith(error), reply
    assert seen == []
    assert status_works(context, srv.endpoint)


def test_a_deeply_nested_request_is_refused(context: zmq.Context, server: Any) -> None:
    srv, seen = server
    deep = b'{"command": "status", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(deep) < MAX_REQUEST_BYTES
    reply = ask(context, srv.endpoint, deep)
    assert reply == {"ok": False, "error": f"request nests deeper than {MAX_REQUEST_DEPTH} levels"}
    shallow_enough = b'{"command": "status", "x": ' + b"[" * (MAX_REQUEST_DEPTH - 1) \
        + b"]" * (MAX_REQUEST_DEPTH - 1) + b"}"
    assert ask(context, srv.endpoint, shallow_enough)["ok"] is True
    too_deep = b'{"command": "status", "x": ' + b"[" * MAX_REQUEST_DEPTH + b"]" * MAX_REQUEST_DEPTH + b"}"
    assert ask(context, srv.endpoint, too_deep)["ok"] is False
    assert len(seen) == 1


def test_a_huge_request_is_refused_without_echoing_it(context: zmq.Context, server: Any) -> None:
    srv, seen = server
    huge = b'{"command": "' + b"x" * (MAX_REQUEST_BYTES + 10) + b'"}'
    reply = ask(context, srv.endpoint, huge)
    assert reply == {"ok": False, "error": f"request is {len(huge)} bytes, at most {MAX_REQUEST_BYTES}"}
    long_name = b'{"command": "' + b"y" * (MAX_REQUEST_BYTES // 2) + b'"}'
    error = ask(context, srv.endpoint, long_name)["error"]
    assert error.startswith("unknown command 'yyy") and len(error) < 300  # the reply never echoes it whole
    assert seen == [] and status_works(context, srv.endpoint)


def test_a_message_beyond_the_transport_bound_drops_that_peer_only(context: zmq.Context, server: Any) -> None:
    srv, _ = server
    greedy = context.socket(zmq.REQ)
    greedy.setsockopt(zmq.LINGER, 0)
    try:
        greedy.connect(srv.endpoint)
        greedy.send(b"z" * (64 * MAX_REQUEST_BYTES))  # ZeroMQ refuses it before it is held in memory
        assert not greedy.poll(300)
    finally:
        greedy.close()
    assert status_works(context, srv.endpoint)


def test_bad_multipart_request_then_stop_still_stops_a_running_session(tmp_path: Path) -> None:
    settings = load_settings(overrides={**free_network_overrides(), "online.enabled": False,
                                        "imaging.source": "none"})
    session = SessionThread(settings, tmp_path, subject="mp", speed=40.0)
    context = zmq.Context()
    try:
        session.wait_for_trials(2)
        endpoint = settings.network.control
        assert ask(context, endpoint, b'{"command": "pause"}', b"x")["ok"] is False
        assert ask(context, endpoint, b"\xff" * 1000)["ok"] is False
        wrong_type = b'{"command": "switch-context", "context": ["auditory"]}'
        assert ask(context, endpoint, wrong_type)["ok"] is False
        assert send_request(endpoint, "stop")["ok"]
    finally:
        context.term()
        if session.thread.is_alive():
            session.runner.request_stop("test teardown")
    result = session.join()
    assert result.end_reason == "stopped by experimenter"
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    assert {r["context"] for r in records} == {"tactile"} and not session.runner.status()["paused"]


@pytest.mark.parametrize("reply", [[b"\xff\xfe"], [b"[1]"], [b'{"ok": true}', b"more"], [b"[" * 5000]])
def test_a_malformed_reply_is_one_sentence_for_the_client(context: zmq.Context, reply: list[bytes]) -> None:
    endpoint = free_loopback_endpoint()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(endpoint)
    try:
        def answer() -> None:
            assert rep.poll(5000)
            rep.recv_multipart()
            rep.send_multipart(reply)

        server = threading.Thread(target=answer)
        server.start()
        with pytest.raises(UserError, match=f"^the session on {endpoint} sent a malformed reply"):
            send_request(endpoint, "status")
        server.join(5)
    finally:
        rep.close()
