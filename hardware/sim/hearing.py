"""What a simulated animal hears of the HiFi module: each play as the tone it recognises by its pitch,
from the cycle the state machine sent it until the waveform ends by itself.

The emulated module tells its listeners of every play and stop at the cycle the state machine wrote
them; the waveform's pitch is read from the samples the host loaded (zero crossings of a pure tone), so
the animal knows a sound by what it sounds like, not by the slot it was loaded into. A sound that plays
to its end is reported ended at its last sample (a `World.call_at`); a sound cut short, by a stop or by
another play, is not: in the task a cut tone is the sample restarting after an early lick, and the
restarted sample plays it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hardware.bpod.emulator.modules import BpodTime
    from hardware.bpod.emulator.world import World
    from hardware.bpod.modules.hifi_emulator import HiFiEmulator, PlayRecord, Waveform

SoundCallback = Callable[[str, int], None]
"""(sound name, engine cycle)."""
RECOGNISED_OCTAVES = 0.5
"""A sound further than this from every known tone is not recognised (nobody is told of it)."""


def pitch_hz(samples: np.ndarray, sampling_rate: int) -> float:
    """The frequency of a pure tone, from its zero crossings (first channel of a stereo waveform)."""
    mono = samples[:, 0] if samples.ndim == 2 else samples
    if len(mono) < 2:
        return 0.0
    crossings = np.count_nonzero(np.diff(np.signbit(mono)))
    return crossings * sampling_rate / (2 * len(mono))


class Hearing:
    """Turns the HiFi emulator's plays into `started(name, cycle)` and `ended(name, cycle)` calls, for the
    tones named in `tones` (name -> frequency in Hz)."""

    def __init__(self, world: World, hifi: HiFiEmulator, tones: Mapping[str, float]) -> None:
        self.world = world
        self.hifi = hifi
        self.tones = dict(tones)
        self._listeners: list[tuple[SoundCallback, SoundCallback]] = []
        self._known: dict[int, tuple[Waveform, str | None]] = {}  # slot -> (waveform, what it is)
        self._playing = 0  # counts plays and stops: a natural end is reported only for the latest play
        self._cycles_per_s = 1e6 / world.hw.cycle_us
        hifi.add_listener(self._on_play, self._on_stop)

    def add_listener(self, started: SoundCallback, ended: SoundCallback) -> None:
        self._listeners.append((started, ended))

    def close(self) -> None:
        self._listeners.clear()
        self.hifi.remove_listener(self._on_play, self._on_stop)

    def recognise(self, index: int) -> str | None:
        """The tone in slot `index`: the known tone nearest in pitch, or None."""
        wave = self.hifi.waveform(index)
        if wave is None:
            return None
        known = self._known.get(index)
        if known is None or known[0] is not wave:
            heard = pitch_hz(wave.samples, self.hifi.sampling_rate)
            distance = {name: abs(math.log2(max(heard, 1.0) / hz)) for name, hz in self.tones.items()}
            name = min(distance, key=distance.__getitem__, default=None)
            known = (wave, name if name is not None and distance[name] <= RECOGNISED_OCTAVES else None)
            self._known[index] = known
        return known[1]

    def _on_play(self, play: PlayRecord) -> None:
        self._playing += 1
        name = self.recognise(play.index)
        if name is None:
            return
        for started, _ in list(self._listeners):
            started(name, play.cycle)
        this_play = self._playing
        end = play.cycle + max(1, round(play.duration_s * self._cycles_per_s))

        def ended(cycle: int) -> None:
            if self._playing == this_play:
                for _, on_end in list(self._listeners):
                    on_end(name, cycle)

        self.world.call_at(end, ended)

    def _on_stop(self, at: BpodTime) -> None:
        self._playing += 1
