"""The session's sound: the HiFi module opened and loaded at session start, the task's cue outputs from
it, and the sounds each trial played, read back from the trial's own states and events.

With `sound.device: pwm` none of this runs: the task plays its tones on the wiring's tone lines. With
`hifi` the session opens the module on its USB port (the emulator's pty on the simulated rig), loads the
task's waveforms and hands the task the state outputs that play them (`TaskParameters.cue_actions`). What
a trial played is then known from the Bpod alone, the same on a real rig and in the emulator: a state
that plays a sound started it when it was entered, the module's answer (`HiFi1_1`) acknowledged it, and a
state with the stop output cut it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from hardware.bpod.module_info import ModuleInfo, module_names
from hardware.bpod.modules.hifi import HiFiError, HiFiModule
from hardware.settings import SoundSettings
from hardware.sound import HiFiSound, Sound, task_waveforms
from protocols.directional_licking import CUE_SOUNDS, STOP_SOUND
from protocols.state_machine import StateMachine
from protocols.trial_record import BpodRecord
from rig.errors import UserError

log = logging.getLogger(__name__)

CueActions = dict[str, dict[str, Any]]


def open_hifi_sound(settings: SoundSettings, modules: Sequence[ModuleInfo | None], usb_port: str | None,
                    stack: ExitStack, timeout_s: float = 1.0) -> HiFiSound:
    """The HiFi of `settings`, checked against the modules the Bpod found on its ports (`modules`),
    connected on `usb_port`, closed with `stack`, with the task's waveforms loaded. A module that is not
    there is one sentence (UserError) before any trial."""
    channels = module_names(modules)
    if settings.module not in channels:
        raise UserError(
            f"sound.module {settings.module}: the Bpod found no such module on its module ports "
            f"({', '.join(channels) or 'none'}); plug the HiFi into a module port and power it before "
            "the session, or set sound.device: pwm for a rig that plays its tones on the tone lines")
    if usb_port is None:
        raise UserError("sound.usb_port is not set: the HiFi module's own serial port is needed to load "
                        "its waveforms")
    module = HiFiModule(usb_port, timeout_s=timeout_s)
    try:
        module.connect()
        stack.callback(module.close)
        sound = HiFiSound(module, settings)
        sound.load(task_waveforms(settings))
    except (HiFiError, ValueError) as exc:
        raise UserError(f"sound.usb_port {usb_port}: {exc}") from None
    log.info("HiFi module %s on %s: %s loaded", settings.module, usb_port, ", ".join(CUE_SOUNDS))
    return sound


def cue_actions(sound: Sound) -> CueActions:
    """The outputs the task plays its sounds with (`TaskParameters.cue_actions`)."""
    actions = {name: dict(sound.play_action(name)) for name in CUE_SOUNDS}
    return {**actions, STOP_SOUND: dict(sound.stop_action())}


def _outputs(state_actions: Mapping[str, Any], action: Mapping[str, Any]) -> bool:
    return all(state_actions.get(channel) == value for channel, value in action.items())


def sound_plays(machine: StateMachine, actions: Mapping[str, Mapping[str, Any]], bpod: BpodRecord,
                module: str) -> tuple[dict[str, Any], ...]:
    """The sounds one trial played, in order: which sound, the state that played it, its onset (the
    state's entry), the module's acknowledgement (its first `{module}_1` event from then) and when a stop
    cut it (None: it played to its end), in seconds from trial start (the Bpod record's clock)."""
    players = {state.name: name for state in machine.states for name in CUE_SOUNDS
               if _outputs(state.actions, actions[name])}
    stoppers = {state.name for state in machine.states if _outputs(state.actions, actions[STOP_SOUND])}
    onsets = sorted((visit[0], state) for state in players for visit in bpod.states.get(state, ()))
    stops = sorted(visit[0] for state in stoppers for visit in bpod.states.get(state, ()))
    acks = bpod.event_times(f"{module}_1")
    plays = []
    for k, (onset, state) in enumerate(onsets):
        until = onsets[k + 1][0] if k + 1 < len(onsets) else float("inf")
        ack = next((t for t in acks if onset <= t < until), None)
        cut = next((t for t in stops if onset <= t < until), None)
        plays.append({"sound": players[state], "state": state, "onset_s": onset, "ack_s": ack, "cut_s": cut})
    return tuple(plays)
