"""Closed loop: the decoder's decision fed back into the running trial, once per trial, with its latency.

When: only in decoder-gated trials. The task's gated delay (protocols/directional_licking.py,
`DecoderGate`) is `DelayPeriod` for the gate's `min_s`, then `DelayDecoderWait` until the gate's event (or
`max_s`). The online module learns both entries from the rig's live `state` messages, so it needs to know
nothing about the gate's numbers: a trial without `DelayDecoderWait` is not gated and gets no decision.

How, per trial (`ClosedLoopController`):

- each `DelayPeriod` entry (re)starts the trial's window: an early lick restarts the delay, and the delay
  activity that counts follows the last restart;
- every new frame of the trial at or after that entry updates a `RunningProjection` on the context's
  current delay CD over a sliding window of `window_s` (the decoder's `delay_window_s`, the window the CD
  was trained on); frames that arrived before the state message are replayed from the trial's frames.
  The pipeline pushes all of it with the frame (`on_frame`: the frame, the context and its CD, the
  trial's frames so far), so the controller never asks back;
- once `DelayDecoderWait` has been entered, the window is full and the decoder is ready, the first
  frame (or the wait entry itself, if frames came first) whose decode has confidence >= the threshold sends
  the decision: one byte, or one control request (below). One decision per trial, never more;
- a decision whose frame is older than `max_delay_s` (host time since the frame was sent) is not sent
  (`stale`): it would no longer describe the present.

Outputs:

- `AppPortOutput(path)`: firmware 23's APP port (a second USB serial port of the state machine). One raw byte
  b written there becomes event `APP_SoftCode{b}` in the running trial, in the cycle the device reads it
  (bpod-serial-protocol.md section 5). Byte 1 -> `APP_SoftCode1`, the gate's usual event. Written with
  pyserial, no coordination with the process that runs the trials.
- `SoftCodeOutput(control_endpoint)`: asks the rig, which owns the main port, over its control socket (REQ
  to the rig's REP) to raise a USB soft code. Request (one JSON object, the control protocol of
  rig/control.py): `{"command": "soft-code", "number": N, "trial": T, "source": "online", "t_ns": ...}`.
  N is 1-based (`SoftCode{N}` in the trial, byte N-1 after `~` on the main port, `BpodClient.send_soft_code`);
  T is the trial the decision belongs to, so the rig can refuse a request that arrives after that trial
  ended (reply `{"ok": false, "error": ...}`); `t_ns` is the host time the request was sent (latency). The
  rig answers `{"ok": true, ...}`. Replies are collected without blocking (`poll`); a request left
  unanswered when the next one is due resets the socket (REQ must alternate send and receive).

Every decision is logged (`on_decision` callback -> `<session>/decisions.jsonl`): the trial, its frame index
and times, side, confidence, projection, the host latency from the frame's `t_ns` (set by the frame's
sender) to the byte written (or the request sent), and, from the trial record at the trial's end, the Bpod
time at which the event landed (`Events[APP_SoftCode1]`) and the latency from the end of the decision frame
to that landing on the trial clock (imaging and Bpod clocks meet at the trial-start trigger).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from online.alignment import TrialFrames
from online.decoding import CodingDirection, RunningProjection
from protocols.trial_record import EVENTS_KEY, STATES_KEY, record_part

if TYPE_CHECKING:
    from online.transport import LinkSecurity

logger = logging.getLogger(__name__)

APP_SOFT_CODES = 15
"""Firmware 23 allocates 15 APP soft codes by default: bytes 0..14 (`APP_SoftCode0..14`)."""
DEFAULT_CODES: Mapping[str, int] = {"left": 1, "right": 1}
"""Byte (or soft code number) per decoded side. Both 1: any confident decision ends the gated delay."""


class ClosedLoopOutputError(RuntimeError):
    """A decision that could not be sent (port gone, rig not answering)."""


class DecisionOutput(Protocol):
    """Where a decision goes."""

    name: str

    def send(self, code: int, trial: int) -> None: ...

    def event_name(self, code: int) -> str: ...

    def poll(self) -> None: ...

    def close(self) -> None: ...


class AppPortOutput:
    """Firmware 23 APP port: `send(1, trial)` writes byte 1, which becomes `APP_SoftCode1` in the running
    trial (dropped by the device when no trial runs)."""

    def __init__(self, path: str, *, write_timeout_s: float = 0.05) -> None:
        import serial  # pyserial: only needed when this output is used

        self.path = path
        self.name = f"app_port:{path}"
        self.sent = 0
        self.errors = 0
        try:
            self._serial = serial.Serial(path, 115200, timeout=0, write_timeout=write_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ClosedLoopOutputError(f"cannot open the Bpod APP port {path}: {exc}") from exc
        self._serial_error: type[BaseException] = serial.SerialException

    def send(self, code: int, trial: int) -> None:
        if not 0 <= code < APP_SOFT_CODES:
            raise ClosedLoopOutputError(f"APP soft code byte {code} is out of range 0..{APP_SOFT_CODES - 1}")
        try:
            written = self._serial.write(bytes([code]))
        except (self._serial_error, OSError) as exc:
            self.errors += 1
            raise ClosedLoopOutputError(f"writing to the APP port {self.path} failed: {exc}") from exc
        if written != 1:
            self.errors += 1
            raise ClosedLoopOutputError(f"the APP port {self.path} took {written} bytes of 1")
        self.sent += 1

    def event_name(self, code: int) -> str:
        return f"APP_SoftCode{code}"

    def poll(self) -> None:
        if self._serial.in_waiting:  # the device may echo or send APP bytes: keep its buffer empty
            self._serial.reset_input_buffer()

    def close(self) -> None:
        self._serial.close()


class SoftCodeOutput:
    """Asks the rig for a USB soft code over its control socket (request format in the module docstring)."""

    def __init__(self, endpoint: str, *, context: Any = None, security: LinkSecurity | None = None) -> None:
        import zmq

        self._zmq = zmq
        self.endpoint = endpoint
        self._security = security  # off loopback the request goes over CURVE, like every socket
        self.name = f"soft_code:{endpoint}"
        self._context = context or zmq.Context.instance()
        self._socket: Any = None
        self._awaiting: tuple[int, int] | None = None
        self.sent = 0
        self.accepted = 0
        self.refused = 0
        self.unanswered = 0
        self.last_reply: dict[str, Any] | None = None
        self._open()

    def _open(self) -> None:
        zmq = self._zmq
        if self._socket is not None:
            self._socket.close(linger=0)
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.LINGER, 0)
        from online.transport import secure_client

        secure_client(self._socket, self.endpoint, self._security)
        self._socket.connect(self.endpoint)
        self._awaiting = None

    def send(self, code: int, trial: int) -> None:
        zmq = self._zmq
        self.poll()
        if self._awaiting is not None:  # the rig never answered the last request: start afresh
            self.unanswered += 1
            logger.warning("rig did not answer the soft-code request of trial %d; reconnecting",
                           self._awaiting[0])
            self._open()
        request = {"command": "soft-code", "number": int(code), "trial": int(trial), "source": "online",
                   "t_ns": time.time_ns()}
        try:
            self._socket.send(json.dumps(request).encode(), flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._open()
            raise ClosedLoopOutputError(f"soft-code request to {self.endpoint} not sent: {exc}") from exc
        self._awaiting = (trial, request["t_ns"])
        self.sent += 1

    def poll(self) -> None:
        """Collect a waiting reply (never blocks)."""
        zmq = self._zmq
        if self._awaiting is None or not self._socket.poll(0, zmq.POLLIN):
            return
        trial = self._awaiting[0]
        self._awaiting = None
        try:
            reply = json.loads(self._socket.recv(flags=zmq.NOBLOCK).decode())
        except (zmq.ZMQError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("malformed soft-code reply from %s: %s", self.endpoint, exc)
            self._open()
            return
        self.last_reply = reply if isinstance(reply, dict) else {"reply": reply}
        if isinstance(reply, dict) and reply.get("ok"):
            self.accepted += 1
        else:
            self.refused += 1
            logger.warning("rig refused the soft code of trial %d: %s", trial,
                           reply.get("error") if isinstance(reply, dict) else reply)

    def event_name(self, code: int) -> str:
        return f"SoftCode{code}"

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None


# -- the controller ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateStates:
    """Names of the task's states the controller follows (protocols/directional_licking.py spells them; online
    does not import task code)."""

    delay: str = "DelayPeriod"
    wait: str = "DelayDecoderWait"
    early_lick: str = "EarlyLickDelay"
    before_delay: tuple[str, ...] = ("TrigTrialStart", "SamplePeriod", "EarlyLickSample")


@dataclass
class Decision:
    """One decision sent into a trial (times on the trial clock: seconds from the trial-start trigger)."""

    trial: int
    context: str
    side: str
    code: int
    bpod_event: str
    """The event the decision raises in the trial (`APP_SoftCode1`, `SoftCode1`)."""
    confidence: float
    projection: float
    boundary: float
    frame_index: int
    frame_start_s: float
    frame_end_s: float
    window_frames: int
    frame_t_ns: int
    sent_ns: int
    host_latency_ms: float
    """Frame's t_ns (its sender's clock) -> the byte written / the request sent."""
    output: str
    error: str | None = None
    landed_bpod_s: float | None = None
    """When the event landed in the trial (Bpod clock, from the trial record's Events)."""
    frame_end_to_landing_ms: float | None = None
    """landed_bpod_s - frame_end_s: from the decision frame's last pixel to the event, on the trial clock."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _FrameRef:
    index: int
    start_s: float
    end_s: float
    t_ns: int


@dataclass
class _TrialLoop:
    trial: int
    delay_onset: float | None = None
    wait_s: float | None = None
    gated: bool = False
    closed: bool = False
    projection: RunningProjection | None = None
    context: str = ""
    last_frame: _FrameRef | None = None
    decision: Decision | None = None
    frames: int = 0
    not_ready: int = 0
    below_threshold: int = 0
    stale: int = 0
    max_confidence: float | None = None


class ClosedLoopController:
    """One decision per decoder-gated trial (see the module docstring). Not thread-safe: call it from the
    thread that processes frames and events."""

    def __init__(self, output: DecisionOutput | None, *, confidence_threshold: float = 0.8,
                 max_delay_s: float = 2.0, window_s: float = 0.6, codes: Mapping[str, int] | None = None,
                 on_decision: Callable[[dict[str, Any]], None] | None = None,
                 states: GateStates | None = None, clock_ns: Callable[[], int] = time.time_ns,
                 keep_trials: int = 16) -> None:
        if not 0 <= confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold must be within [0, 1], got {confidence_threshold}")
        if max_delay_s <= 0 or window_s <= 0:
            raise ValueError(f"max_delay_s and window_s must be positive, got {max_delay_s}, {window_s}")
        self.output = output
        self.threshold = float(confidence_threshold)
        self.max_delay_ns = int(max_delay_s * 1e9)
        self.window_s = float(window_s)
        self.codes = dict(codes or DEFAULT_CODES)
        for side in ("left", "right"):
            if side not in self.codes:
                raise ValueError(f"codes needs a code for {side!r}, got {self.codes}")
        self.on_decision = on_decision
        self.states = states or GateStates()
        self.clock_ns = clock_ns
        self.keep_trials = keep_trials
        self._trials: OrderedDict[int, _TrialLoop] = OrderedDict()
        self.decisions = 0
        self.errors = 0
        self.stale = 0
        self.gated_trials = 0
        self.host_latency_ms: list[float] = []
        self.landing_ms: list[float] = []

    @property
    def armed(self) -> bool:
        """True when decisions have somewhere to go."""
        return self.output is not None

    def _loop(self, trial: int) -> _TrialLoop:
        lp = self._trials.get(trial)
        if lp is None:
            lp = self._trials[trial] = _TrialLoop(trial)
            while len(self._trials) > self.keep_trials:
                self._trials.popitem(last=False)
        return lp

    # -- inputs -------------------------------------------------------------------------------------

    def on_state(self, trial: int, state: str, time_s: float) -> Decision | None:
        """A live state entry (trial clock). Returns a decision if the wait's entry completed one."""
        names = self.states
        lp = self._loop(trial)
        if state == names.delay:
            if lp.delay_onset is None or time_s >= lp.delay_onset:
                lp.delay_onset, lp.wait_s, lp.closed, lp.projection = float(time_s), None, False, None
            return None
        if state == names.wait:
            if not lp.gated:
                self.gated_trials += 1
            lp.gated = True
            lp.wait_s = float(time_s)
            if lp.last_frame is not None and lp.projection is not None:
                return self._try_decide(lp, lp.last_frame)
            return None
        if state == names.early_lick:
            lp.wait_s = None  # the delay restarts; DelayPeriod follows
            return None
        if state in names.before_delay:
            return None
        if lp.delay_onset is not None and time_s >= lp.delay_onset:
            lp.closed = True  # the delay is over (go cue, free drop, ...)
        return None

    def wants_frame(self, trial: int, time_s: float) -> bool:
        """Whether a frame of `trial` at `time_s` counts: the trial is in its delay, undecided."""
        lp = self._trials.get(trial)
        return not (lp is None or lp.delay_onset is None or lp.closed or lp.decision is not None
                    or time_s < lp.delay_onset)

    def on_frame(self, trial: int, time_s: float, values: np.ndarray, *, frame_index: int,
                 frame_start_s: float, frame_end_s: float, t_ns: int,
                 cd: tuple[str, CodingDirection] | None, frames: TrialFrames | None = None,
                 ) -> Decision | None:
        """One processed frame of `trial`: `time_s` as the decoder sees it (trial clock), `values` its
        dF/F, with what the decision needs: the trial's (context, current delay CD), None while its decoder
        is not ready, and the trial's frames so far (replayed into a new window)."""
        if not self.wants_frame(trial, time_s):
            return None
        lp = self._trials[trial]
        if cd is None:
            lp.not_ready += 1
            return None
        lp.context, direction = cd
        lp.frames += 1
        frame = _FrameRef(int(frame_index), float(frame_start_s), float(frame_end_s), int(t_ns))
        if lp.projection is None or lp.projection.cd is not direction:
            lp.projection = RunningProjection(direction, self.window_s)
            replayed = False
            if frames is not None and len(frames):
                times, activity = frames.times_s, frames.activity
                for k in np.flatnonzero(times >= lp.delay_onset):
                    lp.projection.add(float(times[k]), activity[k])
                    replayed = replayed or float(times[k]) == float(time_s)
            if not replayed:
                lp.projection.add(float(time_s), values)
        else:
            lp.projection.add(float(time_s), values)
        lp.last_frame = frame
        return self._try_decide(lp, frame)

    def _required_frames(self, frame: _FrameRef) -> int:
        """Frames that fill the window, at the frame's period."""
        return max(1, int(round(self.window_s / (frame.end_s - frame.start_s))) - 1)

    def _try_decide(self, lp: _TrialLoop, frame: _FrameRef) -> Decision | None:
        projection = lp.projection
        if lp.wait_s is None or projection is None or lp.decision is not None or lp.closed:
            return None
        if projection.n_frames < self._required_frames(frame):
            return None
        decode = projection.decode()
        if decode is None:
            return None
        lp.max_confidence = max(lp.max_confidence or 0.0, decode.confidence)
        if decode.confidence < self.threshold:
            lp.below_threshold += 1
            return None
        now = self.clock_ns()
        if now - frame.t_ns > self.max_delay_ns:
            lp.stale += 1
            self.stale += 1
            return None
        if self.output is None:
            return None
        code = self.codes[decode.side]
        error = None
        try:
            self.output.send(code, lp.trial)
        except ClosedLoopOutputError as exc:
            error = str(exc)
            self.errors += 1
            logger.error("closed loop, trial %d: %s", lp.trial, exc)
        sent = self.clock_ns()
        decision = Decision(
            trial=lp.trial, context=lp.context, side=decode.side, code=code,
            bpod_event=self.output.event_name(code),
            confidence=round(decode.confidence, 6), projection=float(decode.projection),
            boundary=float(projection.cd.boundary.value), frame_index=frame.index,
            frame_start_s=round(frame.start_s, 6), frame_end_s=round(frame.end_s, 6),
            window_frames=projection.n_frames, frame_t_ns=frame.t_ns, sent_ns=sent,
            host_latency_ms=round((sent - frame.t_ns) / 1e6, 4), output=self.output.name, error=error)
        lp.decision = decision
        if error is None:
            self.decisions += 1
            self.host_latency_ms.append(decision.host_latency_ms)
            del self.host_latency_ms[:-1000]
        self._log({"kind": "sent" if error is None else "failed", **decision.to_dict()})
        return decision

    def on_trial_end(self, trial: int, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """The trial's record: where the decision landed (its Events). Returns what goes into the trial's
        DecoderResult.closed_loop (None for a trial that was not gated and got no decision)."""
        lp = self._trials.pop(trial, None)
        if lp is None or (not lp.gated and lp.decision is None):
            return None
        events = record_events(record)
        decision = lp.decision
        if decision is None:
            if self.output is None:
                reason = "no output configured (no APP port given, or it could not be opened)"
            elif lp.not_ready and lp.max_confidence is None:
                reason = "decoder not ready"
            elif lp.stale:
                reason = f"confident decode came too late ({lp.stale} stale frames)"
            elif lp.max_confidence is not None:
                reason = f"confidence below threshold (max {lp.max_confidence:.3f} < {self.threshold})"
            else:
                reason = "window never full (or no frame of the delay arrived)"
            info = {"trial": trial, "sent": False, "reason": reason, "max_confidence": lp.max_confidence,
                    "frames": lp.frames}
            self._log({"kind": "none", **info})
            return info
        if decision.error is None and events is not None:
            times = [float(t) for t in events.get(decision.bpod_event, []) if _is_number(t)]
            after = [t for t in times if t >= decision.frame_start_s]
            if after or times:
                landed = (after or times)[0]
                decision.landed_bpod_s = round(landed, 6)
                decision.frame_end_to_landing_ms = round((landed - decision.frame_end_s) * 1e3, 3)
                self.landing_ms.append(decision.frame_end_to_landing_ms)
                del self.landing_ms[:-1000]
        if decision.landed_bpod_s is not None:
            self._log({"kind": "landed", "trial": trial, "bpod_event": decision.bpod_event,
                       "landed_bpod_s": decision.landed_bpod_s, "frame_index": decision.frame_index,
                       "frame_end_to_landing_ms": decision.frame_end_to_landing_ms,
                       "host_latency_ms": decision.host_latency_ms})
        else:
            why = decision.error or ("the trial record has no Events" if events is None
                                     else f"{decision.bpod_event} is not in the trial record's Events")
            self._log({"kind": "not_landed", "trial": trial, "bpod_event": decision.bpod_event,
                       "reason": why})
        return {"sent": decision.error is None, **decision.to_dict()}

    def poll(self) -> None:
        if self.output is not None:
            self.output.poll()

    def _log(self, entry: dict[str, Any]) -> None:
        if self.on_decision is not None:
            try:
                self.on_decision(entry)
            except Exception:  # a logging failure must not stop the loop
                logger.exception("closed loop: could not log a decision")

    def stats(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values else None

        return {"armed": self.armed, "output": self.output.name if self.output else None,
                "gated_trials": self.gated_trials, "decisions": self.decisions, "errors": self.errors,
                "stale": self.stale, "host_latency_p50_ms": pct(self.host_latency_ms, 50),
                "host_latency_p99_ms": pct(self.host_latency_ms, 99),
                "frame_end_to_landing_p50_ms": pct(self.landing_ms, 50),
                "frame_end_to_landing_p99_ms": pct(self.landing_ms, 99)}

    def close(self) -> None:
        if self.output is not None:
            self.output.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def record_events(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A trial record's `Events` {name: [times]} (its `bpod` part, protocols/trial_record.py), or None."""
    return record_part(record, EVENTS_KEY)


def record_states(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A trial record's `States` {name: [[start, end], ...]} (its `bpod` part); None if none."""
    return record_part(record, STATES_KEY)
