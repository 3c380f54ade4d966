"""The task's sounds through the HiFi module: the states that play them, on the Bpod clock; a session on
the simulated rig that records them per trial while the mouse hears them; settings and missing modules.

Licks are scheduled from the trial's 'start' record, so everything is checked on the device's cycles
whatever the host's speed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer, TrialRecord
from hardware.bpod.modules.hifi_emulator import HiFiEmulator
from hardware.sound import SOUND_NAMES
from protocols.contexts import contexts_from_settings
from protocols.directional_licking import EARLY_LICK_SAMPLE, RESPONSE_CUE, SAMPLE_PERIOD, build_trial
from protocols.selection import TrialSpec
from protocols.trial_record import BpodRecord
from rig.errors import UserError
from rig.free_endpoints import free_network_overrides
from rig.session import RunOptions, SessionRunner, task_parameters
from rig.settings import SettingsError, load_settings
from rig.simulated_rig import SimulatedRig
from rig.sound import cue_actions, open_hifi_sound, sound_plays
from rig.store import read_jsonl

SPEED = 50.0
CYCLE_S = 1e-4
REPO = Path(__file__).resolve().parents[1]
SETTINGS = load_settings(overrides={"sound.sampling_rate_hz": 48000})  # small waveforms, quick to load
CONTEXTS = contexts_from_settings(SETTINGS.contexts)
FULL = next(stage for stage in SETTINGS.task.stages if stage.name == "full")
SLOT = {name: k for k, name in enumerate(SOUND_NAMES)}  # the order HiFiSound loads them in


@pytest.fixture
def rig() -> Iterator[tuple[EmulatorServer, HiFiEmulator, BpodClient, dict[str, dict[str, Any]]]]:
    """A Bpod emulator with the HiFi emulator on module port 1, connected, the task's tones loaded."""
    with ExitStack() as stack:
        hifi = stack.enter_context(HiFiEmulator())
        server = EmulatorServer(firmware=23, model="r2", speed=SPEED)
        server.world.attach_module(1, hifi)  # before the client connects: the Bpod finds modules then
        stack.enter_context(server)
        client = stack.enter_context(BpodClient(server.port))
        sound = open_hifi_sound(SETTINGS.sound, client.modules, hifi.port, stack)
        yield server, hifi, client, cue_actions(sound)


def test_a_trial_plays_the_cue_tone_at_the_sample_start_and_the_go_cue_at_response_cue(rig: Any) -> None:
    server, hifi, client, actions = rig
    params = task_parameters(SETTINGS, cue_actions=actions)
    spec = TrialSpec(trial_number=1, side="right", context=CONTEXTS["auditory"], stage=FULL, mode="random")
    assert spec.cue == "tone_high"
    timing = SETTINGS.task.timing  # 0.2 s into the sample (after trigger and baseline): EarlyLickSample
    early_lick_cycle = round((timing.trig_trial_start + timing.pre_sample + 0.2) / 1e-4)

    def lick(record: TrialRecord) -> None:
        if record.kind == "start":
            server.world.pulse_input(SETTINGS.wiring.right_lick, 30, at_cycle=record.cycle + early_lick_cycle)

    server.world.add_trial_listener(lick)
    result = client.run_trial(build_trial(spec, params), timeout_s=10)
    start_us = round(result.start_s * 1e6)
    sample = [v.start_s for v in result.visits(SAMPLE_PERIOD)]
    early = result.visits(EARLY_LICK_SAMPLE)
    (go,) = result.visits(RESPONSE_CUE)
    assert len(sample) == 2 and len(early) == 1
    # On the Bpod clock: the tone at each entry of SamplePeriod, cut by EarlyLickSample, the go cue at
    # ResponseCue; and nothing played on the PWM tone lines.
    assert [(p.index, p.session_us) for p in hifi.plays] == [
        (SLOT["tone_high"], start_us + round(sample[0] * 1e6)),
        (SLOT["tone_high"], start_us + round(sample[1] * 1e6)),
        (SLOT["go_cue"], start_us + round(go.start_s * 1e6)),
    ]
    assert [t.session_us for t in hifi.stops] == [start_us + round(early[0].start_s * 1e6)]
    assert hifi.plays[0].duration_s == pytest.approx(SETTINGS.task.timing.sample)
    assert hifi.plays[2].duration_s == pytest.approx(SETTINGS.task.timing.response_cue)
    wiring = SETTINGS.wiring
    assert not [o for o in server.world.outputs
                if o.channel in (wiring.sample_tone_high, wiring.sample_tone_low, wiring.go_cue)]
    # The trial's own record says the same: plays at the states' entries, each answered one cycle later.
    played = sound_plays(build_trial(spec, params), actions, BpodRecord.from_json(result.to_dict()), "HiFi1")
    assert [(p["sound"], p["state"]) for p in played] == [
        ("tone_high", SAMPLE_PERIOD), ("tone_high", SAMPLE_PERIOD), ("go_cue", RESPONSE_CUE)]
    assert [p["onset_s"] for p in played] == pytest.approx([*sample, go.start_s])
    assert [p["ack_s"] - p["onset_s"] for p in played] == pytest.approx([CYCLE_S] * 3)
    assert played[0]["cut_s"] == pytest.approx(early[0].start_s)
    assert played[1]["cut_s"] is None and played[2]["cut_s"] is None


