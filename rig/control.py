"""The session's control socket: switch context, pause, resume, stop, status.

A REP socket served by its own thread, so requests are answered while the trial loop waits on the
Bpod. Requests and replies are JSON objects: `{"command": "switch-context", "context": "auditory"}`
-> `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. A malformed request gets an error reply
and the session goes on; nothing a client sends can stop the server except `stop`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from rig.errors import UserError

log = logging.getLogger(__name__)

COMMANDS: dict[str, tuple[str, ...]] = {
    "status": (),
    "switch-context": ("context",),
    "pause": (),
    "resume": (),
    "stop": (),
    "closed-loop": ("enabled",),
    "soft-code": ("number",),
}
POLL_MS = 100

Handler = Callable[[str, Mapping[str, Any]], dict[str, Any]]


class ControlRequestError(ValueError):
    """A request the session refuses; its message is sent back to the client."""


def parse_request(raw: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request; raises ControlRequestError naming what is wrong."""
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlRequestError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlRequestError("request must be a JSON object with a 'command'")
    command = request.get("command")
    if command not in COMMANDS:
        raise ControlRequestError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    missing = [key for key in COMMANDS[command] if key not in request]
    if missing:
        raise ControlRequestError(f"command {command!r} needs {', '.join(repr(k) for k in missing)}")
    return command, {k: v for k, v in request.items() if k != "command"}


class ControlServer:
    """Serves requests on `endpoint` until closed; `handler(command, args)` returns the reply."""

    def __init__(self, endpoint: str, handler: Handler, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
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
                raw = self._socket.recv()
                self._socket.send(json.dumps(self._answer(raw)).encode())
        finally:
            self._socket.close()

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
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


def send_request(endpoint: str, command: str, timeout_s: float = 2.0, **args: Any) -> dict[str, Any]:
    """One request to a running session; a session that does not answer is a clear UserError."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(json.dumps({"command": command, **args}).encode())
        if not socket.poll(int(timeout_s * 1000)):
            raise UserError(f"no session answered on {endpoint} within {timeout_s:g} s; is `rig run` on?")
        reply = json.loads(socket.recv().decode())
    finally:
        socket.close()
    if not isinstance(reply, dict):
        raise UserError(f"the session on {endpoint} sent a malformed reply: {reply!r}")
    return reply
