"""The embedded simulated rig: the Bpod emulator on a pty, a simulated mouse licking in its world,
a simulated pole motor and (imaging.source: simulated) the simulated microscope coupled to that world.
The session talks to it exactly as to a real Bpod, through the port."""

from __future__ import annotations

import logging
from typing import Any

from hardware.bpod.emulator import EmulatorServer
from hardware.sim.mouse import MouseLines, MouseParameters, SimulatedMouse, trained_mapping
from hardware.sim.pole_motor import SimulatedPoleMotor
from protocols.contexts import Context
from rig.imaging import build_simulated_scope
from rig.settings import Settings

log = logging.getLogger(__name__)


class SimulatedRig:
    """Started before the session connects, stopped after it disconnects."""

    def __init__(self, settings: Settings, speed: float, mouse_state: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.speed = speed
        self.server = EmulatorServer(firmware=settings.bpod.firmware, model=settings.bpod.model, speed=speed)
        self.motor = SimulatedPoleMotor()
        if mouse_state and "mapping" in mouse_state:
            mapping = dict(mouse_state["mapping"])
        else:
            trained = Context.from_settings(settings.sim.subject.trained_context, settings.contexts)
            mapping = trained_mapping({trained.cue_for(side): side for side in ("left", "right")})
        # The microscope (sized for `speed`) listens to the world before the mouse, which feeds it its plans.
        firmware = self.server.firmware
        self.scope = (build_simulated_scope(settings, speed, self.server.world, clock=lambda: firmware.cycle)
                      if settings.imaging.source == "simulated" else None)
        self.mouse = SimulatedMouse(
            self.server.world, MouseParameters.from_settings(settings.sim.mouse),
            MouseLines.from_wiring(settings.wiring), self.motor, rng_seed=settings.sim.seed, mapping=mapping,
            on_plan=self.scope.on_plan if self.scope else None,
            on_lick=self.scope.on_lick if self.scope else None,
        )

    @property
    def port(self) -> str:
        return self.server.port

    @property
    def app_port(self) -> str | None:
        return self.server.app_port

    def set_trial_context(self, trial: int, context: str) -> None:
        """The context of Bpod trial `trial`, for the simulated microscope (call when starting or queueing
        the trial)."""
        if self.scope is not None:
            self.scope.set_trial_context(trial, context)

    def mouse_state(self) -> dict[str, Any]:
        """What the simulated mouse has learned, stored with the subject for the next session."""
        return {"mapping": self.mouse.mapping}

    def __enter__(self) -> SimulatedRig:
        self.server.start()
        log.info("simulated rig: Bpod emulator (firmware %d) on %s at %gx real time, simulated mouse",
                 self.settings.bpod.firmware, self.server.port, self.speed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.mouse.close()
        if self.scope is not None:
            self.scope.close()
        self.server.stop()
