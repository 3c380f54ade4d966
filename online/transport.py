"""ZeroMQ sockets with the semantics each path needs, and the statistics every receiver keeps.

Two paths (see DESIGN.md, "Processes and wires"):

- Lossless (`LosslessSender` -> `LosslessReceiver`, PUSH/PULL): frames that must reach the online
  processor and the disk. When the receiver is slow the queues fill (SNDHWM + RCVHWM messages, plus
  what the kernel buffers) and `send` blocks: back-pressure reaches the source. When the receiver is
  gone, `send` blocks up to `timeout_s` and then raises `SendTimeout`; nothing is dropped by choice and
  the unsent message's sequence number is given back, so the caller may retry or stop. PUSH/PULL was
  chosen over DEALER/ROUTER with credit flow control: the HWM already bounds what is in flight (memory
  and latency), it needs no reverse channel, and at one receiver per endpoint credit adds nothing. Two
  caveats: PUSH deals messages round-robin, so give each lossless endpoint exactly one receiver; and
  messages already queued when a receiver process dies are lost with it (its successor starts a new
  count, the sender's next send may block until it connects).
- Lossy latest-wins (`LossyPublisher` -> `LossySubscriber`, PUB/SUB) for displays: tiny high-water
  marks (2 messages by default), PUB drops when a subscriber is behind, never blocks the sender.
  Receivers see each drop as a sequence gap. `LossySubscriber.latest()` drains everything waiting and
  keeps the newest per topic. ZMQ_CONFLATE would do this inside libzmq but does not support multipart
  messages, so it is not used. Slow joiner: a subscriber misses what was published before its
  subscription reached the publisher; gaps are counted from the first message seen per stream.

Socket options are set before bind/connect. LINGER is short (1 s on the lossless sender so a normal
close can flush, 0 elsewhere), so closing never hangs. An endpoint made without `context=` owns a
private context and terms it in `close()`, which is what flushes pending messages before exit.
Sockets are not thread-safe: use each from one thread. Endpoints are `tcp://127.0.0.1:port` (`:0`
picks a free port, see `.endpoint`), `ipc://path` or `inproc://name`; binding a non-loopback TCP
address needs `allow_remote=True`.

Off this machine every socket uses ZeroMQ CURVE (encryption, and authentication of both ends); loopback,
ipc and inproc stay plain. `LinkSecurity` is this machine's key pair (`create_key_pair`, `rig keys`) and
the folder of public keys it trusts. `secure_server` (the side that binds) makes a socket a CURVE server
whose clients are checked by pyzmq's ZAP authenticator (one per context, started with the first secured
server) against that folder, reread at each handshake; a refused peer gets nothing and is logged with
its address. `secure_client` (the side that connects) needs the server's public key: it is the trusted
key named after the endpoint's host (`tcp://10.0.0.1:5555` -> `10.0.0.1.key`, `tcp://rig-pc:5555` ->
`rig-pc.key`). A non-loopback endpoint without a `LinkSecurity` is refused, never left plain.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from online.wire import TOPIC_FRAME, Message, Part, Sender, WireError, decode_message, default_source

log = logging.getLogger(__name__)

DEFAULT_LOSSLESS_HWM = 32  # messages per side; 32 x 0.5 MB frames ~ 1 s at 30 Hz of slack
DEFAULT_LOSSY_HWM = 2
DEFAULT_SEND_TIMEOUT_S = 2.0
# OS socket buffers (SO_SNDBUF/SO_RCVBUF). 256 KiB instead of Linux autotuning: measured on a 2-core
# machine with 0.5 MB frames over tcp loopback it raised PUSH/PULL throughput from ~2,700 to ~4,300-5,500
# frames/s (copies stay in cache) and it bounds what the kernel queues behind a small HWM on the lossy
# path. None leaves the OS default.
DEFAULT_KERNEL_BUFFER_BYTES = 256 * 1024
LOSSLESS_LINGER_MS = 1000

Outcome = Literal["first", "ok", "gap", "duplicate", "out_of_order", "restart"]


class TransportError(RuntimeError):
    """A socket that cannot do what was asked (bad endpoint, address in use, closed)."""


class SendTimeout(TransportError, TimeoutError):
    """A lossless send that no receiver took within the timeout. Nothing was dropped."""


class RateLimitedLog:
    """Logs to `logger` at most once per interval and says how many messages it held back: for what can
    happen on every message or frame (malformed input, gaps, refusals), so a flood is one line a second.
    Here because every process (frame sources in hardware/ included) may import this module."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = -math.inf
        self._held = 0

    def __call__(self, level: int, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return
        if self._held:
            text = f"{text} (+{self._held} similar in the last {now - self._last:.1f} s)"
        self.logger.log(level, text, *args)
        self._last, self._held = now, 0


@dataclass
class _Stream:
    first: int
    highest: int
    missing: set[int] = field(default_factory=set)


MAX_STREAMS = 1024
"""(source, topic) streams and topics a receiver keeps counts for; beyond, the oldest stream is forgotten and
new topics are counted together as `OTHER_TOPICS`, so senders that rename themselves cannot grow them."""
OTHER_TOPICS = b"(other)"


class ReceiverStats:
    """Counts what one receiver saw, per (source, topic) stream of sequence numbers.

    - `gaps`: sequence numbers skipped and not (yet) arrived. Counted from the first message seen.
    - `out_of_order`: a message older than the newest seen; if it filled a gap, the gap is taken back.
    - `duplicates`: a sequence number seen before (within `reorder_window`).
    - `restarts`: a stream that started again at seq 0 (a sender restarted under the same name).
    - `malformed`: messages that broke the wire format; skipped, logged at most once per second.
    - `superseded`: received but discarded by a latest-wins reader for a newer one (not a loss).
    Latency is receipt `time.time_ns()` minus the sender's `t_ns`: across machines it includes the
    clock offset between them.
    """

    def __init__(
        self, latency_window: int = 1000, reorder_window: int = 1024, warn_on_gaps: bool = False
    ) -> None:
        self.received = 0
        self.gaps = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.restarts = 0
        self.malformed = 0
        self.superseded = 0
        self.by_topic: Counter[bytes] = Counter()
        self.reorder_window = reorder_window
        self.warn_on_gaps = warn_on_gaps
        self._streams: dict[tuple[str, bytes], _Stream] = {}
        self._latency_ns: deque[int] = deque(maxlen=latency_window)
        self._malformed_log = RateLimitedLog(log)
        self._gap_log = RateLimitedLog(log)

    def record(self, message: Message, received_ns: int | None = None) -> Outcome:
        """Count one decoded message; returns how its sequence number was classified."""
        now = time.time_ns() if received_ns is None else received_ns
        return self.observe(message.topic, message.source, message.seq, message.t_ns, now)

    def observe(self, topic: bytes, source: str, seq: int, t_ns: int, received_ns: int) -> Outcome:
        """Count one message given its envelope (the pure core of `record`)."""
        self.received += 1
        known = topic in self.by_topic or len(self.by_topic) < MAX_STREAMS
        self.by_topic[topic if known else OTHER_TOPICS] += 1
        self._latency_ns.append(received_ns - t_ns)
        key = (source, topic)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                del self._streams[next(iter(self._streams))]
            self._streams[key] = _Stream(first=seq, highest=seq)
            return "first"
        if seq == stream.highest + 1:
            stream.highest = seq
            return "ok"
        if seq > stream.highest:
            skipped = seq - stream.highest - 1
            self.gaps += skipped
            floor = seq - self.reorder_window
            stream.missing = {m for m in stream.missing if m >= floor}
            stream.missing.update(range(max(stream.highest + 1, floor), seq))
            stream.highest = seq
            if self.warn_on_gaps:
                self._gap_log(
                    logging.WARNING,
                    f"{topic!r} from {source}: {skipped} message(s) missing "
                    f"before seq {seq} ({self.gaps} in total)",
                )
            return "gap"
        if seq in stream.missing:
            stream.missing.discard(seq)
            self.gaps -= 1
            self.out_of_order += 1
            return "out_of_order"
        if seq == 0:
            self.restarts += 1
            self._streams[key] = _Stream(first=0, highest=0)
            log.info("%r from %s restarted at seq 0", topic, source)
            return "restart"
        if seq < stream.first or seq < stream.highest - self.reorder_window:
            self.out_of_order += 1  # from before we joined, or too old to tell
            return "out_of_order"
        self.duplicates += 1
        return "duplicate"

    def record_malformed(self, error: Exception) -> None:
        """Count a message that broke the wire format; it is skipped, never raised."""
        self.malformed += 1
        self._malformed_log(logging.WARNING, f"skipped malformed message ({self.malformed} so far): {error}")

    def latency_ms(self) -> tuple[float, float, float] | None:
        """p50, p99 and max latency in ms over the recent window, or None before any message."""
        if not self._latency_ns:
            return None
        values = np.fromiter(self._latency_ns, dtype=np.int64, count=len(self._latency_ns)) / 1e6
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99), float(values.max())

    def report(self) -> dict[str, Any]:
        """Plain-JSON summary for health messages and logs."""
        latency = self.latency_ms()
        seen = self.received - self.duplicates
        return {
            "received": self.received,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "restarts": self.restarts,
            "malformed": self.malformed,
            "superseded": self.superseded,
            "loss_fraction": self.gaps / (seen + self.gaps) if seen + self.gaps else 0.0,
            "latency_p50_ms": None if latency is None else round(latency[0], 3),
            "latency_p99_ms": None if latency is None else round(latency[1], 3),
            "latency_max_ms": None if latency is None else round(latency[2], 3),
            "latency_window": len(self._latency_ns),
            "streams": len(self._streams),
            "by_topic": {t.decode(errors="replace"): n for t, n in sorted(self.by_topic.items())},
        }