def test_an_auditory_session_records_its_sounds_and_the_mouse_answers_above_chance(tmp_path: Path) -> None:
    settings = load_settings(overrides={
        **free_network_overrides(), "online.enabled": False, "imaging.source": "none",
        "sim.subject.trained_context": "auditory", "task.default_context": "auditory"})
    options = RunOptions(subject="m1", trials=40, speed=100.0, data_root=tmp_path, handle_signals=False)
    result = SessionRunner(settings, options).run()
    records = list(read_jsonl(result.folder / "trials.jsonl"))
    assert len(records) == 40 and {r["context"] for r in records} == {"auditory"}
    for r in records:
        states = r["bpod"]["States"]
        sounds = r["sounds"]
        cues = [s for s in sounds if s["state"] == SAMPLE_PERIOD]
        assert {s["sound"] for s in cues} == {r["cue"]}  # the trial's own tone, and only it
        assert [s["onset_s"] for s in cues] == [visit[0] for visit in states[SAMPLE_PERIOD]]
        go = [s for s in sounds if s["sound"] == "go_cue"]
        assert [s["onset_s"] for s in go] == [visit[0] for visit in states.get(RESPONSE_CUE, [])]
        assert all(s["ack_s"] == pytest.approx(s["onset_s"] + CYCLE_S) for s in sounds)
    answered = [r for r in records if r["outcome"] in ("hit", "error")]
    hits = sum(r["outcome"] == "hit" for r in answered)
    assert len(answered) >= 30 and hits / len(answered) > 0.75  # chance is 0.5; trained, ~0.95


def test_a_naive_mouse_learns_the_auditory_context_from_the_hifi_tones(tmp_path: Path) -> None:
    # Trained on the pole only, so both tones start at chance; a fast learner shows the mapping within a
    # short session (the learning rule itself is tests/test_sim_mouse.py's).
    settings = load_settings(overrides={
        **free_network_overrides(), "online.enabled": False, "imaging.source": "none",
        "sim.mouse.learning_rate": 0.3})
    options = RunOptions(subject="m1", context="auditory", trials=40, speed=100.0, data_root=tmp_path,
                         handle_signals=False)
    SessionRunner(settings, options).run()
    state = json.loads((tmp_path / "m1" / "sim" / "subject-state.json").read_text())
    mapping = next(s["mapping"] for s in state["states"] if s["id"] == state["active"])
    assert mapping["tone_high"] > 0.8 and mapping["tone_low"] < 0.2  # normal: high -> right, low -> left


def test_a_tone_that_differs_from_its_state_is_refused() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(overrides={"sound.tone_high.duration_s": 2.0})
    # the sound section is the rig box's: the line names the rig file it came from
    assert str(error.value) == (f"{REPO / 'rig.yaml'}: sound.tone_high.duration_s = 2.0: must equal "
                                "task.timing.sample (1.3 s): SamplePeriod plays it, and the tone must end "
                                "with the state")
    derived = load_settings(overrides={"task.timing.sample": 0.8, "task.timing.response_cue": 0.2})
    assert derived.sound.tone_low.duration_s == 0.8 and derived.sound.go_cue.duration_s == 0.2
    pwm = load_settings(overrides={"sound.device": "pwm", "sound.tone_high.duration_s": 2.0})
    assert pwm.sound.tone_high.duration_s == 2.0  # a pwm rig plays no waveforms


def test_a_bpod_without_the_hifi_gets_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimulatedRig, "_plug_in_hifi", lambda self: (None, None))  # a Bpod with no module
    settings = load_settings(overrides={**free_network_overrides(), "online.enabled": False,
                                        "imaging.source": "none"})
    options = RunOptions(subject="m1", trials=3, speed=100.0, data_root=tmp_path, handle_signals=False)
    with pytest.raises(UserError) as error:
        SessionRunner(settings, options).run()
    assert error.value.problems == [
        "sound.module HiFi1: the Bpod found no such module on its module ports (Serial1, Serial2, Serial3, "
        "Serial4, Serial5); plug the HiFi into a module port and power it before the session, or set "
        "sound.device: pwm for a rig that plays its tones on the tone lines"]
    assert not list(tmp_path.glob("m1/*/trials.jsonl"))  # before any trial


def test_a_hifi_whose_usb_port_is_absent_gets_one_sentence(tmp_path: Path) -> None:
    with ExitStack() as stack:
        hifi = stack.enter_context(HiFiEmulator())
        server = EmulatorServer(firmware=23, model="r2", speed=SPEED)
        server.world.attach_module(1, hifi)
        stack.enter_context(server)
        client = stack.enter_context(BpodClient(server.port))
        missing = str(tmp_path / "ttyACM9")
        with pytest.raises(UserError) as error:
            open_hifi_sound(SETTINGS.sound, client.modules, missing, stack)
    assert len(error.value.problems) == 1
    assert error.value.problems[0].startswith(f"sound.usb_port {missing}: cannot open the HiFi module's port")
