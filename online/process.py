"""The online module as a process: sockets and files around `OnlinePipeline` (live), and the same pipeline
over recorded ScanImage files (replay). Entry point: `python -m online` (online/__main__.py).

Live (`run_live`):

- binds the lossless PULL on `network.frames` (frames must not be lost: the sources block or queue);
- SUBscribes (connects) to the rig's `network.events_pub`, topics `trial` and `state`;
- binds a PUB on `network.online_results` and publishes a `TraceFrame` per frame, a `RoiSnapshot` about every
  2 s, a `DecoderResult` per trial and a `HealthReport` about every second (online/messages.py). Its high
  water mark is large (`RESULTS_HWM`) so that a subscriber that keeps up (the rig's data store) loses
  nothing; a display that falls behind still only costs its own queue;
- writes the session outputs (online/store.py) into `--session`, and the subject's coding directions into
  `<--subject-dir>/coding_directions.json`;
- one thread: before each frame it takes every waiting event (state entries must be applied before the
  frames they concern, for the closed loop), then waits up to `POLL_S` for a frame; timers run between.
- a malformed frame or event is counted (`HealthReport.malformed`, `online_summary.json`), logged at most
  once per second and skipped; it never stops the process;
- stops on SIGTERM or SIGINT: pending trials are finalised, files closed, `online_summary.json` written,
  exit status 0. Exit status 2 is a user error (bad online settings, an unreadable ROI folder, ROIs of another
  frame size), said in one line on stderr; 1 an internal error.
- prints `ready` on stdout (flushed) once its sockets are bound and connected: `rig/online_child.py`
  waits for that line.

Replay (`replay`): ScanImage files (a file, or a folder of per-trial loop-mode files, in file-counter order)
through the same pipeline as fast as it can: per-frame shifts and traces into `--out`, and, with `--trials`
(the session's trials.jsonl), each trial's record after its file, so decoder.jsonl is written as live.
A damaged file (cut short, corrupt, not a TIFF) costs only what cannot be read: its readable frames are
replayed, then the next file; each stop is one line on stderr naming the file and the frame, and the exit
status is 2. Text that is not UTF-8 costs nothing (a warning line, the frames are all replayed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from online.closed_loop import AppPortOutput, ClosedLoopController, ClosedLoopOutputError, SoftCodeOutput
from online.config import PipelineConfig
from online.decoding import CodingDirectionStore
from online.errors import MalformedInput, PipelineError, UserInputError
from online.messages import HealthReport
from online.outputs import PipelineOutput
from online.pipeline import OnlinePipeline
from online.rois import RoiSet
from online.settings import OnlineProcessSettings, read_process_settings
from online.store import (
    PLANE_REFERENCE_FILE,
    PLANE_ROIS_FILE,
    CodingDirectionFile,
    SessionOutputs,
    load_reference,
    read_jsonl,
)
from online.suite2p_rois import is_suite2p_output, load_suite2p_output
from online.transport import (
    LosslessReceiver,
    LossyPublisher,
    LossySubscriber,
    RateLimitedLog,
    TransportError,
    security_for,
)
from online.wire import (
    TOPIC_FRAME,
    TOPIC_STATE,
    TOPIC_TRIAL,
    Event,
    FrameHeader,
    Message,
    WireError,
    frame_aux_triggers,
)
from protocols.trial_record import TrialRecord, TrialRecordError

logger = logging.getLogger("online")

POLL_S = 0.002
HEALTH_INTERVAL_S = 1.0
ROIS_INTERVAL_S = 2.0
SYNC_INTERVAL_S = 1.0
RESULTS_HWM = 20_000
SUBSCRIBE_SETTLE_S = 0.2
"""Time given to the SUB socket's subscription to reach the rig's PUB before `ready` is printed."""
MAX_CONSECUTIVE_ERRORS = 200
EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2




# -- inputs: settings and ROIs -----------------------------------------------------------------------------


def load_roi_planes(path: str | Path) -> list[tuple[RoiSet, np.ndarray | None]]:
    """Per plane, ROIs (and the reference they were drawn on, when known) from: suite2p output (a plane
    folder with stat.npy, iscell.npy, ops.npy: meanImg is the reference; or the folder of its plane0..planeN;
    online/suite2p_rois.py), a session folder of several planes (its rois_plane<z>.npz and
    reference_plane<z>.npy, online/store.py), a folder holding our rois.npz (+ reference.npy), or a rois.npz
    file."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"ROIs {path} do not exist (--rois or online.rois)")
    try:
        if is_suite2p_output(path):
            return [(plane.rois, plane.mean_image) for plane in load_suite2p_output(path)]
        if path.is_dir() and (path / PLANE_ROIS_FILE.format(0)).exists():  # a session of several planes
            planes: list[tuple[RoiSet, np.ndarray | None]] = []
            while (path / PLANE_ROIS_FILE.format(z := len(planes))).exists():
                reference = path / PLANE_REFERENCE_FILE.format(z)
                planes.append((RoiSet.load(path / PLANE_ROIS_FILE.format(z)),
                               load_reference(reference) if reference.exists() else None))
            return planes
        npz = path / "rois.npz" if path.is_dir() else path
        if npz.suffix == ".npz" and npz.exists():
            rois = RoiSet.load(npz)
            ref = npz.with_name("reference.npy")
            return [(rois, load_reference(ref) if ref.exists() else None)]
    except (OSError, ValueError) as exc:
        raise UserInputError(str(exc)) from exc
    raise UserInputError(f"--rois {path}: expected suite2p output (a plane folder with stat.npy, iscell.npy, "
                         "ops.npy, or the folder of plane0..planeN), a folder with rois.npz, or a rois.npz "
                         "file")