_ENDPOINT = re.compile(r"(?P<scheme>tcp|ipc|inproc)://(?P<address>.+)")
_TCP_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})")


def parse_endpoint(endpoint: str, *, bind: bool = False) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of an endpoint that names one address: tcp://HOST:PORT with a port from 1 to
    65535 (an IPv6 host in brackets), ipc://PATH or inproc://NAME; host and port are None off tcp. For a
    bind, port 0 or * (any free port) is allowed too and gives port None.

    The one reading of an endpoint, for every package and every socket; a ValueError says what the
    endpoint must look like."""
    m = _ENDPOINT.fullmatch(endpoint)
    if m is None:
        raise ValueError("must look like tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if m["scheme"] != "tcp":
        return m["scheme"], None, None
    host, _, port = m["address"].rpartition(":")
    if bind and port in ("*", "0") and host:
        tcp = _TCP_ADDRESS.fullmatch(f"{host}:1")
        if tcp is not None:
            return "tcp", tcp["host"].strip("[]"), None
    tcp = _TCP_ADDRESS.fullmatch(m["address"])
    if tcp is None or not 1 <= int(tcp["port"]) <= 65535:
        raise ValueError("must look like tcp://HOST:PORT with a port from 1 to 65535")
    return "tcp", tcp["host"].strip("[]"), int(tcp["port"])


def _check_endpoint(endpoint: str, bind: bool, allow_remote: bool) -> str:
    """Validate an endpoint; for a bind, refuse non-loopback TCP unless allowed and map port 0."""
    try:
        scheme, host, port = parse_endpoint(endpoint, bind=bind)
    except ValueError as exc:
        raise TransportError(f"endpoint {endpoint!r}: expected tcp://host:port, ipc://path or inproc://name "
                             f"({exc})") from None
    if scheme != "tcp" or not bind:
        return endpoint
    assert host is not None
    if not (allow_remote or _is_loopback_host(host)):
        raise TransportError(
            f"refusing to bind {endpoint}: not a loopback address. Binding other interfaces must be "
            "explicit (allow_remote=True; see network.bind_loopback_only in settings.yaml)"
        )
    return f"{endpoint.rpartition(':')[0]}:*" if port is None else endpoint


# --------------------------------------------------------------------------------------------------------
# CURVE off this machine

KEY_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_Z85_KEY_LENGTH = 40


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_endpoint(endpoint: str) -> bool:
    """Whether an endpoint stays on this machine (ipc, inproc, or tcp on a loopback host): such sockets
    stay plain; every other one must use CURVE. An endpoint that is no endpoint is not local."""
    try:
        scheme, host, _ = parse_endpoint(endpoint, bind=True)
    except ValueError:
        return False
    return scheme != "tcp" or _is_loopback_host(host or "")


def _endpoint_host(endpoint: str) -> str:
    try:
        return parse_endpoint(endpoint, bind=True)[1] or ""
    except ValueError:
        return ""


def _read_key_file(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys of one key file; TransportError in one sentence if it is not one."""
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise TransportError(f"{path} is not a CURVE key file from `rig keys` ({exc})") from None
    keys = (public, secret_key) if secret else (public,)
    if any(key is None or len(key) != _Z85_KEY_LENGTH for key in keys):
        raise TransportError(f"{path} is not a CURVE key file from `rig keys` (a key is missing or bad)")
    return public, secret_key


