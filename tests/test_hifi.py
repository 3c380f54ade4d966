"""The HiFi module: waveforms loaded over its own USB pty, plays from states on the Bpod clock, and the
task's sound interface on top of it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer
from hardware.bpod.modules.hifi import HiFiError, HiFiModule
from hardware.bpod.modules.hifi_emulator import HiFiEmulator
from hardware.settings import SoundSettings
from hardware.sound import SOUND_NAMES, HiFiSound, task_waveforms, tone
from protocols.state_machine import StateMachine

SPEED = 10.0
SETTINGS = SoundSettings(sampling_rate_hz=48000)


@pytest.fixture
def hifi() -> Iterator[HiFiEmulator]:
    with HiFiEmulator() as emulator:
        yield emulator


def test_waveforms_load_over_the_modules_own_port(hifi: HiFiEmulator) -> None:
    waves = task_waveforms(SETTINGS)
    with HiFiModule(hifi.port) as module:
        sound = HiFiSound(module, SETTINGS)
        sound.load(waves)
        assert module.sampling_rate == 48000
    assert hifi.sampling_rate == 48000
    for k, name in enumerate(SOUND_NAMES):
        loaded = hifi.waveform(k)
        assert loaded is not None
        np.testing.assert_array_equal(loaded.samples, np.round(waves[name] * 32767).astype(np.int16))
    assert len(hifi.waveform(2).samples) == round(0.1 * 48000)  # type: ignore[union-attr]
    assert sound.play_action("go_cue") == {"HiFi1": [ord("P"), 2]}
    with pytest.raises(KeyError, match="loaded: tone_high, tone_low, go_cue"):
        sound.play_action("tone_middle")


def test_tones_ramp_in_and_out() -> None:
    wave = tone(SETTINGS.go_cue, 48000, amplitude=0.5, ramp_s=0.005)
    assert len(wave) == 4800 and wave[0] == 0 and abs(wave[-1]) < 1e-3
    assert np.abs(wave[:24]).max() < 0.02 < 0.49 < np.abs(wave[2000:2100]).max() <= 0.5
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * 48000 / len(wave) == pytest.approx(3700, abs=10)


def test_a_waveform_too_long_is_refused_in_one_sentence(hifi: HiFiEmulator) -> None:
    with HiFiModule(hifi.port) as module:
        too_long = np.zeros(module.info.max_samples_per_waveform + 1)
        with pytest.raises(HiFiError, match=r"^waveform 0 is too long: 5760001 samples .* at most 5760000$"):
            module.load(0, too_long)
        with pytest.raises(HiFiError, match="outside -1..1"):
            module.load(0, np.full(10, 1.5))
    assert hifi.waveform(0) is None


def test_states_play_sounds_recorded_at_the_state_start(hifi: HiFiEmulator) -> None:
    with HiFiModule(hifi.port) as module:
        sound = HiFiSound(module, SETTINGS)
        sound.load(task_waveforms(SETTINGS))
    sm = StateMachine()
    sm.add_state("ITI", timer_s=0.02, transitions={"Tup": "SamplePeriod"})
    sm.add_state("SamplePeriod", timer_s=0.05, transitions={"Tup": "ResponseCue"},
                 actions=sound.play_action("tone_high"))
    sm.add_state("ResponseCue", timer_s=0.1, transitions={"HiFi1_1": "Answer", "Tup": ">exit"},
                 actions=sound.play_action("go_cue"))
    sm.add_state("Answer", timer_s=0.01, transitions={"Tup": ">exit"}, actions=sound.stop_action())
    with EmulatorServer(firmware=23, model="r2", speed=SPEED) as server:
        server.world.attach_module(1, hifi)
        with BpodClient(server.port) as client:
            assert client.modules[0] is not None and client.modules[0].name == "HiFi"
            assert client.events is not None and client.events.allocation[0] == 20
            result = client.run_trial(sm, timeout_s=5)
    starts = {v.name: v.start_s for v in result.states}
    start_us = round(result.start_s * 1e6)
    assert [(p.index, p.session_us) for p in hifi.plays] == [
        (0, start_us + round(starts["SamplePeriod"] * 1e6)),
        (2, start_us + round(starts["ResponseCue"] * 1e6)),
    ]
    assert hifi.plays[1].duration_s == pytest.approx(0.1)
    # The module answers each play with byte 1: HiFi1_1 one cycle after the go cue started.
    assert starts["Answer"] - starts["ResponseCue"] == pytest.approx(1e-4)
    assert len(hifi.stops) == 1