def load_roi_source(path: str | Path, planes: int = 1) -> tuple[list[RoiSet], list[np.ndarray | None]]:
    """The ROIs and references (None where not known) of `load_roi_planes` for a session of `planes` planes,
    one of each per plane: `select_planes`."""
    found = select_planes(load_roi_planes(path), planes, path)
    return [rois for rois, _ in found], [reference for _, reference in found]


def select_planes(found: list[tuple[RoiSet, np.ndarray | None]], planes: int,
                  path: str | Path) -> list[tuple[RoiSet, np.ndarray | None]]:
    """The planes of given ROIs a session of `planes` planes uses: a session of one plane takes the first
    (and logs so); a session of several needs one ROI set per plane (else UserInputError, one sentence)."""
    if planes == 1 and len(found) > 1:
        logger.warning("ROIs %s have %d planes; the session images one plane (imaging.planes): plane0's ROIs "
                       "are used", path, len(found))
        return found[:1]
    if len(found) != planes:
        raise UserInputError(f"ROIs {path} are of {len(found)} plane(s) but the session images {planes} "
                             "(imaging.planes): give one ROI set per plane")
    return found


def pipeline_config(settings: OnlineProcessSettings, alignment: str) -> PipelineConfig:
    """The pipeline's configuration: the online section, the per-plane rate, the planes and the functional
    channel."""
    return PipelineConfig(settings.online, frame_rate_hz=settings.frame_rate_hz, planes=settings.planes,
                          channel=settings.channel, alignment=alignment)  # type: ignore[arg-type]


# -- the live process --------------------------------------------------------------------------------------


@dataclass
class LiveOptions:
    settings_path: Path
    """The online-settings JSON the rig wrote (online/settings.py: `OnlineProcessSettings`)."""
    session_dir: Path | None = None
    """None: a new folder <data_root>/online/<YYYY-MM-DD_HHMMSS>."""
    subject_dir: Path | None = None
    rois: Path | None = None
    app_port: str | None = None
    alignment: str = "trigger"
    health_interval_s: float = HEALTH_INTERVAL_S
    rois_interval_s: float = ROIS_INTERVAL_S