@dataclass(frozen=True)
class LinkSecurity:
    """This machine's CURVE key pair and the folder of the public keys it trusts (see the module doc)."""

    name: str
    """The key pair's name (its file name): the host name or address other machines reach this one by."""
    public_key: bytes
    secret_key: bytes = field(repr=False)
    authorized_keys: Path
    """Folder of trusted public keys (`<name>.key`): the clients let in, and the servers by host."""

    @classmethod
    def load(cls, keys: Path, authorized_keys: Path) -> LinkSecurity:
        """Read the one key pair in `keys`; refuses, in one sentence, a missing folder or key, several
        key pairs, a secret others can read, and a missing authorised folder."""
        keys, authorized_keys = Path(keys), Path(authorized_keys)
        if not keys.is_dir():
            raise TransportError(f"CURVE keys folder {keys}: no such folder (make one with `rig keys`)")
        secrets = sorted(keys.glob(f"*{SECRET_SUFFIX}"))
        if not secrets:
            raise TransportError(f"CURVE keys folder {keys} has no {SECRET_SUFFIX} file "
                                 "(create this machine's key pair with `rig keys`)")
        if len(secrets) > 1:
            names = ", ".join(path.name for path in secrets)
            raise TransportError(f"CURVE keys folder {keys} holds more than one key pair ({names}): "
                                 "keep only this machine's")
        secret_path = secrets[0]
        if stat.S_IMODE(secret_path.stat().st_mode) & 0o077:
            raise TransportError(f"{secret_path} (in CURVE keys folder {keys}) can be read by other users: "
                                 f"chmod 600 {secret_path}")
        public, secret = _read_key_file(secret_path, secret=True)
        if not authorized_keys.is_dir():
            raise TransportError(f"CURVE authorised keys folder {authorized_keys}: no such folder (put the "
                                 f"{KEY_SUFFIX} files of the machines allowed to connect there)")
        assert secret is not None
        return cls(secret_path.name.removesuffix(SECRET_SUFFIX), public, secret, authorized_keys)

    def server_key(self, endpoint: str) -> bytes:
        """The public key of the machine serving `endpoint`: the trusted key named after its host."""
        path = self.authorized_keys / f"{_endpoint_host(endpoint)}{KEY_SUFFIX}"
        if not path.is_file():
            raise TransportError(f"no public key for the server of {endpoint}: expected {path} (copy the "
                                 f"{KEY_SUFFIX} file `rig keys` made on that machine there, under this name)")
        return _read_key_file(path, secret=False)[0]

    def trusted_keys(self) -> set[bytes]:
        """The public keys in the authorised folder now; a file that is not a key is logged and skipped."""
        trusted: set[bytes] = set()
        for path in sorted(self.authorized_keys.glob(f"*{KEY_SUFFIX}")):
            try:
                trusted.add(_read_key_file(path, secret=False)[0])
            except TransportError as exc:
                log.warning("%s", exc)
        return trusted


