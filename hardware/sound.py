"""Sound as the task uses it: a few named waveforms loaded at session start, each played by a state.

`Sound` is what the session needs of a sound device; `HiFiSound` implements it with the Bpod HiFi
module (waveforms over the module's own USB port, plays as module bytes from states, so sound onset is
on the Bpod clock to the cycle). The task asks `play_action(name)` for the output of the state that
starts a sound, exactly as it asks the wiring for a valve line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, get_args

import numpy as np

from hardware.bpod.modules.hifi import HiFiModule
from hardware.bpod.modules.hifi_protocol import OP_STOP, play_message
from hardware.settings import SoundSettings, ToneSettings

SoundName = Literal["tone_high", "tone_low", "go_cue"]
SOUND_NAMES: tuple[str, ...] = get_args(SoundName)
Action = dict[str, int | list[int]]


class Sound(Protocol):
    """A device that holds named waveforms and plays one when a state says so."""

    def load(self, waveforms: Mapping[str, np.ndarray]) -> None:
        """Store the waveforms (samples in -1..1), replacing any loaded before; a waveform the device
        cannot hold is refused with one sentence (ValueError, or the device's own error)."""
        ...

    def play_action(self, name: str) -> Action:
        """The state-machine output that starts waveform `name`; raises KeyError naming what is loaded."""
        ...

    def stop_action(self) -> Action:
        """The state-machine output that stops playback."""
        ...


def tone(spec: ToneSettings, sampling_rate_hz: int, amplitude: float, ramp_s: float) -> np.ndarray:
    """A pure tone with raised-cosine onset and offset ramps (no click at either end)."""
    n = round(spec.duration_s * sampling_rate_hz)
    t = np.arange(n) / sampling_rate_hz
    wave = amplitude * np.sin(2 * np.pi * spec.frequency_hz * t)
    n_ramp = min(round(ramp_s * sampling_rate_hz), n // 2)
    if n_ramp:
        ramp = 0.5 * (1 - np.cos(np.pi * np.arange(n_ramp) / n_ramp))
        wave[:n_ramp] *= ramp
        wave[n - n_ramp:] *= ramp[::-1]
    return wave


def task_waveforms(settings: SoundSettings) -> dict[str, np.ndarray]:
    """The task's sounds: the two sample tones and the go cue, at the settings' rate and ramps."""
    rate, amplitude, ramp = settings.sampling_rate_hz, settings.amplitude, settings.ramp_s
    return {name: tone(getattr(settings, name), rate, amplitude, ramp) for name in SOUND_NAMES}


class HiFiSound:
    """`Sound` on a Bpod HiFi module: slot k holds the k-th loaded waveform, a state plays it with
    `{module: ['P', k]}` (the module answers with event `{module}_1`)."""

    def __init__(self, hifi: HiFiModule, settings: SoundSettings) -> None:
        self.hifi = hifi
        self.settings = settings
        self._slots: dict[str, int] = {}

    def load(self, waveforms: Mapping[str, np.ndarray]) -> None:
        if len(waveforms) > self.hifi.info.max_waveforms:
            raise ValueError(f"{len(waveforms)} waveforms do not fit the HiFi module's "
                             f"{self.hifi.info.max_waveforms} slots")
        if self.hifi.sampling_rate != self.settings.sampling_rate_hz:
            self.hifi.set_sampling_rate(self.settings.sampling_rate_hz)
        self.hifi.set_attenuation_db(self.settings.attenuation_db)
        slots = {}
        for k, (name, wave) in enumerate(waveforms.items()):
            self.hifi.load(k, wave)
            slots[name] = k
        self.hifi.push()
        self._slots = slots

    def play_action(self, name: str) -> Action:
        if name not in self._slots:
            loaded = ", ".join(self._slots) or "nothing"
            raise KeyError(f"no sound named {name!r} is loaded (loaded: {loaded})")
        return {self.settings.module: play_message(self._slots[name])}

    def stop_action(self) -> Action:
        return {self.settings.module: OP_STOP}
