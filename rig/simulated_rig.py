"""The embedded simulated rig: the Bpod emulator on a pty, a simulated mouse licking in its world, the
emulated Zaber stages of the pole and the lickport (pole_motor.port, lickport_motor.port: emulator), each
a controller on its own pty, the emulated HiFi module
(sound.device: hifi) on the Bpod's first module port with its USB port on a pty, and (imaging.source:
simulated) the simulated microscope coupled to that world. The session talks to it exactly as to a real
Bpod, stage and HiFi, through the ports; the mouse feels the pole where the stage's carriage is and hears
the tones the HiFi plays."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardware.bpod.emulator import EmulatorServer, World
from hardware.bpod.modules.hifi_emulator import HiFiEmulator
from hardware.sim.hearing import Hearing
from hardware.sim.microscope import MicroscopeConfig
from hardware.sim.mouse import MouseLines, MouseParameters, MouseTrial, SimulatedMouse, trained_mapping
from hardware.sim.neurons import Population, named_rng
from hardware.sim.pole_motor import StagePoleSensor
from hardware.sim.scope import SimScope
from hardware.sim.scope_plan import DEFAULT_CPU_BUDGET
from hardware.sim.subject import Subject, SubjectParameters
from hardware.sim.subject_file import (
    SUBJECT_STATE_FILE,
    SubjectStateError,
    TruthLog,
    load_subject_state,
    save_subject_state,
)
from hardware.sound import SOUND_NAMES
from hardware.zaber.emulator import Device, ZaberEmulatorServer
from hardware.zaber.pole import PolePositions
from protocols.contexts import Context
from rig.bench import HIFI_MODULE_PORT
from rig.settings import Settings
from rig.store import DataError

log = logging.getLogger(__name__)


def simulated_microscope_config(settings: Settings, day: int = 0) -> MicroscopeConfig:
    """The simulated microscope of settings.sim.microscope on imaging `day` (the subject's earlier sessions:
    the field shifts and a few cells change from day to day), at the frame format of settings.imaging (its
    planes, one channel: the simulator renders no more). It keeps no per-frame ground truth: in a
    session nothing reads it, and at ~4 KB a frame (200 neurons) it would grow by megabytes per hundred
    trials in the microscope process; each frame still carries its own truth."""
    imaging = settings.imaging
    if imaging.channels != 1:
        log.warning("simulated microscope renders one channel; imaging.channels=%d is ignored",
                    imaging.channels)
    return MicroscopeConfig.from_settings(
        settings.sim.microscope, seed=settings.sim.seed, height=imaging.frame_height,
        width=imaging.frame_width, frame_rate_hz=imaging.frame_rate_hz, planes=imaging.planes,
        dtype=imaging.dtype, truth_history_frames=0, day=day)


def build_simulated_scope(settings: Settings, speed: float, world: World,
                          clock: Callable[[], int] | None = None,
                          cpu_budget: float = DEFAULT_CPU_BUDGET, day: int = 0) -> SimScope:
    """The simulated microscope for a `SimulatedRig`: settings.sim.microscope and settings.imaging, wired as
    settings.wiring, reduced by `plan_for_speed` so that it keeps up with a session at `speed`; `clock`
    reads the engine's cycle (see `SimScope.now_cycle`); `day` as in `simulated_microscope_config`."""
    config = simulated_microscope_config(settings, day)
    wiring = settings.wiring
    scope = SimScope.for_speed(
        config, world, speed, cpu_budget, clock=clock, imaging_trigger=wiring.imaging_trigger,
        sample_cues=(wiring.pole, wiring.sample_tone_high, wiring.sample_tone_low), go_cue=wiring.go_cue)
    eff = scope.effective
    reduced = (f" (reduced from {config.height}x{config.width} at {config.frame_rate_hz:g} Hz for {speed:g}x "
               "speed, see the warning above; recorded in session.json)") if scope.reduced else ""
    log.info("simulated microscope: %dx%d at %.2f Hz%s", eff.height, eff.width, eff.rate_hz, reduced)
    return scope