def security_for(network: Any) -> LinkSecurity | None:
    """The `LinkSecurity` of a `network` settings section (`keys`, `authorized_keys`,
    `bind_loopback_only`); None while everything stays on loopback, where nothing is secured."""
    if network.bind_loopback_only or network.keys is None or network.authorized_keys is None:
        return None
    return LinkSecurity.load(network.keys, network.authorized_keys)


def create_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write `<folder>/<name>.key` (public) and `<name>.key_secret` (mode 0600, in a folder only the owner
    reads); never overwrites. Returns (public, secret)."""
    folder = Path(folder)
    if not _KEY_NAME.fullmatch(name):
        raise TransportError(f"key name {name!r}: use letters, digits, '.', '-' and '_' (the host name or "
                             "address other machines reach this one by)")
    public, secret = folder / f"{name}{KEY_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise TransportError(f"{path} already exists: keep it, or remove it to make a new key pair")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(stat.S_IMODE(folder.stat().st_mode) & ~0o077)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".new-key-"))  # mode 0700: no window for readers
    try:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
        made_secret.chmod(0o600)
        made_public.chmod(0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


class _Gatekeeper(ThreadAuthenticator):
    """pyzmq's ZAP authenticator for one context; remembers each request's peer address for the log."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context, log=log)
        self.servers = 0
        self.peer = "an unknown address"
        self.refusals = 0
        self.refusal_log = RateLimitedLog(log)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.peer = msg[3].decode(errors="replace") if len(msg) > 3 else "an unknown address"
        await super().handle_zap_message(msg)


