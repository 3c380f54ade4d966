"""The session's control socket: switch context, pause, resume, stop, status, closed loop, soft codes and
the manual valve (a free drop or a flush). Any request may say who sent it (`source`), which the session
logs with what the request did.

A REP socket served by its own thread, so requests are answered while the trial loop waits on the
Bpod. Requests and replies are JSON objects: `{"command": "switch-context", "context": "auditory"}`
-> `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. A malformed request gets an error reply
and the session goes on; nothing a client sends can stop the server except `stop`.

What a request may be is bounded before anything acts on it: one message part (the others of a multipart
message are read and dropped, one at a time), at most `MAX_REQUEST_BYTES` (ZeroMQ itself drops a peer
that sends a part over `MAX_MESSAGE_BYTES`, so nothing bigger is ever held), UTF-8 JSON without NaN or
repeated keys, nested at most `MAX_REQUEST_DEPTH` levels, a known command, and every field of the type
its command needs. Error replies quote the offending value shortened, never whole.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from online.transport import (
    LinkSecurity,
    TransportError,
    is_local_endpoint,
    secure_client,
    secure_server,
    security_for,
)
from online.wire import json_depth, short_repr
from rig.errors import UserError
from rig.settings import NetworkSettings

log = logging.getLogger(__name__)

COMMANDS: dict[str, tuple[str, ...]] = {
    "status": (),
    "switch-context": ("context",),
    "pause": (),
    "resume": (),
    "stop": (),
    "closed-loop": ("enabled",),
    "soft-code": ("number",),
    "valve": ("side", "action"),
}
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"soft-code": ("trial",)}
SOURCES = ("experimenter", "monitor", "closed loop")
"""Who may send a request (its optional `source`, logged with what it did; default experimenter)."""
VALVE_ACTIONS = ("drop", "flush")
"""`valve` actions: one calibrated reward drop (a free drop), or the valve open for session.flush_s."""
POLL_MS = 100
MAX_REQUEST_BYTES = 64 * 1024
"""The largest request that is parsed; a bigger one (up to MAX_MESSAGE_BYTES) gets an error reply."""
MAX_MESSAGE_BYTES = 16 * MAX_REQUEST_BYTES
"""ZMQ_MAXMSGSIZE of the socket: ZeroMQ disconnects a peer that sends a bigger message part."""
MAX_REQUEST_DEPTH = 8
"""Nesting levels of objects and lists a request may have (requests are flat objects)."""

def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "context": (lambda v: isinstance(v, str), "a string"),
    "enabled": (lambda v: isinstance(v, bool), "true or false"),
    "number": (_is_whole, "a whole number"),
    "trial": (_is_whole, "a whole number"),
    "side": (lambda v: v in ("left", "right"), "left or right"),
    "action": (lambda v: v in VALVE_ACTIONS, " or ".join(VALVE_ACTIONS)),
    "source": (lambda v: v in SOURCES, ", ".join(SOURCES)),
}
"""The type each command field must have, with how the error names it."""

Handler = Callable[[str, Mapping[str, Any]], dict[str, Any]]


class ControlRequestError(ValueError):
    """A request the session refuses; its message is sent back to the client."""


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the request; a key given twice is refused (which one would count is ambiguous)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ControlRequestError(f"request repeats the key {short_repr(key)}")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ControlRequestError(f"request is not JSON: {name} is not a JSON number")


def parse_request(raw: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request; raises ControlRequestError naming what is wrong."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ControlRequestError(f"request is {len(raw)} bytes, at most {MAX_REQUEST_BYTES}")
    try:
        request = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeated_keys,
                             parse_constant=_no_constant)
    except ControlRequestError:
        raise
    except RecursionError:  # nesting beyond the parser's stack
        raise ControlRequestError(f"request nests deeper than {MAX_REQUEST_DEPTH} levels") from None
    except ValueError as exc:  # not UTF-8, not JSON, or an integer beyond Python's digit limit
        raise ControlRequestError(f"request is not JSON: {exc}") from None
    if json_depth(request) > MAX_REQUEST_DEPTH:
        raise ControlRequestError(f"request nests deeper than {MAX_REQUEST_DEPTH} levels")
    if not isinstance(request, dict):
        raise ControlRequestError("request must be a JSON object with a 'command'")
    command = request.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise ControlRequestError(f"unknown command {short_repr(command)}; commands: {', '.join(COMMANDS)}")
    missing = [key for key in COMMANDS[command] if key not in request]
    if missing:
        raise ControlRequestError(f"command {command!r} needs {', '.join(repr(k) for k in missing)}")
    for key in (*COMMANDS[command], *OPTIONAL_FIELDS.get(command, ()), "source"):
        check, kind = FIELD_TYPES[key]
        if key in request and not check(request[key]):
            raise ControlRequestError(f"{key!r} must be {kind}, got {short_repr(request[key])}")
    return command, {k: v for k, v in request.items() if k != "command"}


class ControlServer:
    """Serves requests on `endpoint` until closed; `handler(command, args)` returns the reply. Off
    loopback only clients holding a key trusted by `security` get in (CURVE, see online/transport.py)."""

    def __init__(self, endpoint: str, handler: Handler, context: zmq.Context | None = None,
                 security: LinkSecurity | None = None) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._release = secure_server(self._socket, endpoint, security)
        except TransportError as exc:
            self._socket.close()
            raise UserError(f"cannot open the control socket: {exc}") from None
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            self._release()
            raise UserError(f"cannot open the control socket {endpoint}: {exc} "
                            "(is another session running? change network.control)") from exc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rig-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(POLL_MS):
                    continue
                raw, parts = self._receive()
                self._socket.send(self._reply(raw, parts))
        finally:
            self._socket.close()
            self._release()

    def _receive(self) -> tuple[bytes, int]:
        """The first part of the waiting message and how many parts it had; the others are read and
        dropped one by one (a REP socket must take the whole message before it may answer)."""
        raw = self._socket.recv()
        parts = 1
        while self._socket.getsockopt(zmq.RCVMORE):
            self._socket.recv(copy=False)
            parts += 1
        return raw, parts

    def _reply(self, raw: bytes, parts: int) -> bytes:
        """The encoded reply to one request; never raises, so every request is answered."""
        reply = self._answer(raw, parts)
        try:
            return json.dumps(reply, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            log.error("control reply to %s is not JSON: %s", short_repr(raw), exc)
            return json.dumps({"ok": False, "error": f"internal error: reply is not JSON ({exc})"}).encode()

    def _answer(self, raw: bytes, parts: int) -> dict[str, Any]:
        try:
            if parts != 1:
                raise ControlRequestError(f"a request is one message part, got {parts}")
            command, args = parse_request(raw)
            return {"ok": True, **self._handler(command, args)}
        except ControlRequestError as exc:
            log.warning("control request refused: %s", exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a handler must not take the session down
            log.exception("control request failed")
            return {"ok": False, "error": f"internal error: {exc}"}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def link_security(network: NetworkSettings) -> LinkSecurity | None:
    """This machine's CURVE identity for the `network` settings (None while all is loopback); a bad key
    folder is a UserError in one sentence."""
    try:
        return security_for(network)
    except TransportError as exc:
        raise UserError(str(exc)) from None


def send_request(endpoint: str, command: str, timeout_s: float = 2.0, *, security: LinkSecurity | None = None,
                 **args: Any) -> dict[str, Any]:
    """One request to a running session (over CURVE off loopback); a session that does not answer is a
    clear UserError."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        try:
            secure_client(socket, endpoint, security)
        except TransportError as exc:
            raise UserError(str(exc)) from None
        socket.connect(endpoint)
        socket.send(json.dumps({"command": command, **args}).encode())
        if not socket.poll(int(timeout_s * 1000)):
            hint = "" if is_local_endpoint(endpoint) else " (and is this machine's key authorised there?)"
            raise UserError(f"no session answered on {endpoint} within {timeout_s:g} s; "
                            f"is `rig run` on?{hint}")
        parts = socket.recv_multipart()
    finally:
        socket.close()
    try:
        reply = json.loads(parts[0].decode("utf-8")) if len(parts) == 1 else None
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        raise UserError(f"the session on {endpoint} sent a malformed reply: {short_repr(parts)}")
    return reply
