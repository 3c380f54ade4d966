"""Every path of the directional-licking trial, run on the emulated Bpod with scripted licks.

The real task (`build_trial`) runs on the real emulator through the real client. Licks are scheduled
from a trial listener at the trial's 'start' record, so they land on exact cycles relative to trial
start whatever the host's speed; every duration is therefore checked to the cycle (100 us), and the
output lines (valves, cue lines, go cue, imaging trigger) are read back from `world.outputs`.

Trial-relative cycle 0 is the cycle the trial starts in (TrigTrialStart is entered, its outputs
switch on); an input scheduled at cycle k is an event at k * 100 us on the trial clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import serial

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer, TrialRecord
from hardware.bpod.trial import TrialResult
from protocols.contexts import Side, contexts_from_settings, other_side
from protocols.directional_licking import (
    BOTH_REWARDED_STATE,
    DECODER_WAIT_STATE,
    STATES,
    DecoderGate,
    TaskParameters,
    build_trial,
)
from protocols.outcome import ScoredTrial, score_trial
from protocols.selection import TrialSpec
from protocols.settings import TrainingStage
from protocols.trial_bitcode import decode_trial_bitcode
from rig.session import task_parameters
from rig.settings import load_settings

SPEED = 50.0
LICK_CYCLES = 30  # 3 ms tongue contact
TRIAL_TIMEOUT_S = 10.0  # host seconds; the longest trial here is ~12 s of device time = 0.25 s at SPEED

SETTINGS = load_settings()
PARAMS = task_parameters(SETTINGS)
CONTEXTS = contexts_from_settings(SETTINGS.contexts)
FULL: TrainingStage = next(stage for stage in SETTINGS.task.stages if stage.name == "full")
NO_SAMPLE_ENFORCEMENT = FULL.model_copy(update={"sample_enforcement": False})
W, T = PARAMS.wiring, PARAMS.timing
LICK: dict[Side, str] = {"left": W.left_lick, "right": W.right_lick}
VALVE: dict[Side, str] = {"left": W.left_valve, "right": W.right_valve}


def cycles(seconds: float) -> int:
    """Seconds to 100 us device cycles, rounded to the nearest cycle as the compiler does."""
    return round(seconds * 10_000)


# Expected durations in cycles, from the settings and the full stage.
TRIG = cycles(T.trig_trial_start)
PRE = cycles(T.pre_sample)
SAMPLE = cycles(T.sample)
EARLY_SAMPLE = cycles(T.early_lick_sample)
DELAY = cycles(FULL.delay_s)
EARLY_DELAY = cycles(T.early_lick_delay)
CUE = cycles(T.response_cue)
ANSWER = cycles(T.answer_period)
CONSUME = cycles(T.reward_consumption)
TIMEOUT = cycles(FULL.timeout_s)
NO_RESPONSE = cycles(T.no_response)
STOP = cycles(T.stop_licking)
ITI = cycles(T.inter_trial_interval)
END = cycles(T.trial_end)
VALVE_CYCLES: dict[Side, int] = {"left": cycles(PARAMS.left_valve_s), "right": cycles(PARAMS.right_valve_s)}

# Onsets (trial-relative cycles) of a trial without early licks or free drop.
SAMPLE_ON = TRIG + PRE  # the baseline: sample onset after the trigger
DELAY_ON = SAMPLE_ON + SAMPLE
GO_ON = DELAY_ON + DELAY
ANSWER_ON = GO_ON + CUE
RT = ANSWER // 4  # cycles from answer-period onset to the scripted answer lick


# -- running one trial ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished trial: the client's record, and the world's view of it in engine cycles."""

    result: TrialResult
    start: int  # engine cycle of the trial's 'start' record
    end: int  # engine cycle of its 'end' record
    outputs: list[tuple[int, str, int]]  # (trial-relative cycle, channel, value), in order

    @property
    def sequence(self) -> list[str]:
        return [visit.name for visit in self.result.states]

    @property
    def visits(self) -> list[tuple[str, int, int]]:
        """(state, entry cycle, exit cycle), trial-relative."""
        return [(v.name, cycles(v.start_s), cycles(v.end_s)) for v in self.result.states]

    def spans(self, state: str) -> list[tuple[int, int]]:
        return [(start, end) for name, start, end in self.visits if name == state]

    def line(self, channel: str) -> list[tuple[int, int]]:
        """Changes of one output line as (trial-relative cycle, value)."""
        return [(cycle, value) for cycle, name, value in self.outputs if name == channel]

    def event_cycles(self, name: str) -> list[int]:
        return [cycles(t) for t in self.result.event_times(name)]

    def score(self, trial: TrialSpec) -> ScoredTrial:
        return score_trial(self.result.to_dict(), side=trial.side, context=trial.context.name,
                           wiring=SETTINGS.wiring, trial_number=trial.trial_number)