class _TrustedFolder:
    """ZAP credentials check for one server socket: the client's key must be in the authorised folder."""

    def __init__(self, gate: _Gatekeeper, endpoint: str, security: LinkSecurity) -> None:
        self.gate, self.endpoint, self.security = gate, endpoint, security

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            allowed = key in self.security.trusted_keys()
        except OSError as exc:
            log.error("CURVE authorised keys folder %s unreadable: %s", self.security.authorized_keys, exc)
            allowed = False
        if not allowed:
            self.gate.refusals += 1
            self.gate.refusal_log(
                logging.WARNING,
                f"refused a connection from {self.gate.peer} on {self.endpoint}: its public key "
                f"{key.decode(errors='replace')} is not in {self.security.authorized_keys}",
            )
        return allowed


_gates: dict[int, _Gatekeeper] = {}
_gates_lock = threading.Lock()


def _admit_with(context: zmq.Context, endpoint: str, security: LinkSecurity) -> Callable[[], None]:
    """Checks clients of the server socket on `endpoint` in `context`; returns the release."""
    with _gates_lock:
        gate = _gates.get(id(context))
        if gate is None:
            gate = _Gatekeeper(context)
            gate.start()
            _gates[id(context)] = gate
        gate.configure_curve_callback(domain=endpoint, credentials_provider=_TrustedFolder(gate, endpoint,
                                                                                           security))
        gate.servers += 1
    released = False

    def release() -> None:
        nonlocal released
        with _gates_lock:
            if released:
                return
            released = True
            gate.credentials_providers.pop(endpoint, None)
            gate.servers -= 1
            if gate.servers == 0:  # the context can be termed only once the authenticator is gone
                gate.stop()
                del _gates[id(context)]

    return release


