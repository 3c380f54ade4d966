"""Drive the simulated microscope from the Bpod emulator's world, on the emulator's clock.

The emulator calls its listeners synchronously at the cycle an output changes, so the imaging-trigger TTL
becomes `start_trial` at exactly cycle * 100 us, and cue outputs become epoch events. The simulated mouse
knows what the outputs cannot tell: the pattern of its latent state, the side it is going to lick and the
cue it sensed. It calls `announce_trial(context, upcoming_side, cue)` (any time from the end of the
previous trial until the delay starts) and `lick(cycle, side)` for every lick it makes. Frames are then
pulled with `frames_until_cycle` after the engine has run up to that cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from hardware.sim.microscope import SimFrame, SimMicroscope

if TYPE_CHECKING:
    from hardware.bpod.emulator.world import OutputRecord, TrialRecord, World

CYCLE_S = 1e-4
"""One engine cycle (100 us)."""


class WorldCoupling:
    """Imaging trigger -> trial starts; sample cue on/off -> 'sample'/'delay'; go cue on -> 'go'.

    Channel names default to settings.yaml's wiring (imaging_trigger BNC1; pole BNC2 and the sample tones
    PWM3/PWM2; go cue PWM4); pass the rig's wiring to change them.
    """

    def __init__(self, sim: SimMicroscope, world: World, imaging_trigger: str = "BNC1",
                 sample_cues: Iterable[str] = ("BNC2", "PWM2", "PWM3"), go_cue: str | None = "PWM4") -> None:
        self.sim = sim
        self.world = world
        self.imaging_trigger = imaging_trigger
        self.sample_cues = frozenset(sample_cues)
        self.go_cue = go_cue
        self._levels: dict[str, int] = {}
        self._pending: tuple[str | None, str | None, str | None] | None = None
        self._in_trial = False
        self._triggered = False
        self._bpod_trial: int | None = None
        self._tone_on = False
        world.add_output_listener(self._on_output)
        world.add_trial_listener(self._on_trial)

    # -- called by the simulated mouse -----------------------------------------------------------

    def announce_trial(self, context: str | None, upcoming_side: str | None, cue: str | None = None) -> None:
        """The pattern in force (a context name or a defined pattern's key), the side ('left' | 'right' |
        None) the mouse will lick and the cue it sensed, in the current trial, or in the next one if the
        current trial has not triggered the microscope yet (or has ended)."""
        if self._in_trial and self._triggered:
            self.sim.set_trial_info(context, upcoming_side, cue)
        else:
            self._pending = (context, upcoming_side, cue)

    def lick(self, cycle: int, side: str) -> None:
        """A lick at an engine cycle ('left' | 'right')."""
        self.sim.lick(cycle * CYCLE_S, side)

    # -- called by `hardware.sim.hearing.Hearing` when the HiFi module plays the cues --------------

    def sound_started(self, name: str, cycle: int) -> None:
        """A sample tone starts the sample epoch (again only after it ended: a replay after a cut is the
        same sample); the go cue starts the go epoch."""
        if not self._triggered:
            return
        if name == "go_cue":
            self.sim.mark_epoch(cycle * CYCLE_S, "go")
        elif not self._tone_on:
            self._tone_on = True
            self.sim.mark_epoch(cycle * CYCLE_S, "sample")

    def sound_ended(self, name: str, cycle: int) -> None:
        if self._triggered and name != "go_cue" and self._tone_on:
            self._tone_on = False
            self.sim.mark_epoch(cycle * CYCLE_S, "delay")

    # -- called by whoever pulls frames ----------------------------------------------------------

    def frames_until_cycle(self, cycle: int) -> list[SimFrame]:
        """Frames that started before an engine cycle (call after the engine has processed it)."""
        return self.sim.frames_until(cycle * CYCLE_S)

    def close(self) -> None:
        """Stop listening to the world."""
        self.world.remove_output_listener(self._on_output)
        self.world.remove_trial_listener(self._on_trial)

    # -- listeners -------------------------------------------------------------------------------

    def _on_trial(self, record: TrialRecord) -> None:
        self._tone_on = False
        if record.kind == "start":
            self._in_trial, self._triggered, self._bpod_trial = True, False, record.trial
        else:
            self._in_trial, self._triggered = False, False  # cue outputs between trials are not epochs

    def _on_output(self, record: OutputRecord) -> None:
        channel = record.channel
        was_on = self._levels.get(channel, 0) != 0
        on = record.value != 0
        self._levels[channel] = record.value
        if on == was_on:
            return
        t = record.cycle * CYCLE_S
        if channel == self.imaging_trigger and on:
            context, side, cue = self._pending if self._pending is not None else (None, None, None)
            self._pending = None
            self.sim.start_trial(t, context, side, trial=self._bpod_trial if self._in_trial else None)
            if cue is not None:
                self.sim.set_trial_info(context, side, cue)
            self._triggered = True
        elif channel in self.sample_cues and self._triggered:
            any_cue_on = any(self._levels.get(c, 0) != 0 for c in self.sample_cues)
            if on:
                self.sim.mark_epoch(t, "sample")
            elif not any_cue_on:
                self.sim.mark_epoch(t, "delay")
        elif channel == self.go_cue and on and self._triggered:
            self.sim.mark_epoch(t, "go")