@dataclass
class _Counters:
    events: int = 0
    events_malformed: int = 0
    events_ignored: int = 0
    frames_malformed: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    published: dict[str, int] = field(default_factory=lambda: {"traces": 0, "rois": 0, "decoder": 0,
                                                               "health": 0})


def build_closed_loop(settings: OnlineProcessSettings, app_port: str | None, outputs: SessionOutputs | None,
                      delay_window_s: float) -> ClosedLoopController:
    """The controller with its output: the APP port (mode app_port, when a port is given) or the rig's control
    socket (mode soft_code). Without an output it still follows trials and logs why it sent nothing."""
    cl = settings.online.closed_loop
    output = None
    try:
        if cl.mode == "app_port" and app_port:
            output = AppPortOutput(app_port)
        elif cl.mode == "soft_code":
            output = SoftCodeOutput(settings.network.control, security=security_for(settings.network))
        elif cl.enabled:
            logger.warning("online.closed_loop is enabled in app_port mode but no APP port was given "
                           "(--app-port): decisions are not sent")
    except (ClosedLoopOutputError, TransportError) as exc:
        logger.error("closed loop disabled: %s", exc)
    return ClosedLoopController(output, confidence_threshold=cl.confidence_threshold,
                                max_delay_s=cl.max_delay_s, window_s=delay_window_s,
                                on_decision=outputs.append_decision if outputs is not None else None)