def _no_release() -> None:
    """Nothing to release: the socket was not secured."""


def _plain_refused(endpoint: str, verb: str) -> TransportError:
    return TransportError(f"refusing to {verb} {endpoint} without CURVE: it is not a loopback address "
                          "(set network.keys and network.authorized_keys in settings.yaml; see `rig keys`)")


def secure_server(socket: zmq.Socket, endpoint: str, security: LinkSecurity | None) -> Callable[[], None]:
    """Make `socket` (before it binds `endpoint`) a CURVE server whose clients must hold a trusted key;
    nothing on a local endpoint. Returns the release to call once the socket is closed."""
    if is_local_endpoint(endpoint):
        return _no_release
    if security is None:
        raise _plain_refused(endpoint, "bind")
    socket.curve_secretkey = security.secret_key
    socket.curve_publickey = security.public_key
    socket.curve_server = True
    socket.zap_domain = endpoint.encode()
    return _admit_with(socket.context, endpoint, security)


def secure_client(socket: zmq.Socket, endpoint: str, security: LinkSecurity | None) -> None:
    """Make `socket` (before it connects to `endpoint`) a CURVE client of the server named by the
    endpoint's host; nothing on a local endpoint."""
    if is_local_endpoint(endpoint):
        return
    if security is None:
        raise _plain_refused(endpoint, "connect to")
    socket.curve_serverkey = security.server_key(endpoint)
    socket.curve_secretkey = security.secret_key
    socket.curve_publickey = security.public_key


class _Endpoint:
    """One socket, options set before bind/connect, closed by `close()` or `with`."""

    def __init__(
        self,
        kind: int,
        endpoint: str,
        *,
        bind: bool,
        options: Mapping[int, int],
        context: zmq.Context | None,
        allow_remote: bool,
        security: LinkSecurity | None = None,
    ) -> None:
        address = _check_endpoint(endpoint, bind, allow_remote)
        # Without a shared context each endpoint owns one, so close() can term it: that is what
        # makes libzmq flush pending messages (up to LINGER) before the process may exit.
        self._owns_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket: zmq.Socket = self._context.socket(kind)
        self._release: Callable[[], None] = _no_release
        try:
            for option, value in options.items():
                self._socket.setsockopt(option, value)
            if bind:
                self._release = secure_server(self._socket, endpoint, security)
                self._socket.bind(address)
                self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                secure_client(self._socket, endpoint, security)
                self._socket.connect(address)
                self.endpoint = address
        except (zmq.ZMQError, TransportError) as exc:
            self._socket.close(linger=0)
            self._release()
            if self._owns_context:
                self._context.term()
            if isinstance(exc, TransportError):
                raise
            verb = "bind" if bind else "connect to"
            raise TransportError(f"cannot {verb} {endpoint}: {exc}") from exc
        self.bound = bind

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def close(self) -> None:
        """Close the socket; safe to call twice. With its own context, returns once pending
        messages have left or LINGER ran out. With a shared context, pending messages are only
        flushed when the caller terms that context (a process that just exits loses them)."""
        if not self._socket.closed:
            self._socket.close()
        self._release()
        if self._owns_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("bound" if self.bound else "connected")
        return f"{type(self).__name__}({self.endpoint!r}, {state})"