Rig = tuple[EmulatorServer, BpodClient]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with EmulatorServer(firmware=23, speed=SPEED) as server, BpodClient(server.port) as client:
        yield server, client


def make_trial(side: Side, context: str = "tactile", stage: TrainingStage = FULL, free_drop: bool = False,
               mode: str | None = None) -> TrialSpec:
    return TrialSpec(trial_number=1, side=side, context=CONTEXTS[context], stage=stage,
                     mode=mode or stage.selection, free_drop=free_drop)  # type: ignore[arg-type]


def run(rig: Rig, trial: TrialSpec, licks: Sequence[tuple[Side, int]] = (), params: TaskParameters = PARAMS,
        during: Callable[[EmulatorServer, BpodClient], None] | None = None) -> Run:
    """Run `trial`; each lick (side, cycle) is a LICK_CYCLES pulse at that trial-relative cycle."""
    server, client = rig
    marks: dict[str, int] = {}

    def listener(record: TrialRecord) -> None:
        if record.kind == "start" and "start" not in marks:
            marks["start"] = record.cycle
            for side, offset in licks:
                server.world.pulse_input(LICK[side], LICK_CYCLES, at_cycle=record.cycle + offset)
        elif record.kind == "end" and "start" in marks and "end" not in marks:
            marks["end"] = record.cycle

    assert not client.trial_running
    server.world.add_trial_listener(listener)
    try:
        client.start_trial(build_trial(trial, params))
        if during is not None:
            during(server, client)
        result = client.wait_for_trial(timeout_s=TRIAL_TIMEOUT_S)
    finally:
        server.world.remove_trial_listener(listener)
    start, end = marks["start"], marks["end"]
    outputs = [(r.cycle - start, r.channel, r.value) for r in server.world.iter_outputs()
               if start <= r.cycle <= end]
    assert result.exit_cycle == end - start  # the host's and the world's clocks agree
    assert not result.missed_cycles and result.confirmed is True
    return Run(result, start, end, outputs)


def durations(run: Run) -> list[tuple[str, int]]:
    return [(name, end - start) for name, start, end in run.visits]