class OnlineService:
    """The live module: `open()` binds and connects, `run(stop)` serves until `stop` is set, `close()`."""

    def __init__(self, settings: OnlineProcessSettings, options: LiveOptions) -> None:
        if options.session_dir is None:
            stamp = time.strftime("%Y-%m-%d_%H%M%S")
            options = replace(options, session_dir=Path(settings.data_root) / "online" / stamp)
        assert options.session_dir is not None
        self.settings = settings
        self.options = options
        self.session = options.session_dir.name
        given = options.rois if options.rois is not None else settings.online.rois
        self.config = pipeline_config(settings, options.alignment)
        rois, reference = load_roi_source(given, self.config.planes) if given is not None else (None, None)
        self.outputs = SessionOutputs(options.session_dir)
        self.cd_file = (CodingDirectionFile.in_subject_dir(options.subject_dir)
                        if options.subject_dir is not None else None)
        if self.cd_file is None:
            logger.warning("no --subject-dir: this session's coding directions are compared within the "
                           "session only and not saved for later sessions")
        store = self.cd_file.load() if self.cd_file is not None else CodingDirectionStore()
        self.closed_loop = build_closed_loop(settings, options.app_port, self.outputs,
                                             self.config.online.decoder.delay_window_s)
        self.pipeline = OnlinePipeline(self.config, rois=rois, reference=reference, session=self.session,
                                       cd_store=store, closed_loop=self.closed_loop)
        self.counters = _Counters()
        self._log = RateLimitedLog(logger)
        self.frames: LosslessReceiver | None = None
        self.events: LossySubscriber | None = None
        self.results: LossyPublisher | None = None
        self._last_health_frames = 0
        self._last_health_t = time.monotonic()
        self.started = time.time()

    def open(self) -> None:
        net = self.settings.network
        remote = not net.bind_loopback_only
        try:  # off loopback every socket uses CURVE (online/transport.py)
            security = security_for(net)
        except TransportError as exc:
            raise UserInputError(str(exc)) from exc
        try:
            self.frames = LosslessReceiver(net.frames, allow_remote=remote, security=security)
            self.events = LossySubscriber(net.events_pub, topics=(TOPIC_TRIAL, TOPIC_STATE), hwm=10_000,
                                          kernel_buffer_bytes=None, security=security)
            self.results = LossyPublisher(net.online_results, hwm=RESULTS_HWM, source="online",
                                          allow_remote=remote, security=security)
        except TransportError as exc:
            self.close()
            raise UserInputError(f"{exc} (is another online module running? change settings.network)") \
                from exc
        time.sleep(SUBSCRIBE_SETTLE_S)
        logger.info("online module: frames on %s, events from %s, results on %s, session %s",
                    self.frames.endpoint, net.events_pub, self.results.endpoint, self.options.session_dir)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        assert self.frames is not None and self.events is not None
        next_health = time.monotonic() + self.options.health_interval_s
        next_rois = time.monotonic()
        next_sync = time.monotonic() + SYNC_INTERVAL_S
        while not stop.is_set():
            self._drain_events()
            message = self.frames.recv(timeout_s=POLL_S)
            if message is not None:
                self._guard(self._handle_frame, message)
            now = time.monotonic()
            if now >= next_health:
                next_health = now + self.options.health_interval_s
                self._guard(self.publish_health)
                self._guard(lambda: self._emit(self.pipeline.poll()))
                self.closed_loop.poll()
            if now >= next_rois and self.pipeline.ready:
                next_rois = now + self.options.rois_interval_s
                self._guard(self.publish_rois)
            if now >= next_sync:
                next_sync = now + SYNC_INTERVAL_S
                self.outputs.sync()
            if self.counters.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                logger.critical("%d consecutive processing errors: stopping",
                                self.counters.consecutive_errors)
                return EXIT_INTERNAL
        self._drain_events()
        return EXIT_OK

    def _guard(self, fn: Any, *args: Any) -> None:
        """Run one step; malformed input is counted and skipped, a bug is logged and counted (the process
        stays up for the session; many in a row end it)."""
        try:
            fn(*args)
            self.counters.consecutive_errors = 0
        except PipelineError:
            raise
        except (MalformedInput, WireError) as exc:
            self._log(logging.WARNING, "skipped: %s", exc)
        except Exception:
            self.counters.errors += 1
            self.counters.consecutive_errors += 1
            logger.exception("online processing error (%d so far)", self.counters.errors)

    def _drain_events(self) -> None:
        assert self.events is not None
        while True:
            message = self.events.recv(timeout_s=0)
            if message is None:
                return
            self._guard(self._handle_event, message)

    def _handle_event(self, message: Message) -> None:
        self.counters.events += 1
        try:
            event = Event.from_message(message)
            if message.topic == TOPIC_STATE:
                self.pipeline.on_state(event.data)
            elif message.topic == TOPIC_TRIAL:
                kind = event.data.get("kind")
                if kind == "end":
                    try:
                        record = TrialRecord.from_json(event.data.get("record"))
                    except TrialRecordError as exc:
                        raise MalformedInput(f"trial end message: {exc}") from None
                    self._emit(self.pipeline.on_trial_end(record.to_json()))
                elif kind == "start":
                    self.pipeline.on_trial_start(event.data)
                else:
                    self.counters.events_ignored += 1
            else:
                self.counters.events_ignored += 1
        except (MalformedInput, WireError):
            self.counters.events_malformed += 1
            raise

    def _handle_frame(self, message: Message) -> None:
        try:
            if message.topic != TOPIC_FRAME:
                raise WireError(f"a {message.topic!r} message on the frame path")
            header = FrameHeader.from_message(message)
            aux = frame_aux_triggers(message.header)
            out = self.pipeline.process_frame(header, message.arrays[0], aux)
        except (MalformedInput, WireError):
            self.counters.frames_malformed += 1
            raise
        self._emit(out)

    # -- outputs ------------------------------------------------------------------------------------

    def _emit(self, out: PipelineOutput) -> None:
        pipeline, results = self.pipeline, self.results
        if out.initialised:
            assert pipeline.rois is not None and pipeline.reference is not None
            self.outputs.write_rois(pipeline.rois, pipeline.reference, frame_rate_hz=pipeline.frame_rate_hz,
                                    roi_set_id=pipeline.roi_set_id, planes=pipeline.plane_sets)
            self.publish_rois()
        for trace, header in zip(out.traces, out.headers, strict=True):
            self.outputs.append_trace(trace, header.channel, header.plane, header.t_ns, header.seq)
            if results is not None:
                results.send_parts(trace.encode(results.sender))
                self.counters.published["traces"] += 1
        for decoding in out.trials:
            self.outputs.append_decoder(decoding.record)
            if results is not None:
                results.send_parts(decoding.result.encode(results.sender))
                self.counters.published["decoder"] += 1
            if decoding.cds_changed and self.cd_file is not None:
                self.cd_file.save(pipeline.cd_store, sessions={self.session})

    def publish_rois(self) -> None:
        snapshot = self.pipeline.roi_snapshot()
        if snapshot is not None and self.results is not None:
            self.results.send_parts(snapshot.encode(self.results.sender))
            self.counters.published["rois"] += 1

    def health(self) -> HealthReport:
        stats = self.pipeline.stats.to_dict()
        now = time.monotonic()
        processed = self.pipeline.stats.frames_processed
        rate = (processed - self._last_health_frames) / max(now - self._last_health_t, 1e-9)
        self._last_health_frames, self._last_health_t = processed, now
        frames = self.frames.stats if self.frames is not None else None
        events = self.events.stats if self.events is not None else None
        malformed = (self.counters.frames_malformed + self.counters.events_malformed
                     + self.pipeline.stats.frames_other_size_at_setup
                     + (frames.malformed if frames else 0) + (events.malformed if events else 0))
        return HealthReport(
            frames=processed, frame_rate_hz=round(rate, 3), gaps=frames.gaps if frames else 0,
            duplicates=frames.duplicates if frames else 0, out_of_order=frames.out_of_order if frames else 0,
            malformed=malformed, latency_p50_ms=stats["latency_p50_ms"],
            latency_p99_ms=stats["latency_p99_ms"], processing_p50_ms=stats["processing_p50_ms"],
            processing_p99_ms=stats["processing_p99_ms"], n_rois=self.pipeline.n_rois,
            reference_ready=self.pipeline.ready, closed_loop=self.closed_loop.armed,
            setup=self.pipeline.setup_status)

    def publish_health(self) -> None:
        if self.results is not None:
            self.results.send_parts(self.health().encode(self.results.sender))
            self.counters.published["health"] += 1

    def summary(self) -> dict[str, Any]:
        return {"session": str(self.options.session_dir), "started": self.started, "ended": time.time(),
                "pipeline": self.pipeline.summary(), "counters": {
                    k: v for k, v in vars(self.counters).items() if k != "consecutive_errors"},
                "frames_receiver": self.frames.stats.report() if self.frames is not None else None,
                "events_receiver": self.events.stats.report() if self.events is not None else None,
                "coding_directions": str(self.cd_file.path) if self.cd_file is not None else None,
                "coding_directions_error": self.cd_file.error if self.cd_file is not None else None}

    def finish(self) -> None:
        """Finalise pending trials, save everything (call once the loop has ended)."""
        published = sum(self.counters.published.values())
        with contextlib.suppress(Exception):
            self._emit(self.pipeline.flush())
        if sum(self.counters.published.values()) > published:
            time.sleep(0.1)  # the PUB has no linger: let the last results leave before the socket closes
        if self.cd_file is not None and len(self.pipeline.cd_store):
            self.cd_file.save(self.pipeline.cd_store, sessions={self.session})
        self.outputs.write_summary(self.summary())

    def close(self) -> None:
        for endpoint in (self.frames, self.events, self.results):
            if endpoint is not None:
                endpoint.close()
        self.closed_loop.close()
        self.outputs.close()


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (even by kill -9). Linux only (prctl)."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(EXIT_OK)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_live(options: LiveOptions, exit_with_parent: bool = False) -> int:
    """`python -m online`: serve until SIGTERM/SIGINT. Returns the exit status."""
    if exit_with_parent:
        die_with_parent()
    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            settings = read_process_settings(options.settings_path)
            service = OnlineService(settings, options)
            service.open()
        except (UserInputError, PipelineError) as exc:
            print(f"online: {exc}", file=sys.stderr, flush=True)
            return EXIT_USER
        print("ready", flush=True)
        status = EXIT_OK
        try:
            status = service.run(stop)
        except PipelineError as exc:
            print(f"online: {exc}", file=sys.stderr, flush=True)
            status = EXIT_USER
        finally:
            try:
                service.finish()
            finally:
                service.close()
        logger.info("online module stopped (status %d)", status)
        return status