class _SendingEndpoint(_Endpoint):
    """Numbering (one counter per topic, see `online.wire.Sender`) and the typed send helpers.

    Arrays go out zero-copy: do not modify an array after sending it (copy it first if the source
    reuses its buffer), because ZeroMQ reads it later from its I/O thread.
    """

    def _init_sender(self, source: str | None) -> None:
        self.sender = Sender(source or default_source())

    def send(
        self, topic: bytes, fields: Mapping[str, Any] | None = None, arrays: Sequence[np.ndarray] = ()
    ) -> None:
        """Send one message with the record's `fields` (JSON) and `arrays` (raw buffers)."""
        self._send_numbered(topic, self.sender.message(topic, fields, arrays))

    def send_event(self, topic: bytes, data: Mapping[str, Any]) -> None:
        """Send a generic event or result: `data` as JSON payload, no arrays."""
        self._send_numbered(topic, self.sender.event(topic, data))

    def send_frame(
        self,
        pixels: np.ndarray,
        *,
        frame_index: int,
        timestamp_s: float,
        trigger_timestamp_s: float | None,
        trial: int,
        channel: int = 0,
        plane: int = 0,
    ) -> None:
        """Send one 2-D frame of one channel and plane (timestamps on the imaging clock)."""
        parts = self.sender.frame(
            pixels,
            frame_index=frame_index,
            timestamp_s=timestamp_s,
            trigger_timestamp_s=trigger_timestamp_s,
            trial=trial,
            channel=channel,
            plane=plane,
        )
        self._send_numbered(TOPIC_FRAME, parts)

    def send_parts(self, parts: list[Part]) -> None:
        """Send already-encoded parts, numbered by the caller (replayed or crafted messages)."""
        self._send(parts)

    def _send_numbered(self, topic: bytes, parts: list[Part]) -> None:
        try:
            self._send(parts)
        except TransportError:
            self.sender.rollback(topic)  # not sent: a retry reuses the number, no false gap
            raise

    def _send(self, parts: list[Part]) -> None:
        raise NotImplementedError


class _ReceivingEndpoint(_Endpoint):
    """Receives, decodes zero-copy, counts, and skips malformed messages."""

    stats: ReceiverStats

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message, or None after `timeout_s` (None waits forever)."""
        message = self._recv_ready()  # fast path: something is already waiting (no poll call)
        if message is not None:
            return message
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                return None
            message = self._recv_ready()
            if message is not None:
                return message
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _recv_ready(self) -> Message | None:
        """Take one waiting message; None if it was malformed (counted) or nothing was there."""
        try:
            parts = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        received_ns = time.time_ns()
        try:
            message = decode_message(parts)
        except WireError as exc:
            self.stats.record_malformed(exc)
            return None
        self.stats.record(message, received_ns)
        return message


def _buffer_options(kernel_buffer_bytes: int | None, option: int) -> dict[int, int]:
    return {} if kernel_buffer_bytes is None else {option: kernel_buffer_bytes}


class LosslessSender(_SendingEndpoint):
    """PUSH end of the lossless path: blocks when the receiver is behind, raises `SendTimeout`
    after `timeout_s` when nobody takes the message. Connects by default (the receiver binds)."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        hwm: int = DEFAULT_LOSSLESS_HWM,
        linger_ms: int = LOSSLESS_LINGER_MS,
        kernel_buffer_bytes: int | None = DEFAULT_KERNEL_BUFFER_BYTES,
        source: str | None = None,
        context: zmq.Context | None = None,
        allow_remote: bool = False,
        security: LinkSecurity | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.hwm = hwm
        options = {
            zmq.SNDHWM: hwm,
            zmq.SNDTIMEO: max(0, round(timeout_s * 1000)),
            zmq.LINGER: linger_ms,
            **_buffer_options(kernel_buffer_bytes, zmq.SNDBUF),
        }
        super().__init__(
            zmq.PUSH, endpoint, bind=bind, options=options, context=context, allow_remote=allow_remote,
            security=security,
        )
        self._init_sender(source)

    def _send(self, parts: list[Part]) -> None:
        try:
            self._socket.send_multipart(parts, copy=False)
        except zmq.Again:
            topic = bytes(parts[0]).decode(errors="replace")
            raise SendTimeout(
                f"no receiver took a {topic!r} message within {self.timeout_s:g} s on {self.endpoint} "
                f"(its queue of {self.hwm} is full): the receiver is gone or stalled. Nothing was "
                "dropped; this message was not sent (retry or stop)."
            ) from None
        except zmq.ZMQError as exc:
            raise TransportError(f"send on {self.endpoint} failed: {exc}") from exc


