"""The session runner: trials back to back on the Bpod, each one written to disk as it ends.

Per trial: the training state gives the stage and context, trial selection the side and any free
drop, the task builds the state machine, the Bpod runs it. The next trial is queued (RunASAP) as
soon as the current trial's outcome is known, so the host adds no dead time (the Bpod starts a queued
trial one cycle after the previous one ends, its own fixed gap); its record is
fsynced when it ends; the subject's state is then saved so the next session continues from here.
Control requests (switch context, pause, resume, stop) take effect at trial boundaries, never mid-trial.

Before a pole trial the pole motor goes to the midpoint and then to the trial's position (see
hardware/zaber/pole.py), in the previous trial's inter-trial interval; the trial is sent only once the
stage is idle there, and the move is in the trial's record. With a lickport motor (lickport_motor.port)
the bias correction (protocols/lickport.py) is asked after every scored trial; a step it asks for is made
at the same place, before the next trial is sent, and is in that trial's record (`lickport`, with the
trial it followed); session.json counts the steps.

With sound.device hifi the session opens the HiFi module before any trial (rig/sound.py), loads the
task's tones and gives the task the outputs that play them; each trial's record lists the sounds it
played, read from its own states and the module's answers. A stage that fails ends the session like the
Bpod lost: the running trial is finished and recorded, the one that waited for the pole as not started.

The session holds its subject's lock from before recovery to the end. A fault (the Bpod lost, the imaging
source silent, the disk full) ends it at once: the trials in flight are recorded (the running one as
aborted with what the Bpod sent of it, a queued one as not started), session.json gets the fault as its
end reason, and `run()` raises a `SessionFault` whose message is the one sentence for the user.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from hardware.bpod.client import BpodClient, BpodConnectionError, BpodError
from hardware.bpod.trial import TrialEvent, TrialResult
from hardware.lickport_motor import LickportMotor, LickportMotorError
from hardware.pole_motor import PoleMotor, PoleMotorError
from hardware.zaber.axis import AxisSettings, ZaberStage
from hardware.zaber.emulator import ZaberEmulatorServer
from hardware.zaber.lickport import ZaberLickportMotor
from hardware.zaber.pole import ZaberPoleMotor
from online.errors import UserInputError
from online.process import load_roi_planes, select_planes
from online.suite2p_rois import is_suite2p_output
from online.transport import LossyPublisher, TransportError
from online.wire import TOPIC_STATE, TOPIC_TRIAL
from protocols.blocks import Block
from protocols.contexts import SIDES, Context, context_named, contexts_from_settings
from protocols.directional_licking import (
    OUTCOME_EPOCH,
    DecoderGate,
    TaskParameters,
    build_trial,
    epoch_states,
)
from protocols.lickport import LickportBiasCorrection
from protocols.outcome import PerformanceTracker, ScoredTrial, score_trial
from protocols.selection import TrialSpec, select_trial
from protocols.state_machine import StateMachine
from protocols.training import SubjectTrainingState, Training
from protocols.trial_record import BpodRecord, TrialRecord, TrialScore, spec_fields
from rig import __version__
from rig.bench import EMULATOR_PORT
from rig.calibration import calibration_warning
from rig.children import ChildWatcher
from rig.control import ControlRequestError, ControlServer, link_security
from rig.errors import SessionFault, UserError
from rig.imaging import ImagingSource, open_imaging
from rig.online_child import OnlineProcess
from rig.roi_matches import match_session
from rig.settings import Settings, dump_settings_files
from rig.simulated_rig import SimulatedRig
from rig.sound import CueActions, cue_actions, open_hifi_sound, sound_plays
from rig.store import DiskFullError, SessionStore, SubjectLock, check_subject_id, recover_sessions
from rig.subject import HISTORY_KEPT, SubjectRecord, load_subject, save_subject, subject_path
from rig.summary import format_status
from rig.water import trial_water_ul, valve_curves

log = logging.getLogger(__name__)

POLL_S = 0.05
TRIALS_KEPT_IN_MEMORY = 1000  # for the live Perf100 per side and context; every trial is on disk


@dataclass(frozen=True)
class RunOptions:
    """`rig run` arguments; None means: from the settings (or no limit)."""

    subject: str = "sim-mouse"
    context: str | None = None
    trials: int | None = None
    minutes: float | None = None
    speed: float | None = None
    data_root: Path | None = None
    status_stream: TextIO | None = None
    handle_signals: bool = True
    monitor: subprocess.Popen[bytes] | None = None
    """The monitor window's process, if `rig run` started one: watched, never waited for."""
    rig_file: Path | None = None
    """The rig file the settings were loaded with, for session.json (None: the built-in rig or one file)."""
    rois: Path | None = None
    """The session's ROIs (suite2p output or rois.npz) for the online module; None: online.rois."""
    weight_g: float | None = None
    """The subject's weight before the session (g), for session.json; None: not weighed."""
    subject_info: dict[str, Any] | None = None
    """The subject's description (`rig.subject_info.SubjectInfo` JSON) to keep in subject.json."""


@dataclass
class PreparedTrial:
    number: int
    spec: TrialSpec
    machine: StateMachine
    training_events: list[dict[str, Any]] = field(default_factory=list)
    provisional: ScoredTrial | None = None
    gate: DecoderGate | None = None
    not_started: bool = False  # queued when the session ended: stopped as it began, or never sent
    sent: bool = False  # handed to the Bpod
    pole: dict[str, Any] | None = None  # the pole motor's move before the trial
    lickport: dict[str, Any] | None = None  # the lickport motor's step before the trial
    abort_reason: str | None = None  # the fault that cut the trial short
    block: Block | None = None  # the visit to the context this trial is in (protocols/blocks.py)