# -- replay --------------------------------------------------------------------------------------------------


_FILE_COUNTER = re.compile(r"_(\d+)_(\d+)\.tiff?$", re.IGNORECASE)


def scanimage_files(path: str | Path) -> list[Path]:
    """One file, or a folder's ScanImage files in acquisition order (stem_<counter>_<chunk>.tif)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserInputError(f"{path}: no such file or folder")
    files = [p for p in path.iterdir()
             if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")]

    def key(p: Path) -> tuple[int, int, str]:
        m = _FILE_COUNTER.search(p.name)
        return (int(m.group(1)), int(m.group(2)), p.name) if m else (1 << 30, 0, p.name)

    files.sort(key=key)
    if not files:
        raise UserInputError(f"{path}: no .tif files")
    return files


@dataclass(frozen=True)
class ReplayStop:
    """A file replay could not read to its end: frames [0, frame) of it were replayed."""

    file: str
    frame: int
    reason: str

    def sentence(self) -> str:
        if self.frame == 0:
            return f"{self.file}: not replayed: {self.reason}"
        replayed = f"frames 0-{self.frame - 1} were replayed"
        return f"{self.file}: stopped at frame {self.frame}: {self.reason}; {replayed}"


@dataclass
class ReplaySummary:
    files: int
    frames: int
    seconds: float
    trials_decoded: int
    out: Path
    frames_skipped: int = 0
    """Frames the pipeline refused (NaN pixels, another size): counted, logged at most once a second."""
    stops: list[ReplayStop] = field(default_factory=list)
    """Files not replayed to their end (damaged, not a TIFF), in replay order."""
    warnings: list[str] = field(default_factory=list)
    """What is wrong in files that were still replayed whole (text that is not UTF-8)."""

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def read_trial_records(path: str | Path) -> dict[int, dict[str, Any]]:
    """trial number -> record, from a session's trials.jsonl; a line that is not a trial record is named."""
    try:
        return {r.trial: r.to_json() for r in map(TrialRecord.from_json, read_jsonl(Path(path)))}
    except (OSError, ValueError) as exc:  # TrialRecordError, JsonLinesError
        raise UserInputError(f"--trials {path}: {exc}") from exc