# -- answered and unanswered trials ------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_hit(rig: Rig, side: Side) -> None:
    trial = make_trial(side)
    lick = ANSWER_ON + RT
    r = run(rig, trial, [(side, lick)])
    expected = [("TrigTrialStart", TRIG), ("PreSamplePeriod", PRE), ("SamplePeriod", SAMPLE),
                ("DelayPeriod", DELAY), ("ResponseCue", CUE), ("AnswerPeriod", RT),
                ("Reward", VALVE_CYCLES[side]), ("RewardConsumption", CONSUME), ("StopLicking", STOP),
                ("InterTrialInterval", ITI), ("TrialEnd", END)]
    assert durations(r) == expected
    assert r.sequence == [s for s in STATES if s in r.sequence]  # visited in the order build_trial adds them
    assert r.result.exit_cycle == sum(n for _, n in expected)
    assert r.event_cycles(f"{LICK[side]}In") == [lick]
    assert r.event_cycles(f"{LICK[side]}Out") == [lick + LICK_CYCLES]
    # The valve of the correct side is open for exactly the calibrated valve time, the other stays shut.
    assert r.line(VALVE[side]) == [(lick, 1), (lick + VALVE_CYCLES[side], 0)]
    assert r.line(VALVE[other_side(side)]) == []
    scored = r.score(trial)
    assert (scored.outcome, scored.licked_side, scored.rewarded) == ("hit", side, True)
    assert (scored.early_lick, scored.early_licks, scored.free_drop) == (False, 0, False)
    assert scored.reaction_time_s == pytest.approx((lick - GO_ON) * 1e-4, abs=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
def test_error_goes_to_the_stage_timeout_without_water(rig: Rig, side: Side) -> None:
    trial = make_trial(side)
    wrong = other_side(side)
    lick = ANSWER_ON + RT
    r = run(rig, trial, [(wrong, lick)])
    assert durations(r) == [("TrigTrialStart", TRIG), ("PreSamplePeriod", PRE), ("SamplePeriod", SAMPLE),
                            ("DelayPeriod", DELAY), ("ResponseCue", CUE), ("AnswerPeriod", RT),
                            ("TimeOut", TIMEOUT), ("StopLicking", STOP), ("InterTrialInterval", ITI),
                            ("TrialEnd", END)]
    assert r.line(W.left_valve) == [] and r.line(W.right_valve) == []
    scored = r.score(trial)
    assert (scored.outcome, scored.licked_side, scored.rewarded) == ("error", wrong, False)
    assert scored.reaction_time_s == pytest.approx((lick - GO_ON) * 1e-4, abs=1e-6)


def test_no_lick_is_no_response_after_the_whole_answer_period(rig: Rig) -> None:
    trial = make_trial("left")
    r = run(rig, trial)
    stop_on = ANSWER_ON + ANSWER + NO_RESPONSE
    iti_on = stop_on + STOP
    assert r.visits == [
        ("TrigTrialStart", 0, TRIG), ("PreSamplePeriod", TRIG, SAMPLE_ON),
        ("SamplePeriod", SAMPLE_ON, DELAY_ON),
        ("DelayPeriod", DELAY_ON, GO_ON), ("ResponseCue", GO_ON, ANSWER_ON),
        ("AnswerPeriod", ANSWER_ON, ANSWER_ON + ANSWER),
        ("NoResponse", ANSWER_ON + ANSWER, stop_on), ("StopLicking", stop_on, iti_on),
        ("InterTrialInterval", iti_on, iti_on + ITI), ("TrialEnd", iti_on + ITI, iti_on + ITI + END),
    ]
    assert r.line(W.left_valve) == [] and r.line(W.right_valve) == []
    scored = r.score(trial)
    assert (scored.outcome, scored.licked_side, scored.reaction_time_s, scored.rewarded) == (
        "no_response", None, None, False)


def test_a_lick_during_the_go_cue_does_not_answer(rig: Rig) -> None:
    trial = make_trial("right")
    lick = GO_ON + CUE // 2
    r = run(rig, trial, [("right", lick)])
    assert r.event_cycles(f"{W.right_lick}In") == [lick]
    assert r.spans("ResponseCue") == [(GO_ON, ANSWER_ON)]
    assert r.spans("AnswerPeriod") == [(ANSWER_ON, ANSWER_ON + ANSWER)]
    assert r.sequence[6:] == ["NoResponse", "StopLicking", "InterTrialInterval", "TrialEnd"]
    assert r.score(trial).outcome == "no_response"


# -- baseline and inter-trial interval ---------------------------------------------------------------------


@pytest.mark.parametrize(("pre_sample", "iti"), [(None, None), (0.5, 2.0)], ids=["defaults", "custom"])
def test_pre_sample_baseline_and_inter_trial_interval_on_the_bpod_clock(
        rig: Rig, pre_sample: float | None, iti: float | None) -> None:
    timing = T if pre_sample is None else T.model_copy(update={"pre_sample": pre_sample,
                                                                "inter_trial_interval": iti})
    lick = TRIG + 100  # a lick in the baseline
    r = run(rig, make_trial("left"), [("left", lick)], params=dataclasses.replace(PARAMS, timing=timing))
    seconds = {v.name: (v.start_s, v.end_s) for v in r.result.states}
    trigger, baseline, sample = seconds["TrigTrialStart"], seconds["PreSamplePeriod"], seconds["SamplePeriod"]
    assert r.result.states[0].name == "TrigTrialStart" and trigger[0] == 0  # the trial starts at the trigger
    assert baseline == pytest.approx((timing.trig_trial_start, timing.trig_trial_start + timing.pre_sample))
    assert sample[0] - trigger[0] == pytest.approx(timing.trig_trial_start + timing.pre_sample, abs=1e-4)
    if pre_sample is None:
        assert sample[0] == pytest.approx(1.57, abs=1e-4)  # the paper's sample onset after the trigger
    assert r.event_cycles(f"{W.left_lick}In") == [lick] and "EarlyLickSample" not in r.sequence  # ignored
    assert r.line(W.imaging_trigger) == [(0, 1), (TRIG, 0)]  # the trigger pulse is over before the baseline
    assert r.line(W.pole)[0] == (cycles(sample[0]), 1)  # the cue comes after the baseline
    assert r.sequence[-3:] == ["StopLicking", "InterTrialInterval", "TrialEnd"]
    iti_on, iti_off = seconds["InterTrialInterval"]
    assert iti_off - iti_on == pytest.approx(timing.inter_trial_interval, abs=1e-4)
    assert seconds["StopLicking"][1] == iti_on and seconds["TrialEnd"][0] == iti_off
    assert r.result.exit_cycle == cycles(iti_off) + END  # the interval is the trial's time, not dead time


def test_trial_number_bitcode_is_read_back_from_the_line(rig: Rig) -> None:
    wiring = W.model_copy(update={"trial_bitcode": "BNC2", "pole": "PWM1"})  # the pole on a free line
    code = SETTINGS.task.trial_bitcode
    params = dataclasses.replace(PARAMS, wiring=wiring, bitcode=code)
    number = 0b1011_0000_0101_1001  # high and low bits, runs of ones and zeros
    r = run(rig, dataclasses.replace(make_trial("left"), trial_number=number), params=params)
    changes = [(cycle * 1e-4, value) for cycle, value in r.line("BNC2")]
    assert decode_trial_bitcode(changes, code) == number
    assert changes[0] == pytest.approx((T.trig_trial_start, 1))  # the start pulse follows the trigger pulse
    assert len([v for _, v in changes if v]) == 1 + bin(number).count("1")  # one rising edge per 1
    seconds = {v.name: (v.start_s, v.end_s) for v in r.result.states}
    assert seconds["SamplePeriod"][0] == pytest.approx(T.trig_trial_start + T.pre_sample, abs=1e-4)
    assert r.line(W.imaging_trigger) == [(0, 1), (TRIG, 0)]
    # without the line wired, no bitcode: the default trial goes straight into the baseline
    assert "TrialBitcodeStart" not in run(rig, make_trial("left")).sequence
    with pytest.raises(ValueError, match="does not fit in a 16-bit"):
        build_trial(dataclasses.replace(make_trial("left"), trial_number=2**16), params)


# -- early licks -------------------------------------------------------------------------------------------


def test_early_lick_in_the_sample_restarts_the_sample(rig: Rig) -> None:
    trial = make_trial("left")
    early = SAMPLE_ON + SAMPLE // 2
    restart = early + EARLY_SAMPLE
    delay_on = restart + SAMPLE
    answer_on = delay_on + DELAY + CUE
    r = run(rig, trial, [("right", early), ("left", answer_on + RT)])
    assert r.visits[:7] == [
        ("TrigTrialStart", 0, TRIG), ("PreSamplePeriod", TRIG, SAMPLE_ON), ("SamplePeriod", SAMPLE_ON, early),
        ("EarlyLickSample", early, restart),
        ("SamplePeriod", restart, delay_on), ("DelayPeriod", delay_on, delay_on + DELAY),
        ("ResponseCue", delay_on + DELAY, answer_on),
    ]
    assert r.sequence[7:] == ["AnswerPeriod", "Reward", "RewardConsumption", "StopLicking",
                              "InterTrialInterval", "TrialEnd"]
    # The cue stays on through EarlyLickSample: the pole is in from the first sample onset to the delay.
    assert r.line(W.pole) == [(SAMPLE_ON, 1), (delay_on, 0)]
    scored = r.score(trial)
    assert scored.outcome == "hit"
    assert (scored.early_lick, scored.early_lick_epochs, scored.early_licks) == (True, ("sample",), 1)
    assert scored.reaction_time_s == pytest.approx((RT + CUE) * 1e-4, abs=1e-6)


def test_sample_lick_does_nothing_without_sample_enforcement(rig: Rig) -> None:
    trial = make_trial("left", stage=NO_SAMPLE_ENFORCEMENT)
    early = SAMPLE_ON + SAMPLE // 2
    r = run(rig, trial, [("right", early)])
    assert r.event_cycles(f"{W.right_lick}In") == [early]
    assert r.visits[:4] == [("TrigTrialStart", 0, TRIG), ("PreSamplePeriod", TRIG, SAMPLE_ON),
                            ("SamplePeriod", SAMPLE_ON, DELAY_ON), ("DelayPeriod", DELAY_ON, GO_ON)]
    assert "EarlyLickSample" not in r.sequence
    scored = r.score(trial)
    assert (scored.outcome, scored.early_lick, scored.early_lick_epochs, scored.early_licks) == (
        "no_response", False, (), 0)


@pytest.mark.parametrize("stage", [FULL, NO_SAMPLE_ENFORCEMENT], ids=["full", "no-sample-enforcement"])
def test_early_lick_in_the_delay_restarts_the_delay(rig: Rig, stage: TrainingStage) -> None:
    trial = make_trial("right", stage=stage)
    early = DELAY_ON + DELAY // 3
    restart = early + EARLY_DELAY
    go_on = restart + DELAY
    r = run(rig, trial, [("left", early)])
    assert r.visits[:7] == [
        ("TrigTrialStart", 0, TRIG), ("PreSamplePeriod", TRIG, SAMPLE_ON),
        ("SamplePeriod", SAMPLE_ON, DELAY_ON),
        ("DelayPeriod", DELAY_ON, early), ("EarlyLickDelay", early, restart),
        ("DelayPeriod", restart, go_on), ("ResponseCue", go_on, go_on + CUE),
    ]
    assert r.line(W.go_cue) == [(go_on, 255 if W.go_cue.startswith("PWM") else 1), (go_on + CUE, 0)]
    assert r.line(W.pole) == [(SAMPLE_ON, 1), (DELAY_ON, 0)]  # no cue in EarlyLickDelay
    scored = r.score(trial)
    assert (scored.outcome, scored.early_lick, scored.early_lick_epochs, scored.early_licks) == (
        "no_response", True, ("delay",), 1)


# -- help and reward variants -----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_free_drop_before_the_go_cue(rig: Rig, side: Side) -> None:
    trial = make_trial(side, free_drop=True)
    drop_state = {"left": "GiveLeftDrop", "right": "GiveRightDrop"}[side]
    valve = VALVE_CYCLES[side]
    go_on = GO_ON + valve
    lick = go_on + CUE + RT
    r = run(rig, trial, [(side, lick)])
    assert r.visits[3:6] == [("DelayPeriod", DELAY_ON, GO_ON), (drop_state, GO_ON, go_on),
                             ("ResponseCue", go_on, go_on + CUE)]
    assert r.sequence[6:8] == ["AnswerPeriod", "Reward"]
    other_drop = {"GiveLeftDrop", "GiveRightDrop"} - {drop_state}
    assert not other_drop & set(r.sequence)
    # Free drop, then the earned reward: two openings of the correct valve, each the valve time.
    assert r.line(VALVE[side]) == [(GO_ON, 1), (go_on, 0), (lick, 1), (lick + valve, 0)]
    assert r.line(VALVE[other_side(side)]) == []
    scored = r.score(trial)
    assert (scored.outcome, scored.free_drop, scored.rewarded) == ("hit", True, True)
    assert scored.reaction_time_s == pytest.approx((lick - go_on) * 1e-4, abs=1e-6)


def test_free_drop_trial_without_answer_is_still_a_free_drop(rig: Rig) -> None:
    trial = make_trial("right", free_drop=True)
    r = run(rig, trial)
    assert r.spans("GiveRightDrop") == [(GO_ON, GO_ON + VALVE_CYCLES["right"])]
    assert r.line(W.right_valve) == [(GO_ON, 1), (GO_ON + VALVE_CYCLES["right"], 0)]
    scored = r.score(trial)
    assert (scored.outcome, scored.free_drop, scored.rewarded) == ("no_response", True, False)


def test_both_rewarded_mode_rewards_the_other_side(rig: Rig) -> None:
    trial = make_trial("left", mode="both_rewarded")
    lick = ANSWER_ON + RT
    r = run(rig, trial, [("right", lick)])
    assert r.visits[5:8] == [("AnswerPeriod", ANSWER_ON, lick),
                             (BOTH_REWARDED_STATE, lick, lick + VALVE_CYCLES["right"]),
                             ("RewardConsumption", lick + VALVE_CYCLES["right"],
                              lick + VALVE_CYCLES["right"] + CONSUME)]
    assert r.line(W.right_valve) == [(lick, 1), (lick + VALVE_CYCLES["right"], 0)]
    assert r.line(W.left_valve) == []
    scored = r.score(trial)
    assert (scored.outcome, scored.licked_side, scored.rewarded) == ("error", "right", True)


# -- StopLicking -------------------------------------------------------------------------------------------


def test_licks_in_stop_licking_restart_it(rig: Rig) -> None:
    trial = make_trial("left")
    lick = ANSWER_ON + RT
    stop_on = lick + VALVE_CYCLES["left"] + CONSUME
    drinking = lick + VALVE_CYCLES["left"] + CONSUME // 2  # licks while drinking change nothing
    first = stop_on + STOP // 2
    second = first + 1 + STOP - 1  # one cycle before the restarted StopLicking would end
    iti_on = second + 1 + STOP
    end_on = iti_on + ITI
    r = run(rig, trial, [("left", lick), ("left", drinking), ("right", first), ("left", second)])
    assert r.visits[6:] == [
        ("Reward", lick, lick + VALVE_CYCLES["left"]),
        ("RewardConsumption", lick + VALVE_CYCLES["left"], stop_on),
        ("StopLicking", stop_on, first), ("StopLickingReturn", first, first + 1),
        ("StopLicking", first + 1, second), ("StopLickingReturn", second, second + 1),
        ("StopLicking", second + 1, iti_on), ("InterTrialInterval", iti_on, end_on),
        ("TrialEnd", end_on, end_on + END),
    ]
    assert r.result.exit_cycle == end_on + END
    scored = r.score(trial)
    assert (scored.outcome, scored.early_lick) == ("hit", False)


# -- output lines ------------------------------------------------------------------------------------------


CUE_CASES = [
    ("tactile", "left", "pole"), ("tactile", "right", "pole"),
    ("tactile-reversed", "left", "pole"),
    ("auditory", "right", "sample_tone_high"), ("auditory", "left", "sample_tone_low"),
    ("auditory-reversed", "right", "sample_tone_low"), ("auditory-reversed", "left", "sample_tone_high"),
]


@pytest.mark.parametrize(("context", "side", "role"), CUE_CASES)
def test_sample_cue_line_is_on_during_the_sample_only(rig: Rig, context: str, side: Side, role: str) -> None:
    r = run(rig, make_trial(side, context))
    line = getattr(W, role)
    on = W.on(role)[line]
    assert r.line(line) == [(SAMPLE_ON, on), (DELAY_ON, 0)]
    for other in {"pole", "sample_tone_high", "sample_tone_low"} - {role}:
        assert r.line(getattr(W, other)) == [], other


def test_imaging_trigger_and_go_cue_lines(rig: Rig) -> None:
    r = run(rig, make_trial("right"))
    assert r.line(W.imaging_trigger) == [(0, W.on("imaging_trigger")[W.imaging_trigger]), (TRIG, 0)]
    assert r.line(W.go_cue) == [(GO_ON, W.on("go_cue")[W.go_cue]), (ANSWER_ON, 0)]
    # Nothing else moves in a trial without licks: the tactile cue, trigger and go cue are all.
    assert {channel for _, channel, _ in r.outputs} == {W.imaging_trigger, W.pole, W.go_cue}


# -- decoder-gated delay -----------------------------------------------------------------------------------


GATE = DecoderGate(event="APP_SoftCode1", min_s=0.5, max_s=10.0)
GATED = dataclasses.replace(PARAMS, decoder_gated_delay=GATE)
GATE_MIN, GATE_MAX = cycles(GATE.min_s), cycles(GATE.max_s)


def send_app_bytes(data: bytes, after_state: str) -> Callable[[EmulatorServer, BpodClient], None]:
    def during(server: EmulatorServer, client: BpodClient) -> None:
        assert server.app_port is not None
        with serial.Serial(server.app_port, timeout=1) as app:
            assert client.wait_for_state({after_state}, timeout_s=5) == after_state
            app.write(data)
            app.flush()
    return during


def test_decoder_byte_after_the_minimum_ends_the_delay(rig: Rig) -> None:
    trial = make_trial("left")
    # A byte for another code first: it is an event, not the gate's.
    r = run(rig, trial, params=GATED, during=send_app_bytes(bytes([2, 1]), DECODER_WAIT_STATE))
    wait_on = DELAY_ON + GATE_MIN
    assert r.visits[3] == ("DelayPeriod", DELAY_ON, wait_on)
    name, start, end = r.visits[4]
    assert (name, start) == (DECODER_WAIT_STATE, wait_on)
    (code1,) = r.event_cycles("APP_SoftCode1")
    (code2,) = r.event_cycles("APP_SoftCode2")
    assert code2 < code1 == end < wait_on + (GATE_MAX - GATE_MIN)  # ended by the byte, before the maximum
    assert r.visits[5] == ("ResponseCue", end, end + CUE)
    assert r.line(W.go_cue)[0] == (end, W.on("go_cue")[W.go_cue])
    assert r.sequence[6:] == ["AnswerPeriod", "NoResponse", "StopLicking", "InterTrialInterval", "TrialEnd"]


def test_decoder_gated_delay_without_a_byte_runs_to_its_maximum(rig: Rig) -> None:
    r = run(rig, make_trial("right"), params=GATED)
    assert r.visits[3:6] == [("DelayPeriod", DELAY_ON, DELAY_ON + GATE_MIN),
                             (DECODER_WAIT_STATE, DELAY_ON + GATE_MIN, DELAY_ON + GATE_MAX),
                             ("ResponseCue", DELAY_ON + GATE_MAX, DELAY_ON + GATE_MAX + CUE)]


def test_decoder_byte_before_the_minimum_is_ignored(rig: Rig) -> None:
    gate = DecoderGate(event="APP_SoftCode1", min_s=10.0, max_s=11.0)  # 0.2 s of host time to send the byte
    params = dataclasses.replace(PARAMS, decoder_gated_delay=gate)
    r = run(rig, make_trial("left"), params=params, during=send_app_bytes(bytes([1]), "DelayPeriod"))
    (code1,) = r.event_cycles("APP_SoftCode1")
    wait_on, go_on = DELAY_ON + cycles(gate.min_s), DELAY_ON + cycles(gate.max_s)
    assert DELAY_ON < code1 < wait_on
    assert r.visits[3:6] == [("DelayPeriod", DELAY_ON, wait_on), (DECODER_WAIT_STATE, wait_on, go_on),
                             ("ResponseCue", go_on, go_on + CUE)]


def test_early_lick_while_waiting_for_the_decoder_restarts_the_minimum(rig: Rig) -> None:
    wait_on = DELAY_ON + GATE_MIN
    early = wait_on + 1000
    restart = early + EARLY_DELAY
    r = run(rig, make_trial("left"), [("left", early)], params=GATED)
    assert r.visits[3:8] == [
        ("DelayPeriod", DELAY_ON, wait_on), (DECODER_WAIT_STATE, wait_on, early),
        ("EarlyLickDelay", early, restart),
        ("DelayPeriod", restart, restart + GATE_MIN),
        (DECODER_WAIT_STATE, restart + GATE_MIN, restart + GATE_MAX),
    ]
    assert r.score(make_trial("left")).early_lick_epochs == ("delay",)