class SimulatedRig:
    """Started before the session connects, stopped after it disconnects.

    The mouse is the subject of `subject_dir` (hardware/sim/subject.py): its latent states, mappings and
    bias are read from `<subject_dir>/SUBJECT_STATE_FILE` (a new subject starts as settings.sim.subject
    says) and written back by `save()`, so each session is the next day of the same mouse. The pattern the
    population expresses is the mouse's, never the rig's context label; `record_truth(folder)` writes the
    ground truth there (hardware/sim/subject_file.py)."""

    def __init__(self, settings: Settings, speed: float, subject_dir: Path | None = None) -> None:
        self.settings = settings
        self.speed = speed
        self.subject_dir = subject_dir
        self.server = EmulatorServer(firmware=settings.bpod.firmware, model=settings.bpod.model, speed=speed)
        pole = settings.pole_motor
        self.stage = (ZaberEmulatorServer(Device(pole.device, axes=pole.axis), speed=speed)
                      if pole.port == "emulator" else None)
        lickport = settings.lickport_motor
        self.lickport_stage = (ZaberEmulatorServer(Device(lickport.device, axes=lickport.axis), speed=speed)
                               if lickport.port == "emulator" else None)
        sensor = None
        if self.stage is not None:
            stage, axis = self.stage, self.stage.device.axis(pole.axis)
            sensor = StagePoleSensor(lambda: axis.position(stage.now_s()), PolePositions.from_settings(pole))
        params = MouseParameters.from_settings(settings.sim.mouse)
        self.subject = self._load_subject(params)
        self.subject.new_day()
        day = self.subject.day - 1  # the mouse's earlier sessions: its field of view moves from day to day
        # The microscope (sized for `speed`) listens to the world before the mouse, which feeds it its plans.
        firmware = self.server.firmware
        self.scope = (build_simulated_scope(settings, speed, self.server.world, clock=lambda: firmware.cycle,
                                            day=day)
                      if settings.imaging.source == "simulated" else None)
        config = self.scope.config if self.scope is not None else simulated_microscope_config(settings, day)
        self.truth = TruthLog(Population(config.population_params(), config.seed))
        self._labels: dict[int, str] = {}
        self._plan: dict[str, Any] = {}
        self._snapshot = self.subject.to_dict()
        self._lock = threading.Lock()
        self.hifi, self.hearing = self._plug_in_hifi()
        seed = settings.sim.seed
        day_seed = None if seed is None else int(named_rng(seed, f"day:{self.subject.day}").integers(2**63))
        self.mouse = SimulatedMouse(
            self.server.world, params, MouseLines.from_roles(settings.wiring.model_dump()), sensor,
            rng_seed=day_seed, model=self.subject, on_plan=self._on_plan,
            on_lick=self.scope.on_lick if self.scope else None, hearing=self.hearing,
            on_trial_end=self._on_trial_end,
        )

    def _load_subject(self, params: MouseParameters) -> Subject:
        sim = self.settings.sim
        subject_params = SubjectParameters.from_settings(sim)
        if self.subject_dir is not None:
            try:
                stored = load_subject_state(self.subject_dir)
                if stored is not None:
                    return Subject.from_dict(stored, params, subject_params)
            except SubjectStateError as exc:
                raise DataError(str(exc)) from None
            except ValueError as exc:
                raise DataError(f"{self.subject_dir / SUBJECT_STATE_FILE}: not a simulated subject's state "
                                f"({exc}); fix or move the file") from None
        if sim.subject.naive:
            return Subject(params, subject_params)
        trained = Context.from_settings(sim.subject.trained_context, self.settings.contexts)
        mapping = trained_mapping({trained.cue_for(side): side for side in ("left", "right")})
        return Subject(params, subject_params, mapping)

    # -- the mouse's side (engine thread) ---------------------------------------------------------------

    def _on_plan(self, cue: str | None, side: str | None) -> None:
        """The mouse's plan: the microscope gets the pattern of the mouse's latent state and the cue."""
        subject = self.subject
        expressed = subject.expression()
        if self.truth.add_pattern(expressed.key, expressed.recipe) and self.scope is not None:
            self.scope.define_pattern(expressed.key, expressed.recipe)
        state = subject.state
        self._plan = {"state": state.id, "state_pattern": state.pattern_key, "pattern": expressed.key,
                      "pattern_weight": expressed.weight, "previous_state": subject.previous,
                      "p_right": state.mapping.get(cue, 0.5) if cue is not None else None,
                      "bias": round(subject.bias, 4), "engagement": round(subject.engagement, 4)}
        if self.scope is not None:
            self.scope.coupling.announce_trial(expressed.key, side, cue)

    def _on_trial_end(self, trial: MouseTrial) -> None:
        switch = self.subject.last_switch if trial.answer_side is not None else None
        with self._lock:
            label = self._labels.pop(trial.trial, None) if trial.trial is not None else None
        record = {"trial": trial.trial, "day": self.subject.day, "cue": trial.cue, "context": label,
                  "planned_side": trial.planned_side, "answer_side": trial.answer_side,
                  "outcome": trial.outcome, "lapse": trial.lapse, **self._plan,
                  "switch": None if switch is None else {"kind": switch.kind, "to_state": switch.to_state}}
        self._plan = {}
        self.truth.add_trial(record)
        snapshot = self.subject.to_dict()
        with self._lock:
            self._snapshot = snapshot

    # -- the session's side ---------------------------------------------------------------------------------

    def record_truth(self, session_folder: Path) -> None:
        """Write the simulator's ground truth into the session's folder from now on."""
        self.truth.folder = Path(session_folder)

    def save(self) -> None:
        """The subject's state as of its last trial, and the truth of the trials since the last save."""
        with self._lock:
            snapshot = self._snapshot
        if self.subject_dir is not None:
            save_subject_state(self.subject_dir, snapshot)
        self.truth.flush()

    def _plug_in_hifi(self) -> tuple[HiFiEmulator | None, Hearing | None]:
        """The emulated HiFi on the Bpod's module port, before any client connects (the Bpod finds its
        modules at connect), heard by the microscope's coupling and then the mouse."""
        sound = self.settings.sound
        if sound.device != "hifi":
            return None, None
        hifi = HiFiEmulator()
        self.server.world.attach_module(HIFI_MODULE_PORT, hifi)
        tones = {name: getattr(sound, name).frequency_hz for name in SOUND_NAMES}
        hearing = Hearing(self.server.world, hifi, tones)
        if self.scope is not None:
            hearing.add_listener(self.scope.coupling.sound_started, self.scope.coupling.sound_ended)
        return hifi, hearing

    @property
    def port(self) -> str:
        return self.server.port

    @property
    def app_port(self) -> str | None:
        return self.server.app_port

    @property
    def hifi_port(self) -> str | None:
        """The emulated HiFi's USB port (None when sound.device is pwm)."""
        return self.hifi.port if self.hifi is not None else None

    def set_trial_context(self, trial: int, context: str) -> None:
        """The rig's context label of Bpod trial `trial`, for the ground truth only: the population follows
        the mouse's own latent state, not the label."""
        with self._lock:
            self._labels[trial] = context
            for old in [t for t in self._labels if t < trial - 16]:
                del self._labels[old]

    def __enter__(self) -> SimulatedRig:
        self.server.start()
        for stage in (self.stage, self.lickport_stage):
            if stage is not None:
                stage.start()
        if self.hifi is not None:
            self.hifi.start()
        log.info("simulated rig: Bpod emulator (firmware %d) on %s at %gx real time, simulated mouse%s",
                 self.settings.bpod.firmware, self.server.port, self.speed,
                 "".join(f", Zaber stage ({what}) on {stage.port}" for what, stage in
                         (("pole", self.stage), ("lickport", self.lickport_stage)) if stage is not None))
        return self

    def __exit__(self, *exc: object) -> None:
        self.mouse.close()
        if self.hearing is not None and self.hifi is not None:
            self.hearing.close()
            self.hifi.stop()
        if self.scope is not None:
            self.scope.close()
        for stage in (self.stage, self.lickport_stage):
            if stage is not None:
                stage.stop()
        self.server.stop()