def replay(path: str | Path, *, out: str | Path | None = None, rois: str | Path | None = None,
           trials: str | Path | None = None, config: PipelineConfig | None = None,
           chunk_frames: int = 64) -> ReplaySummary:
    """Run the pipeline over ScanImage files as fast as possible (see the module docstring)."""
    from hardware.scanimage.reader import ScanImageError, ScanImageFile

    files = scanimage_files(path)
    path = Path(path)
    out_dir = Path(out) if out is not None else (path if path.is_dir() else path.parent) / "online_replay"
    records = read_trial_records(trials) if trials is not None else {}
    rate, planes = _file_format(files)
    if config is None:
        config = PipelineConfig(frame_rate_hz=rate, planes=planes)
    elif config.planes != planes:  # the recording says how many planes it has (and their rate)
        logger.info("replay: the files image %d plane(s) at %.3f Hz per plane, settings say %d: replaying "
                    "the files'", planes, rate, config.planes)
        config = replace(config, planes=planes, frame_rate_hz=rate)
    roi_set, reference = load_roi_source(rois, config.planes) if rois is not None else (None, None)
    stops: list[ReplayStop] = []
    warnings: list[str] = []
    outputs = SessionOutputs(out_dir)
    pipeline = OnlinePipeline(config, rois=roi_set, reference=reference, session=out_dir.name)
    delivered: set[int] = set()
    decoded = frames = seq = skipped = 0
    skip_log = RateLimitedLog(logger)

    def emit(result: PipelineOutput) -> None:
        nonlocal decoded
        if result.initialised:
            assert pipeline.rois is not None and pipeline.reference is not None
            outputs.write_rois(pipeline.rois, pipeline.reference, frame_rate_hz=pipeline.frame_rate_hz,
                               roi_set_id=pipeline.roi_set_id, planes=pipeline.plane_sets)
        for trace, header in zip(result.traces, result.headers, strict=True):
            outputs.append_trace(trace, header.channel, header.plane, header.t_ns)
        for decoding in result.trials:
            outputs.append_decoder(decoding.record)
            decoded += 1

    t0 = time.perf_counter()
    try:
        for counter, file in enumerate(files, start=1):
            try:
                f = ScanImageFile(file)
            except (ScanImageError, OSError) as exc:
                stops.append(ReplayStop(str(file), 0, _reason(exc, file)))
                continue
            done = 0  # time points of this file replayed so far
            with f:
                try:
                    trial, trigger = _file_trial(f, file, counter)
                    stamps = f.timestamps_s
                    n, planes, channels, height, width = f.shape
                    c = config.channel  # the wire's channel: ScanImage's channel number - 1
                    imaged = planes - f.flyback_planes
                    # (a file of one channel is replayed whatever its number: it is the one recorded)
                    if imaged != config.planes or (c + 1 not in f.channels and channels > 1):
                        saved = ", ".join(str(n) for n in f.channels)
                        raise UserInputError(f"{file}: has {imaged} plane(s) and channel(s) {saved}, replay "
                                             f"reads {config.planes} plane(s) and channel {c + 1} (settings "
                                             "imaging.planes and imaging.functional_channel)")
                    ci = f.channels.index(c + 1) if c + 1 in f.channels else 0
                    with_aux = config.alignment == "aux"
                    dtype_str = f.dtype.str
                    plane_stamps = f.plane_timestamps_s if planes > 1 else None
                    stamp_list = (plane_stamps if plane_stamps is not None else stamps)
                    stamp_list = stamp_list.tolist() if stamp_list is not None else None
                    for i, point in _time_points(f, chunk_frames):
                        for z in range(imaged):
                            aux: Sequence[float] = ()
                            if with_aux:
                                page = (i * planes + z) * channels + ci
                                aux = f.frame_metadata(page).aux_triggers[0]
                            stamp = -1.0
                            if stamp_list is not None:
                                stamp = float(stamp_list[i][z] if plane_stamps is not None else stamp_list[i])
                            header = FrameHeader(seq, i, stamp, trigger, trial, c, z, height, width,
                                                 dtype_str, time.time_ns())
                            seq += 1
                            frames += 1
                            try:
                                emit(pipeline.process_frame(header, point[z, ci], aux))
                            except MalformedInput as exc:
                                skipped += 1
                                skip_log(logging.WARNING, "%s: skipped: %s", file.name, exc)
                        done = i + 1
                except ScanImageError as exc:
                    stops.append(ReplayStop(str(file), done, _reason(exc, file)))
                else:
                    if f.damage is not None:
                        stops.append(ReplayStop(str(file), done, f.damage))
                warnings += [f"{file}: {problem}" for problem in f.text_problems]
            for number in sorted(records):
                if number <= trial and number not in delivered:
                    delivered.add(number)
                    try:
                        emit(pipeline.on_trial_end(records[number]))
                    except MalformedInput as exc:
                        logger.warning("--trials: trial %d skipped: %s", number, exc)
            emit(pipeline.flush())
        emit(pipeline.flush())
    finally:
        seconds = time.perf_counter() - t0
        summary = ReplaySummary(len(files), frames, seconds, decoded, out_dir, skipped, stops, warnings)
        with contextlib.suppress(Exception):
            outputs.write_summary({"replay": str(path), "files": len(files), "frames": frames,
                                   "frames_skipped": skipped, "stopped": [asdict(s) for s in stops],
                                   "warnings": warnings,
                                   "seconds": seconds, "frames_per_s": summary.frames_per_s,
                                   "pipeline": pipeline.summary()})
        outputs.close()
    return summary