class LosslessReceiver(_ReceivingEndpoint):
    """PULL end of the lossless path. Binds by default; warns (rate-limited) on any gap."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = DEFAULT_LOSSLESS_HWM,
        kernel_buffer_bytes: int | None = DEFAULT_KERNEL_BUFFER_BYTES,
        latency_window: int = 1000,
        context: zmq.Context | None = None,
        allow_remote: bool = False,
        security: LinkSecurity | None = None,
    ) -> None:
        self.stats = ReceiverStats(latency_window=latency_window, warn_on_gaps=True)
        options = {zmq.RCVHWM: hwm, zmq.LINGER: 0, **_buffer_options(kernel_buffer_bytes, zmq.RCVBUF)}
        super().__init__(
            zmq.PULL, endpoint, bind=bind, options=options, context=context, allow_remote=allow_remote,
            security=security,
        )


class LossyPublisher(_SendingEndpoint):
    """PUB end of the display path: never blocks; drops for subscribers that are behind.
    `kernel_buffer_bytes` caps the OS socket buffer too, since the HWM alone does not bound TCP queues
    (for a subscriber that must not miss results, such as a data store, pass a large `hwm`)."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = DEFAULT_LOSSY_HWM,
        kernel_buffer_bytes: int | None = DEFAULT_KERNEL_BUFFER_BYTES,
        source: str | None = None,
        context: zmq.Context | None = None,
        allow_remote: bool = False,
        security: LinkSecurity | None = None,
    ) -> None:
        options = {zmq.SNDHWM: hwm, zmq.LINGER: 0, **_buffer_options(kernel_buffer_bytes, zmq.SNDBUF)}
        super().__init__(
            zmq.PUB, endpoint, bind=bind, options=options, context=context, allow_remote=allow_remote,
            security=security,
        )
        self._init_sender(source)

    def _send(self, parts: list[Part]) -> None:
        try:
            self._socket.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB drops instead of raising; kept for safety
            pass
        except zmq.ZMQError as exc:
            raise TransportError(f"send on {self.endpoint} failed: {exc}") from exc


class LossySubscriber(_ReceivingEndpoint):
    """SUB end of the display path. Subscribes to `topics` (prefixes; all by default).
    Connects by default. Use `latest()` from a display timer to get only the newest per topic."""

    def __init__(
        self,
        endpoint: str,
        *,
        topics: Iterable[bytes] = (b"",),
        bind: bool = False,
        hwm: int = DEFAULT_LOSSY_HWM,
        kernel_buffer_bytes: int | None = DEFAULT_KERNEL_BUFFER_BYTES,
        latency_window: int = 1000,
        context: zmq.Context | None = None,
        allow_remote: bool = False,
        security: LinkSecurity | None = None,
    ) -> None:
        self.stats = ReceiverStats(latency_window=latency_window)
        options = {zmq.RCVHWM: hwm, zmq.LINGER: 0, **_buffer_options(kernel_buffer_bytes, zmq.RCVBUF)}
        super().__init__(
            zmq.SUB, endpoint, bind=bind, options=options, context=context, allow_remote=allow_remote,
            security=security,
        )
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic)

    def latest(self, timeout_s: float = 0.0) -> dict[bytes, Message]:
        """Wait up to `timeout_s` for something, then drain all that is waiting and return the
        newest message per topic; older ones are counted as `superseded`."""
        newest: dict[bytes, Message] = {}
        first = self.recv(timeout_s)
        if first is None:
            return newest
        newest[first.topic] = first
        while True:
            message = self._recv_ready()
            if message is None:
                if not self._socket.poll(0, zmq.POLLIN):
                    return newest
                continue  # a malformed one was skipped; more may be waiting
            if message.topic in newest:
                self.stats.superseded += 1
            newest[message.topic] = message