@dataclass
class SessionResult:
    folder: Path
    trials: int
    end_reason: str


def task_parameters(settings: Settings, cue_actions: CueActions | None = None) -> TaskParameters:
    """What stays the same from trial to trial, from the settings: timing, wiring, calibrated valve times,
    the trial bitcode, and the sound module's outputs for the tones (`rig.sound.cue_actions`; None: the PWM
    tone lines)."""
    bitcode = settings.task.trial_bitcode if settings.wiring.trial_bitcode is not None else None
    return TaskParameters(settings.task.timing, settings.wiring, settings.reward_valve_time_s("left"),
                          settings.reward_valve_time_s("right"), bitcode=bitcode, cue_actions=cue_actions)


class SessionRunner:
    """Runs one session. `run()` blocks until the session ends and returns where its data are."""

    def __init__(self, settings: Settings, options: RunOptions) -> None:
        self.settings = settings
        self.options = options
        check_subject_id(options.subject)  # before anything touches a file: the id becomes a folder name
        self.data_root = Path(options.data_root or settings.data.root)
        self.contexts: dict[str, Context] = contexts_from_settings(settings.contexts)
        self.params = task_parameters(settings)
        self.stages = tuple(settings.task.stages)
        self.simulated = settings.bpod.port == EMULATOR_PORT
        self.speed = options.speed if options.speed is not None else settings.bpod.emulator_speed
        if options.speed is not None and not self.simulated:
            raise UserError("--speed applies to the emulator only; bpod.port is a real device")
        for section in ("pole_motor", "lickport_motor"):
            if getattr(settings, section).port == EMULATOR_PORT and not self.simulated:
                device = section.replace("_", " ")
                raise UserError(f"{section}.port 'emulator' runs with the simulated rig only (bpod.port: "
                                f"emulator); set the stage's serial port, or null for no {device}")
        if options.context is not None and options.context not in self.contexts:
            valid = ", ".join(self.contexts)
            raise UserError(f"--context {options.context!r}: unknown context (contexts: {valid})")
        calibration = settings.bpod.valve_calibration
        self._calibration_warning = calibration_warning(calibration, date.today(), self.simulated)
        if self._calibration_warning is not None:
            log.warning("%s", self._calibration_warning)
        self.performance = PerformanceTracker(keep=TRIALS_KEPT_IN_MEMORY)
        self._rng = np.random.default_rng(settings.sim.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = False
        self._idle = False  # paused, and no trial running
        self._resume = threading.Event()
        self._end_reason = "completed"
        self._trials_done = 0
        self._valves = valve_curves(settings)
        self._first_start_s: float | None = None
        self._last_result_end_s: float | None = None
        self._store: SessionStore | None = None
        self._publisher: LossyPublisher | None = None
        self._publish_lock = threading.Lock()
        self._client: BpodClient | None = None
        self._sim: SimulatedRig | None = None
        self._pole_motor: PoleMotor | None = None
        self._lickport_motor: LickportMotor | None = None
        self._bias_correction = LickportBiasCorrection(settings.task.lickport_bias)
        self._lickport_step: tuple[int, str] | None = None  # (after trial, toward side), made before the next
        self._lickport_steps = dict.fromkeys(SIDES, 0)
        self._cue_actions: CueActions | None = None
        self._imaging: ImagingSource | None = None
        self._online: OnlineProcess | None = None
        self._children: ChildWatcher | None = None
        self._closed_loop = settings.online.closed_loop.enabled
        self._outputs: dict[int, dict[str, dict[str, Any]]] = {}  # trial -> what its states set (running)
        self._water_ul = 0.0  # this session: calibrated volumes of the valve states, manual drops
        self._valve_timers: list[threading.Timer] = []  # manual valves open now, each closed by its timer
        self._started: datetime | None = None
        self._subject_lock: SubjectLock | None = None
        self._fault: SessionFault | None = None
        self.training: Training
        self.record: SubjectRecord

    # ------------------------------------------------------------------ setup

    def _load_subject(self) -> None:
        subject = self.options.subject
        recover_sessions(self.data_root / subject, self._subject_lock)
        switch = self.settings.task.context_switch
        stored = load_subject(self.data_root, subject)
        if stored is None:
            state = self._new_subject_state()
            stored = SubjectRecord(subject=subject, training=state)
            log.info("new subject %s: stage %s, context %s", subject, state.stage, state.context)
        if self.options.subject_info is not None:
            stored.info = dict(self.options.subject_info)
        self.record = stored
        self.training = Training(self.stages, switch, list(self.contexts), stored.training)
        if self.options.context is not None and self.options.context != self.training.context:
            self.training.request_context_switch(self.options.context)
        for trial in stored.history[-100:]:
            self.performance.add(trial)

    def _new_subject_state(self) -> SubjectTrainingState:
        context = self.options.context or self.settings.task.default_context
        sim = self.settings.sim.subject
        if not self.simulated or sim.naive:  # a naive simulated subject starts where a real one does
            return SubjectTrainingState(stage=self.stages[0].name, context=context)
        trained = self.options.context is None or self.options.context == sim.trained_context
        return SubjectTrainingState(stage=sim.stage, context=self.options.context or sim.trained_context,
                                    task_learned=sim.task_learned,
                                    trials_in_context=sim.trials_in_context if trained else 0)

    def _session_info(self, started: datetime, ended: datetime | None = None) -> dict[str, Any]:
        client = self._client
        hw = client.hardware if client is not None else None
        measured = self.settings.bpod.valve_calibration.measured_on
        sound = self.settings.sound
        return {
            "subject": self.options.subject, "rig": self.settings.rig.name,
            "rig_file": str(self.options.rig_file) if self.options.rig_file is not None else None,
            "started": started.isoformat(),
            "ended": ended.isoformat() if ended else None,
            "end_reason": self._end_reason if ended else None, "trials": self._trials_done,
            "versions": {"rig": __version__, "python": platform.python_version()},
            "bpod": {"port": self.settings.bpod.port, "simulated": self.simulated,
                     "speed": self.speed if self.simulated else 1.0,
                     "firmware": hw.firmware_major if hw else None,
                     "machine_type": hw.machine_type if hw else None},
            "pole_motor": {"port": self.settings.pole_motor.port,
                           "simulated": self.settings.pole_motor.port == EMULATOR_PORT},
            "lickport_motor": self._lickport_info(),
            "valve_calibration": {"measured_on": measured.isoformat() if measured else None,
                                  "warning": self._calibration_warning},
            "sound": {"device": sound.device, "module": sound.module,
                      "usb_port": self._sim.hifi_port if self._sim is not None else sound.usb_port,
                      "simulated": self._sim is not None},
            "start_context": self.training.context, "start_stage": self.training.stage.name,
            "weight_g": self.options.weight_g, "water": {"delivered_ul": round(self._water_ul, 3)},
            "limits": {"trials": self.options.trials, "minutes": self.options.minutes},
            "imaging": self._imaging.health() if self._imaging is not None else None,
            "online": self._online.describe() if self._online is not None else None,
            "children": self._children.describe() if self._children is not None else None,
        }

    # ------------------------------------------------------------------ the loop

    def run(self) -> SessionResult:
        """The subject's lock is taken before recovery and before subject.json is read, and held to the
        end: a second session for the subject is refused, and a live session is never "recovered"."""
        with SubjectLock(self.data_root / self.options.subject) as self._subject_lock:
            return self._run()

    def _run(self) -> SessionResult:
        security = link_security(self.settings.network)  # before anything starts
        self._load_subject()
        started = self._started = datetime.now()
        with ExitStack() as stack:
            port = self.settings.bpod.port
            if self.simulated:
                rig = SimulatedRig(self.settings, self.speed, self.data_root / self.options.subject)
                self._sim = stack.enter_context(rig)
                port = self._sim.port
            rois = self._given_rois()  # a wrong ROI folder is one sentence before anything is written
            client = BpodClient(port, timeout_s=self.settings.bpod.timeout_s)
            client.connect()
            stack.callback(client.close)
            stack.callback(self._close_valves)  # before the client closes: no valve is left open
            self._open_sound(client, stack)
            sim = self._sim
            self._pole_motor = self._open_stage(ZaberPoleMotor, self.settings.pole_motor,
                                                sim.stage if sim is not None else None, stack)
            self._lickport_motor = self._open_stage(ZaberLickportMotor, self.settings.lickport_motor,
                                                    sim.lickport_stage if sim is not None else None, stack)
            self._client = client
            client.on_event = self._on_event
            client.on_state = self._on_state
            network = self.settings.network
            try:  # off loopback both use CURVE: only the machines whose keys are authorised get in
                self._publisher = stack.enter_context(
                    LossyPublisher(network.events_pub, source="rig", hwm=1000,
                                   allow_remote=not network.bind_loopback_only, security=security))
            except TransportError as exc:
                raise UserError(f"cannot open the events publisher: {exc}") from None
            stack.enter_context(ControlServer(network.control, self._handle_control, security=security))
            experiment_yaml, rig_yaml = dump_settings_files(self.settings)
            self._store = SessionStore.create(self.data_root, self.options.subject, started, experiment_yaml,
                                              self._session_info(started), rig_yaml=rig_yaml)
            stack.callback(self._store.close)
            if self._sim is not None:
                self._sim.record_truth(self._store.folder)
            self._subject_lock.name_session(self._store.folder)
            if self.settings.online.enabled and self.settings.online.start_with_rig:
                self._online = stack.enter_context(OnlineProcess(
                    self.settings, self._store.folder, self.data_root / self.options.subject,
                    app_port=self._app_port(), rois=rois))
            self._imaging = stack.enter_context(open_imaging(self.settings, self._store.folder, self._sim))
            self._store.write_session_info(self._session_info(started))  # with the imaging source's plan
            self._children = stack.enter_context(ChildWatcher(  # stops after the children (finally below)
                online=self._online, imaging=self._imaging, monitor=self.options.monitor,
                trial=lambda: client.trials_started,
                on_change=lambda: self._store.write_session_info(self._session_info(started))))
            if self.options.handle_signals:
                stack.enter_context(self._signals())
            log.info("session %s started: subject %s, context %s, stage %s", self._store.folder,
                     self.options.subject, self.training.context, self.training.stage.name)
            try:
                self._loop()
            except SessionFault as fault:
                self._end_reason = fault.reason
                raise
            except BaseException:
                self._end_reason = "error"
                raise
            finally:
                self._imaging.stop()  # final frame counts for session.json (the stack's stop is a no-op)
                if self._online is not None:
                    self._online.stop()  # after the last frames; its exit status goes into session.json
                    self._match_rois()
                self.record.sessions += 1
                self._save_subject()
                self._store.write_session_info(self._session_info(started, datetime.now()))
                self._publish(TOPIC_TRIAL, {"kind": "session-end", "session": str(self._store.folder),
                                            "end_reason": self._end_reason, "status": self.status()})
        return SessionResult(self._store.folder, self._trials_done, self._end_reason)

    def _loop(self) -> None:
        client = self._client
        assert client is not None
        current: PreparedTrial | None = self._prepare()
        queued: PreparedTrial | None = None
        try:
            self._start(current)
            while current is not None:
                queued = None
                if self._await_outcome(current):
                    partial = client.partial_trial()
                    if partial is not None:
                        self._learn(current, self._score(current, partial))
                        if self._should_continue(current, partial.end_s):
                            queued = self._prepare()
                            self._start(queued)
                result = self._await_end(current)
                self._finish(current, result)
                if queued is not None and self._stop.is_set():
                    # queued before the stop arrived: end it at once, recorded as not started
                    queued.not_started = True
                    queued.abort_reason = self._fault.reason if self._fault is not None else None
                    client.stop_trial()
                if queued is None and self._continue_after_idle(current, result):
                    queued = self._prepare()
                    self._start(queued)
                current = queued
        except BpodConnectionError as exc:
            self._fault = SessionFault("bpod lost", str(exc))
            self._record_lost([current, queued])
        except DiskFullError as exc:  # even the reserve did not hold the record: nothing more can be written
            self._fault = SessionFault("disk full", str(exc))
        except PoleMotorError as exc:
            self._fault = SessionFault("pole motor failed", str(exc))
            self._record_stage_fault([current, queued])
        except LickportMotorError as exc:
            self._fault = SessionFault("lickport motor failed", str(exc))
            self._record_stage_fault([current, queued])
        if self._fault is not None:
            assert self._store is not None
            saved = f"{self._trials_done} trials saved in {self._store.folder}"
            raise SessionFault(self._fault.reason, f"{self._fault}; the session ended there, with {saved}")

    def _record_lost(self, trials: list[PreparedTrial | None]) -> None:
        """The Bpod is gone: record the trials in flight now, in order. A trial whose end record came is
        recorded as usual; the running one as aborted with the events received so far; a queued one that
        never began as not started."""
        client = self._client
        assert client is not None and self._fault is not None
        for trial in trials:
            if trial is None or trial.number <= self._trials_done:
                continue
            try:
                result = client.poll_trial(0)
            except BpodConnectionError:
                result = None
            if result is None:
                trial.abort_reason = self._fault.reason
                result = client.partial_trial() if client.trials_started == trial.number else None
                trial.not_started = result is None
            self._finish(trial, result)

    def _record_stage_fault(self, trials: list[PreparedTrial | None]) -> None:
        """The pole or the lickport could not be put in place: the trial already on the Bpod runs to its end
        and is recorded as usual; the one that waited for the stage is recorded as not started."""
        assert self._fault is not None
        log.error("%s: ending the session (the trial waiting for the stage is not started)", self._fault)
        self._end_reason = self._fault.reason
        self._stop.set()
        for trial in trials:
            if trial is None or trial.number <= self._trials_done:
                continue
            if trial.sent:
                self._finish(trial, self._await_end(trial))
            else:
                trial.not_started, trial.abort_reason = True, self._fault.reason
                self._finish(trial, None)

    def _match_rois(self) -> None:
        """This session's ROIs matched to the subject's earlier sessions (roi_matches.json); a failure is
        logged, never the end of the session's bookkeeping."""
        assert self._store is not None
        try:
            match_session(self._store.folder, self.settings.online.roi_match)
        except Exception:  # the trials are safe on disk; a match can be made again later from the files
            log.exception("matching this session's ROIs to earlier sessions failed")

    def _given_rois(self) -> Path | None:
        """The ROIs for the online module (--rois, else online.rois), read and checked against the frame
        size here, so ROIs that are unreadable or of another field are one sentence before the session."""
        online = self.settings.online
        path = self.options.rois if self.options.rois is not None else online.rois
        if path is not None and not (online.enabled and online.start_with_rig):
            log.warning("ROIs %s are not used: the rig starts no online module (online.enabled, "
                        "online.start_with_rig)", path)
            return None
        if path is None:
            return None
        try:
            planes = load_roi_planes(path)
        except UserInputError as exc:
            raise UserError(str(exc)) from None
        scope = self._sim.scope if self._sim is not None else None
        if scope is not None:
            size, source = (scope.effective.height, scope.effective.width), "the simulated microscope's"
        else:
            imaging = self.settings.imaging
            size, source = (imaging.frame_height, imaging.frame_width), "imaging's"
        where = " (suite2p ops.npy Ly, Lx)" if is_suite2p_output(path) else ""
        for plane, (rois, _) in enumerate(planes):
            if tuple(rois.shape) != size:
                raise UserError(f"ROIs {path} (plane {plane}) are for {rois.shape[0]}x{rois.shape[1]} frames"
                                f"{where} but {source} frames are {size[0]}x{size[1]}: ROIs of another field "
                                "of view or zoom")
        try:
            planes = select_planes(planes, self.settings.imaging.planes, path)
        except UserInputError as exc:
            raise UserError(str(exc)) from None
        log.info("ROIs from %s: %s", path,
                 ", ".join(f"plane {k} {rois.n} ROIs" for k, (rois, _) in enumerate(planes)))
        return Path(path)

    def _open_sound(self, client: BpodClient, stack: ExitStack) -> None:
        """sound.device hifi: the HiFi module the Bpod found, loaded with the task's tones, and the task's
        cue outputs from it; a module that is missing is one clear error before the session begins."""
        sound = self.settings.sound
        if sound.device != "hifi":
            return
        usb_port = self._sim.hifi_port if self._sim is not None else sound.usb_port
        hifi = open_hifi_sound(sound, client.modules, usb_port, stack, timeout_s=self.settings.bpod.timeout_s)
        self._cue_actions = cue_actions(hifi)
        self.params = dataclasses.replace(self.params, cue_actions=self._cue_actions)

    def _open_stage(self, driver: type[ZaberStage], settings: AxisSettings,
                    emulated: ZaberEmulatorServer | None, stack: ExitStack) -> Any:
        """The stage of a motor's settings section (pole_motor, lickport_motor), connected, homed if it had
        no reference, in place, closed with the session; None without a port. A stage that cannot be
        opened is one clear error before the session begins."""
        if settings.port is None:
            return None
        on_emulator = settings.port == EMULATOR_PORT
        assert emulated is not None or not on_emulator
        try:
            motor = driver.open_on(settings.port, settings, emulated if on_emulator else None, self.speed)
        except driver.error as exc:
            raise UserError(str(exc)) from None
        stack.callback(motor.close)
        return motor

    def _lickport_info(self) -> dict[str, Any]:
        """session.json's lickport_motor: where it is and the steps made so far."""
        port = self.settings.lickport_motor.port
        info: dict[str, Any] = {"port": port, "simulated": port == EMULATOR_PORT}
        if port is not None:
            motor = self._lickport_motor
            info |= {"moves": sum(self._lickport_steps.values()), "steps": dict(self._lickport_steps),
                     "offset": motor.offset if motor is not None else 0}
        return info

    def _continue_after_idle(self, trial: PreparedTrial, result: TrialResult) -> bool:
        """Nothing was queued (paused, stopping, at a limit, or the trial ended before its outcome was
        seen): whether to start the next trial now."""
        if self._stop.is_set():
            return False
        if self._paused:
            return self._wait_while_paused()
        return self._should_continue(trial, result.end_s)

    def _prepare(self) -> PreparedTrial:
        number = self._trials_done + 1 + (1 if self._client and self._client.trial_running else 0)
        with self._lock:
            stage, context_name, events = self.training.next_trial()
            learned = self.training.state.task_learned
            block = self.record.blocks.enter(context_name)  # a context switch starts the next block
        context = context_named(context_name, self.contexts)
        spec = select_trial(self.record.history, trial_number=number, context=context, stage=stage,
                            rules=self.settings.task.selection, auto_reward=self.settings.task.auto_reward,
                            rng=self._rng, task_learned=learned)
        gate = self._decoder_gate(stage.delay_s)
        params = dataclasses.replace(self.params, decoder_gated_delay=gate) if gate else self.params
        machine = build_trial(spec, params)
        prepared = PreparedTrial(number, spec, machine, [_event_dict(e) for e in events], gate=gate,
                                 block=block)
        for event in events:
            log.info("trial %d: %s", number, _describe_event(event))
        return prepared

    def _start(self, trial: PreparedTrial) -> None:
        assert self._client is not None and self._store is not None
        if self._lickport_motor is not None and self._lickport_step is not None:
            # the step the bias correction asked for after the last scored trial, before this one is sent
            after, side = self._lickport_step
            self._lickport_step = None
            step = self._lickport_motor.step_toward(side)  # type: ignore[arg-type]
            self._lickport_steps[side] += 1
            trial.lickport = {"after_trial": after, **step.to_record()}
        if self._pole_motor is not None and trial.spec.cue.startswith("pole_"):
            # in the previous trial's inter-trial interval; the trial is sent once the stage is idle
            move = self._pole_motor.move_to(trial.spec.cue.removeprefix("pole_"))  # type: ignore[arg-type]
            trial.pole = move.to_record()
        if self._sim is not None:
            self._sim.set_trial_context(trial.number, trial.spec.context.name)  # for the simulated microscope
        self._outputs[trial.number] = state_outputs(trial.machine)  # once: the reader thread only looks up
        self._store.journal(trial.number, "trial", source="task", **trial.spec.to_dict())
        self._publish(TOPIC_TRIAL, {  # the online module files the trial's frames under its context
            "kind": "start", "trial": trial.number, "context": trial.spec.context.name,
            **_block_fields(trial.block), "side": trial.spec.side, "gated": trial.gate is not None,
            "epochs": epoch_states()})
        self._client.start_trial(trial.machine)
        trial.sent = True

    def _await_outcome(self, trial: PreparedTrial) -> bool:
        """Wait until the trial's outcome is known (True) or it ended without one being seen (False)."""
        client = self._client
        assert client is not None
        while True:
            self._check_faults(trial)
            try:
                if client.wait_for_state(OUTCOME_EPOCH, timeout_s=POLL_S) is not None:
                    return True
            except BpodConnectionError:
                raise
            except BpodError:  # nothing running or queued: the trial ended between two polls
                return False
            if client.trials_finished >= trial.number:
                return False

    def _await_end(self, trial: PreparedTrial) -> TrialResult:
        client = self._client
        assert client is not None
        while True:
            self._check_faults(trial)
            result = client.poll_trial(POLL_S)
            if result is not None:
                return result

    def _check_faults(self, trial: PreparedTrial) -> None:
        """Faults seen while a trial runs, besides the Bpod's own (its client raises): the disk full, the
        imaging source silent. Either ends the session now: the running trial is stopped and recorded as
        aborted, a queued one as not started."""
        if self._fault is not None:
            return
        assert self._store is not None and self._client is not None
        if self._store.disk_full is not None:
            self._fault = SessionFault("disk full", f"disk full at {self._store.disk_full}")
        elif self._imaging is not None and (silence := self._imaging.silence()) is not None:
            self._fault = SessionFault("imaging silent", f"imaging silent: {silence}")
        else:
            return
        log.error("%s: ending the session now (trial %d is stopped)", self._fault, trial.number)
        trial.abort_reason = self._fault.reason
        self._end_reason = self._fault.reason
        self._stop.set()
        self._client.stop_trial()

    def _score(self, trial: PreparedTrial, result: TrialResult) -> ScoredTrial:
        scored = score_trial(result.to_dict(), side=trial.spec.side, context=trial.spec.context.name,
                             wiring=self.settings.wiring, trial_number=trial.number)
        if scored.reaction_time_s is not None:
            scored = dataclasses.replace(scored, reaction_time_s=round(scored.reaction_time_s, 6))
        return scored

    def _learn(self, trial: PreparedTrial, scored: ScoredTrial) -> None:
        """Count a trial for selection, performance and training: as soon as its outcome is known
        (from what the Bpod has sent so far), so the next trial can be chosen and queued at once."""
        trial.provisional = scored
        self.record.history.append(scored)
        del self.record.history[:-HISTORY_KEPT]  # selection looks back tens of trials; all are on disk
        self.performance.add(scored)
        with self._lock:
            events = self.training.record(scored)
        for event in events:
            trial.training_events.append(_event_dict(event))
            log.info("after trial %d: %s", trial.number, _describe_event(event))
        if self._lickport_motor is not None:
            side = self._bias_correction.after_trial(self.record.history)
            if side is not None:
                log.info("after trial %d: the lickport steps toward the %s (the weaker side)", trial.number,
                         side)
                self._lickport_step = (trial.number, side)

    def _should_continue(self, trial: PreparedTrial, bpod_now_s: float) -> bool:
        if self._stop.is_set() or self._paused:
            return False
        if self.options.trials is not None and trial.number >= self.options.trials:
            self._end_reason = "trial limit"
            return False
        first, minutes = self._first_start_s, self.options.minutes
        if minutes is not None and first is not None and bpod_now_s - first >= minutes * 60:
            self._end_reason = "time limit"
            return False
        return True

    def _wait_while_paused(self) -> bool:
        """After the last trial ended without a queued one: True to start a new trial."""
        if not self._paused:
            return False
        log.info("paused after trial %d; waiting for resume or stop", self._trials_done)
        self._idle = True
        try:
            return self._wait_for_resume()
        finally:
            self._idle = False

    def _wait_for_resume(self) -> bool:
        while not self._stop.is_set():
            if self._resume.wait(POLL_S):
                with self._lock:
                    self._resume.clear()
                    self._paused = False
                log.info("resumed")
                if self._imaging is not None:
                    self._imaging.expect_frames()  # the pause was no silence of the microscope
                return True
        return False

    def _finish(self, trial: PreparedTrial, result: TrialResult | None) -> None:
        """Record a trial that ended: `result` is its Bpod record (partial if the Bpod was lost), None for
        a queued trial the Bpod never began."""
        assert self._store is not None
        scored = self._score(trial, result) if result is not None else None
        provisional = trial.provisional
        if scored is not None and provisional is None and scored.outcome != "aborted":
            self._learn(trial, scored)  # the outcome state came and went between two polls
        elif scored is not None and provisional is not None and provisional.outcome != scored.outcome:
            log.error("trial %d: outcome %s at the outcome state but %s at the end; training kept the first",
                      trial.number, trial.provisional.outcome, scored.outcome)
        outcome = "aborted" if scored is None or trial.abort_reason is not None else scored.outcome
        if trial.not_started and outcome == "aborted":
            outcome = "not_started"
        dead_time_s = None
        if result is not None:
            if self._first_start_s is None:
                self._first_start_s = result.start_s
            if self._last_result_end_s is not None:
                # Host-induced dead time: the gap on the Bpod clock less the one cycle the device itself
                # takes to start a queued trial, so 0 means "queued in time" on every board; the gap is
                # in the record's bpod times. (+ 0.0: no -0.0 from float rounding.)
                dead_time_s = round(result.start_s - self._last_result_end_s - result.cycle_s, 6) + 0.0
            self._last_result_end_s = result.end_s
        bpod = BpodRecord.from_json(result.to_dict(), trial.number) if result is not None else None
        sounds = (sound_plays(trial.machine, self._cue_actions, bpod, self.settings.sound.module)
                  if bpod is not None and self._cue_actions is not None else None)
        record = TrialRecord(
            trial=trial.number, subject=self.options.subject,
            **spec_fields(trial.spec.to_dict() | ({"free_drop": scored.free_drop} if scored else {})),
            **_block_fields(trial.block),
            score=TrialScore.from_scored(scored) if scored is not None else None,
            outcome=outcome, abort_reason=trial.abort_reason,
            stopped=outcome in ("aborted", "not_started") and trial.abort_reason is None,
            dead_time_s=dead_time_s,
            reward_ul=self.settings.task.reward_volume_ul if scored and scored.rewarded else 0.0,
            valve_time_s=self.params.valve_s(trial.spec.side),
            training_events=tuple(trial.training_events), training=self.training.state.to_dict(),
            bpod=bpod, sounds=sounds,
            host_time=datetime.now().isoformat(timespec="milliseconds"),
            closed_loop=_closed_loop_record(trial.gate, result) if result is not None else None,
            pole=trial.pole, lickport=trial.lickport, outputs=self._outputs.get(trial.number, {}),
            # training counted a trial cut short with the outcome it had reached
            outcome_before_abort=scored.outcome if scored is not None and outcome != scored.outcome
            and scored.outcome != "aborted" else None,
        )
        self._store.append_trial(record)
        self._trials_done += 1
        with self._lock:
            self._water_ul += trial_water_ul(record, self._valves)
        outputs = self._outputs.pop(trial.number, {})
        if self._children is not None:
            self._children.report()  # a child's death or return into session.json
        self._save_subject()
        if result is not None:  # the record as written: one shape on disk and on the wire
            self._publish(TOPIC_TRIAL, {"kind": "end", "trial": trial.number, "record": record.to_json(),
                                        "status": self.status(), "outputs": outputs})
        self._status(trial, outcome)

    def _save_subject(self) -> None:
        assert self._store is not None
        if self._sim is not None:
            self._sim.save()  # the simulated subject's own state and the session's ground truth
        self._store.durable_write(subject_path(self.data_root, self.options.subject),
                                  lambda: save_subject(self.data_root, self.record))

    # ------------------------------------------------------------------ callbacks (reader thread)

    def _on_event(self, event: TrialEvent) -> None:
        if self._store is not None and self._client is not None:
            source = "closed loop" if "SoftCode" in event.name else "task"  # the decoder's decisions
            self._store.journal(self._client.trials_started, "event", name=event.name, time_s=event.time_s,
                                source=source)

    def _on_state(self, state: str, time_s: float) -> None:
        if self._client is None:
            return
        number = self._client.trials_started
        if self._store is not None:
            outputs = self._outputs.get(number, {}).get(state, {})
            self._store.journal(number, "state", name=state, time_s=time_s, source="task", outputs=outputs)
        self._publish(TOPIC_STATE, {"trial": number, "state": state, "time_s": time_s})

    def _publish(self, topic: bytes, data: dict[str, Any]) -> None:
        """Publish from any thread: a ZeroMQ socket is not thread-safe, and the Bpod reader thread
        (state entries) and the trial loop (trial records) both publish."""
        if self._publisher is not None:
            with self._publish_lock:
                self._publisher.send_event(topic, data)

    # ------------------------------------------------------------------ control (control thread)

    def _handle_control(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "status":
            return self.status()
        reply = self._control(command, args)
        if command != "soft-code" and self._store is not None:  # soft codes are journaled as Bpod events
            trial = self._client.trials_started if self._client is not None else 0
            fields = {k: v for k, v in args.items() if k != "source"}
            self._store.journal(trial, "control", command=command, source=args.get("source", "experimenter"),
                                **fields, **{k: v for k, v in reply.items() if k in ("open_s", "volume_ul")})
        return reply

    def _control(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "switch-context":
            name = args["context"]
            if not isinstance(name, str) or name not in self.contexts:
                raise ControlRequestError(f"unknown context {name!r} (contexts: {', '.join(self.contexts)})")
            with self._lock:
                self.training.request_context_switch(name)
            log.info("context switch to %s requested: applies at the next trial boundary", name)
            return {"message": f"switching to {name} at the next trial boundary"}
        if command == "pause":
            with self._lock:
                self._paused = True
            return {"message": "pausing after the current trial"}
        if command == "resume":
            with self._lock:
                was_paused = self._paused
                self._paused = False
            self._resume.set()
            return {"message": "resumed" if was_paused else "not paused"}
        if command == "stop":
            self.request_stop("experimenter")
            return {"message": "stopping after the current trial"}
        if command == "closed-loop":
            return self._set_closed_loop(args["enabled"])
        if command == "soft-code":
            return self._soft_code(args)
        if command == "valve":
            return self._valve(args["side"], args["action"])
        raise ControlRequestError(f"command {command!r} is not available in this session yet")

    def _app_port(self) -> str | None:
        return self._sim.app_port if self._sim is not None else self.settings.bpod.app_port

    def _closed_loop_possible(self) -> str | None:
        """Why closed loop cannot run in this session, or None if it can."""
        loop = self.settings.online.closed_loop
        if not self.settings.online.enabled:
            return "the online module is off (online.enabled: false)"
        if loop.mode == "app_port":
            hw = self._client.hardware if self._client is not None else None
            if hw is not None and not hw.has_app_port:
                return "closed_loop.mode app_port needs Bpod firmware 23 (the APP port)"
            if self._app_port() is None:
                return "closed_loop.mode app_port needs bpod.app_port (the Bpod's second serial port)"
        return None

    def _decoder_gate(self, delay_s: float) -> DecoderGate | None:
        """Decoder-gated delay for the next trial while closed loop is on: the delay ends when the
        decoder is confident (its event), after the decoding window, and at the stage's delay at most."""
        with self._lock:
            enabled = self._closed_loop
        if not enabled or delay_s <= 0 or self._closed_loop_possible() is not None:
            return None
        loop = self.settings.online.closed_loop
        event = "APP_SoftCode1" if loop.mode == "app_port" else "SoftCode1"
        min_s = min(self.settings.online.decoder.delay_window_s, delay_s)
        return DecoderGate(event, min_s=min_s, max_s=delay_s)

    def _set_closed_loop(self, enabled: Any) -> dict[str, Any]:
        if not isinstance(enabled, bool):
            raise ControlRequestError(f"'enabled' must be true or false, got {enabled!r}")
        if enabled and (why := self._closed_loop_possible()) is not None:
            raise ControlRequestError(f"closed loop cannot run: {why}")
        with self._lock:
            self._closed_loop = enabled
        state = "on" if enabled else "off"
        log.info("closed loop %s from the next trial prepared", state)
        return {"message": f"closed loop {state} from the next trial", "closed_loop": enabled}

    def _soft_code(self, args: dict[str, Any]) -> dict[str, Any]:
        """A soft code into the running trial for another process (the online module on firmware 22)."""
        client = self._client
        number, trial = args["number"], args.get("trial")
        if client is None or not client.trial_running:
            raise ControlRequestError("no trial is running")
        if trial is not None and trial != client.trials_started:
            raise ControlRequestError(f"trial {trial} is not running (trial {client.trials_started} is)")
        if not isinstance(number, int) or isinstance(number, bool):
            raise ControlRequestError(f"'number' must be a whole number, got {number!r}")
        try:
            client.send_soft_code(number)
        except BpodConnectionError:
            raise
        except BpodError as exc:
            raise ControlRequestError(str(exc)) from None
        return {"trial": client.trials_started, "t_ns": time.time_ns()}

    def _valve(self, side: str, action: str) -> dict[str, Any]:
        """Open a reward valve by hand (the Bpod's output override, between or during trials): one calibrated
        drop, counted as water given, or a flush of session.flush_s (not counted: it fills or rinses the
        line). The valve is closed by a timer, so the control thread answers at once."""
        client = self._client
        if client is None or not client.connected:
            raise ControlRequestError("the Bpod is not connected")
        line = self.settings.wiring.left_valve if side == "left" else self.settings.wiring.right_valve
        drop = action == "drop"
        open_s = self.params.valve_s(side) if drop else self.settings.session.flush_s  # type: ignore[arg-type]
        try:
            client.override_output(line, 1)
        except BpodConnectionError:
            raise
        except BpodError as exc:
            raise ControlRequestError(str(exc)) from None

        def close() -> None:
            try:
                client.override_output(line, 0)  # back to the state machine
            except BpodError as exc:
                log.error("could not close the %s valve after a manual %s: %s", side, action, exc)

        timer = threading.Timer(open_s / (self.speed if self.simulated else 1.0), close)
        timer.daemon = True
        with self._lock:
            self._valve_timers = [t for t in self._valve_timers if t.is_alive()] + [timer]
        timer.start()
        volume = self.settings.task.reward_volume_ul if drop else None
        if volume is not None:
            with self._lock:
                self._water_ul += volume
        log.info("manual %s on the %s valve (%s, %.3f s)", action, side, line, open_s)
        what = "one drop" if drop else f"a {open_s:g} s flush"
        return {"message": f"{what} from the {side} valve", "open_s": open_s, "volume_ul": volume}

    def _close_valves(self) -> None:
        """At the session's end: a manual valve still open is closed now, not when its timer runs."""
        with self._lock:
            timers, self._valve_timers = self._valve_timers, []
        for timer in timers:
            if timer.is_alive():
                timer.cancel()
                timer.function(*timer.args, **timer.kwargs)

    def status(self) -> dict[str, Any]:
        if not hasattr(self, "training"):
            return {"subject": self.options.subject, "trials": 0, "starting": True}
        perf = self.training.perf100
        return {
            "subject": self.options.subject, "trials": self._trials_done, "context": self.training.context,
            "stage": self.training.stage.name, "perf100": perf, "paused": self._paused, "idle": self._idle,
            "stopping": self._stop.is_set(), "session": str(self._store.folder) if self._store else None,
            "pending_context": self.training.state.pending_context, "closed_loop": self._closed_loop,
            "children": self._children.status() if self._children is not None else None,
            "rig": self.settings.rig.name, "started": self._started.isoformat() if self._started else None,
            "water_ul": round(self._water_ul, 3), "weight_g": self.options.weight_g,
        }

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("stop requested (%s): the session ends after the current trial", reason)
            self._end_reason = f"stopped by {reason}"
        self._stop.set()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: object) -> None:
            if self._stop.is_set() and self._client is not None:
                log.warning("second interrupt: ending the current trial now")
                self._client.stop_trial()
            self.request_stop(signal.Signals(signum).name)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _status(self, trial: PreparedTrial, outcome: str) -> None:
        stream = self.options.status_stream
        if stream is None:
            return
        line = format_status(trial.number, self.training.context, self.training.stage.name,
                             self.performance, outcome)
        if stream.isatty():
            stream.write("\r" + line.ljust(100))
        elif trial.number % 25 == 0 or trial.training_events:
            stream.write(line + "\n")
        stream.flush()


def state_outputs(machine: StateMachine) -> dict[str, dict[str, Any]]:
    """What each state of a trial sets on its output lines (state -> {output: value}), for the journal
    and the monitor's timeline."""
    return {state.name: dict(state.actions) for state in machine.states if state.actions}


def _event_dict(event: Any) -> dict[str, Any]:
    return {k: getattr(event, k) for k in event.__dataclass_fields__}


def _describe_event(event: Any) -> str:
    data = _event_dict(event)
    return " ".join(f"{k}={v}" for k, v in data.items())


def _block_fields(block: Block | None) -> dict[str, Any]:
    """The trial's block as record and message keys (`block`, `block_label`)."""
    return {} if block is None else {"block": block.index, "block_label": block.label}


def _closed_loop_record(gate: DecoderGate | None, result: TrialResult) -> dict[str, Any] | None:
    """How the trial was gated by the decoder and when the decision's event reached the Bpod (the
    decision itself, with its frame and host latency, is in the online module's decisions.jsonl)."""
    if gate is None:
        return None
    return {"gated": True, "event": gate.event, "min_s": gate.min_s, "max_s": gate.max_s,
            "event_times": result.event_times(gate.event)}


def run_session(settings: Settings, options: RunOptions) -> SessionResult:
    return SessionRunner(settings, options).run()