def _file_format(files: Sequence[Path]) -> tuple[float, int]:
    """The rate of time points (30 Hz when none says) and the imaged planes of the first file that opens."""
    from hardware.scanimage.reader import ScanImageError, ScanImageFile

    for file in files:
        try:
            with ScanImageFile(file) as f:
                rate, planes = f.frame_rate_hz, f.planes - f.flyback_planes
        except (ScanImageError, OSError):
            continue
        return (rate if rate and math.isfinite(rate) else 30.0), max(planes, 1)
    return 30.0, 1


def _reason(exc: Exception, file: Path) -> str:
    """An exception's message without the file name it starts with (the stop names the file itself)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).removeprefix(f"{file}: ")


def _time_points(f: Any, chunk_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, (planes, channels, height, width)) for every readable time point of a file.

    From a memory-mapped view of the whole file when its layout allows (no up-front read and copy of the
    pixels), else in blocks of `chunk_frames` time points read through the library (compressed pages,
    unequal page spacing, foreign byte order). A block that fails is read again one time point at a time,
    so every frame before the damage is replayed before the DamagedFileError says where it is.
    """
    from hardware.scanimage.reader import DamagedFileError

    mapped = f.frames_view()
    if mapped is not None:
        yield from enumerate(mapped)
        return
    n, step = f.n_frames, max(1, chunk_frames)
    for start in range(0, n, step):
        stop = min(n, start + step)
        try:
            block = f.frames(start, stop)
        except DamagedFileError:
            for i in range(start, stop):
                yield i, f.frame(i)
            continue
        for k in range(block.shape[0]):
            yield start + k, block[k]


def _file_trial(f: Any, file: Path, counter: int) -> tuple[int, float | None]:
    """(trial, trigger time) of a loop-mode file: acquisitionNumbers, else the file counter, else the
    order."""
    trigger = None
    number = None
    with contextlib.suppress(Exception):
        meta = f.frame_metadata(0)
        number = meta.acquisition_number
        trigger = meta.acq_trigger_timestamp_s
    if number is None:
        m = _FILE_COUNTER.search(file.name)
        number = int(m.group(1)) if m else counter
    if trigger is not None and trigger < 0:
        trigger = None
    return int(number), trigger


def replay_config(settings_path: str | None, alignment: str) -> PipelineConfig | None:
    """The replay's pipeline configuration from the online-settings JSON; None: replay's defaults."""
    if settings_path is not None:
        return pipeline_config(read_process_settings(Path(settings_path)), alignment)
    if alignment != "trigger":
        return PipelineConfig(alignment=alignment)  # type: ignore[arg-type]
    return None


def main_replay(argv_path: str, out: str | None, rois: str | None, trials: str | None,
                settings_path: str | None, alignment: str) -> int:
    try:
        config = replay_config(settings_path, alignment)
        summary = replay(argv_path, out=out, rois=rois, trials=trials, config=config)
    except (UserInputError, PipelineError) as exc:
        print(f"online replay: {exc}", file=sys.stderr)
        return EXIT_USER
    print(json.dumps({"files": summary.files, "frames": summary.frames,
                      "seconds": round(summary.seconds, 3), "frames_per_s": round(summary.frames_per_s, 1),
                      "frames_skipped": summary.frames_skipped, "trials_decoded": summary.trials_decoded,
                      "out": str(summary.out), "stopped": [asdict(stop) for stop in summary.stops]}))
    print(f"replayed {summary.frames} frames from {summary.files} file(s) in {summary.seconds:.2f} s: "
          f"{summary.frames_per_s:.1f} frames/s -> {summary.out}")
    for stop in summary.stops:
        print(f"online replay: {stop.sentence()}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"online replay: warning: {warning}", file=sys.stderr)
    return EXIT_USER if summary.stops else EXIT_OK
