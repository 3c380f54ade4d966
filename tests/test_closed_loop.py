"""Closed loop: the controller's rules on hand-made numbers, its two outputs, and a decoder-gated trial on the
real Bpod emulator (firmware 23) whose delay is ended by the online module's APP-port byte (and, through a
stand-in for the rig's control socket, by a USB soft code)."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from hardware.bpod.client import BpodClient
from hardware.bpod.emulator import EmulatorServer
from hardware.bpod.trial import TrialResult
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from hardware.sim.world_coupling import CYCLE_S, WorldCoupling
from online.closed_loop import (
    AppPortOutput,
    ClosedLoopController,
    ClosedLoopOutputError,
    Decision,
    SoftCodeOutput,
)
from online.config import PipelineConfig
from online.decoding import Boundary, CodingDirection
from online.outputs import PipelineOutput
from online.pipeline import OnlinePipeline
from online.rois import RoiSet
from online.settings import DecoderSettings, OnlineSettings, RegistrationSettings
from online.store import SessionOutputs, read_jsonl
from online.wire import FrameHeader
from protocols.contexts import contexts_from_settings
from protocols.directional_licking import (
    DECODER_WAIT_STATE,
    DecoderGate,
    TaskParameters,
    build_trial,
)
from protocols.selection import TrialSpec
from protocols.settings import TimingSettings
from rig.settings import Settings

# -- the controller on hand-made numbers ------------------------------------------------------------------

CD = CodingDirection(np.array([1.0, 0.0, 0.0]), Boundary(1.0, -1.0, 0.25, 0.25, 0.0), "tactile")
RIGHT, LEFT, UNSURE = np.array([0.5, 3.0, 1.0]), np.array([-0.5, 0.0, 0.0]), np.array([0.04, 0.0, 0.0])


class FakeOutput:
    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[int, int]] = []
        self.fail = fail

    def send(self, code: int, trial: int) -> None:
        if self.fail:
            raise ClosedLoopOutputError("port gone")
        self.sent.append((code, trial))

    def event_name(self, code: int) -> str:
        return f"APP_SoftCode{code}"

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def controller(output: FakeOutput | None = None, clock_ns: Callable[[], int] = time.time_ns,
               threshold: float = 0.8) -> tuple[ClosedLoopController, list[dict[str, Any]]]:
    log: list[dict[str, Any]] = []
    c = ClosedLoopController(output if output is not None else FakeOutput(), confidence_threshold=threshold,
                             max_delay_s=1.0, window_s=0.3, on_decision=log.append, clock_ns=clock_ns,
                             codes={"left": 2, "right": 1})
    return c, log


def frames(c: ClosedLoopController, trial: int, times: list[float], values: np.ndarray,
           t_ns: int | None = None) -> list[Decision]:
    out = []
    for k, t in enumerate(times):
        d = c.on_frame(trial, t, values, frame_index=k, frame_start_s=t - 0.05, frame_end_s=t + 0.05,
                       t_ns=time.time_ns() if t_ns is None else t_ns, cd=("tactile", CD))
        if d is not None:
            out.append(d)
    return out


def test_a_trial_that_is_not_gated_gets_no_decision() -> None:
    c, log = controller()
    c.on_state(1, "DelayPeriod", 1.0)
    assert frames(c, 1, [1.05, 1.15, 1.25, 1.35, 1.45], RIGHT) == []
    assert c.on_trial_end(1, {"bpod": {"Events": {}}}) is None and log == [] and c.output.sent == []  # type: ignore


def test_one_decision_once_the_gate_is_open_and_the_window_full_and_where_it_landed() -> None:
    c, log = controller()
    c.on_state(1, "TrigTrialStart", 0.0)
    c.on_state(1, "DelayPeriod", 1.0)
    assert frames(c, 1, [0.95], LEFT) == []  # before the delay: not in the window
    assert frames(c, 1, [1.05, 1.15], RIGHT) == []  # gate still closed
    decision = c.on_state(1, DECODER_WAIT_STATE, 1.2)  # the gate opens: decide on the frames so far
    assert decision is not None and decision.side == "right" and decision.code == 1
    assert decision.window_frames == 2 and decision.frame_index == 1 and decision.confidence > 0.98
    assert decision.bpod_event == "APP_SoftCode1" and decision.host_latency_ms >= 0
    assert frames(c, 1, [1.25, 1.35], LEFT) == []  # one decision per trial
    assert c.output.sent == [(1, 1)]  # type: ignore[union-attr]
    info = c.on_trial_end(1, {"bpod": {"Events": {"APP_SoftCode1": [1.2004], "Tup": [0.01]}}})
    assert info is not None and info["sent"] and info["landed_bpod_s"] == pytest.approx(1.2004)
    assert info["frame_end_to_landing_ms"] == pytest.approx((1.2004 - 1.2) * 1e3)  # frame 1.1-1.2 s
    assert [entry["kind"] for entry in log] == ["sent", "landed"]
    assert c.stats()["decisions"] == 1 and c.stats()["gated_trials"] == 1


def test_low_confidence_and_stale_frames_send_nothing_and_say_why() -> None:
    c, log = controller()
    c.on_state(2, "DelayPeriod", 1.0)
    c.on_state(2, DECODER_WAIT_STATE, 1.6)
    assert frames(c, 2, [1.05, 1.15, 1.25, 1.35], UNSURE) == []
    info = c.on_trial_end(2, {"bpod": {"Events": {}}})
    assert info is not None and not info["sent"] and "below threshold" in info["reason"]
    c.on_state(3, "DelayPeriod", 1.0)
    c.on_state(3, DECODER_WAIT_STATE, 1.6)
    old = time.time_ns() - 3_000_000_000  # the frames were sent 3 s ago: beyond max_delay_s
    assert frames(c, 3, [1.05, 1.15, 1.25], RIGHT, t_ns=old) == []
    info = c.on_trial_end(3, {"bpod": {"Events": {}}})
    assert info is not None and "too late" in info["reason"] and c.stale == 2
    assert [entry["kind"] for entry in log] == ["none", "none"] and c.output.sent == []  # type: ignore


def test_an_early_lick_restarts_the_window() -> None:
    c, _ = controller()
    c.on_state(4, "DelayPeriod", 1.0)
    frames(c, 4, [1.05, 1.15], LEFT)
    c.on_state(4, "EarlyLickDelay", 1.2)
    c.on_state(4, "DelayPeriod", 1.25)
    c.on_state(4, DECODER_WAIT_STATE, 1.8)
    assert frames(c, 4, [1.25], RIGHT) == []  # one frame since the restart: window not full
    (decision,) = frames(c, 4, [1.35, 1.45], RIGHT)
    assert decision.side == "right" and decision.window_frames == 2 and decision.frame_index == 0


def test_a_failed_send_is_logged_once_and_not_retried() -> None:
    c, log = controller(FakeOutput(fail=True))
    c.on_state(5, "DelayPeriod", 1.0)
    c.on_state(5, DECODER_WAIT_STATE, 1.0)
    (decision,) = frames(c, 5, [1.05, 1.15, 1.25], LEFT)
    assert decision.error == "port gone" and decision.code == 2
    info = c.on_trial_end(5, {"bpod": {"Events": {"APP_SoftCode2": [1.3]}}})
    assert info is not None and info["sent"] is False
    assert [entry["kind"] for entry in log] == ["failed", "not_landed"] and c.errors == 1


def test_app_port_output_writes_one_raw_byte() -> None:
    master, slave = os.openpty()
    try:
        out = AppPortOutput(os.ttyname(slave))
        out.send(1, trial=3)
        assert os.read(master, 16) == b"\x01" and out.event_name(1) == "APP_SoftCode1"
        with pytest.raises(ClosedLoopOutputError, match="out of range"):
            out.send(15, trial=3)
        out.close()
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(ClosedLoopOutputError, match="cannot open the Bpod APP port"):
        AppPortOutput("/dev/nonexistent-app-port")


def test_soft_code_output_asks_the_rig_over_its_control_socket() -> None:
    context = zmq.Context.instance()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind("tcp://127.0.0.1:*")
    out = SoftCodeOutput(rep.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        out.send(1, trial=7)
        assert rep.poll(2000)
        request = json.loads(rep.recv())
        assert request["command"] == "soft-code" and request["number"] == 1 and request["trial"] == 7
        assert request["source"] == "online" and isinstance(request["t_ns"], int)
        rep.send(json.dumps({"ok": False, "error": "trial 7 has ended"}).encode())
        deadline = time.monotonic() + 2
        while out.refused == 0 and time.monotonic() < deadline:
            out.poll()
            time.sleep(0.005)
        assert out.refused == 1 and out.event_name(1) == "SoftCode1"
        out.send(1, trial=8)  # nobody answers this one: the next send reconnects instead of blocking
        assert rep.poll(2000)
        rep.recv()
        out.send(1, trial=9)
        assert out.unanswered == 1
    finally:
        out.close()
        rep.close()


# -- a decoder-gated trial on the emulator -------------------------------------------------------------

SIZE, N_NEURONS, RATE = 128, 60, 10.0
SAMPLE_S, TRAIN_DELAY_S = 0.8, 1.0
GATE = (0.6, 3.0)  # min_s, max_s
TRIAL_OFFSET = 100  # the live trial's number for the pipeline (training used 1..)


class LockedSim:
    """The microscope, shared between the emulator thread (WorldCoupling) and the test thread (frames)."""

    def __init__(self, sim: SimMicroscope) -> None:
        self.sim = sim
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.sim, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                return method(*args, **kwargs)

        return locked


def sim_config() -> MicroscopeConfig:
    return MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=N_NEURONS, frame_rate_hz=RATE, seed=2,
                            context_overlap=0.0, frames_per_acquisition=int(3.0 * RATE))


def trained_pipeline(closed_loop: ClosedLoopController) -> OnlinePipeline:
    """A pipeline whose tactile decoder learned from 24 simulated trials (ungated, same epochs as live)."""
    sim = SimMicroscope(sim_config())
    online = OnlineSettings(registration=RegistrationSettings(reference_frames=20),
                            decoder=DecoderSettings(min_trials_per_side=5))
    pipeline = OnlinePipeline(PipelineConfig(online, frame_rate_hz=RATE),
                              rois=RoiSet.from_masks((SIZE, SIZE), sim.masks), session="s",
                              closed_loop=closed_loop)
    rng = np.random.default_rng(5)
    delay_on, go = 0.01 + SAMPLE_S, 0.01 + SAMPLE_S + TRAIN_DELAY_S
    t, seq = 0.5, 0
    for trial in range(1, 25):
        side = str(rng.choice(["left", "right"]))
        sim.start_trial(t, "tactile", side, {"sample": 0.01, "delay": delay_on, "go": go}, trial=trial)
        for f in sim.frames_until(t + 3.0 - 1e-9):
            h = FrameHeader(seq, f.frame_index, f.timestamp_s, 0.0, trial, 0, 0, SIZE, SIZE, "<i2",
                            time.time_ns())
            pipeline.process_frame(h, f.pixels)
            seq += 1
        pipeline.on_trial_end({"trial": trial, "context": "tactile", "side": side, "outcome": "hit",
                               "bpod": {"States": {"SamplePeriod": [[0.01, delay_on]],
                                                   "DelayPeriod": [[delay_on, go]],
                                                   "ResponseCue": [[go, go + 0.1]]}}})
        t += 3.0
    pipeline.flush()
    assert pipeline.decoders["tactile"].ready("delay")
    return pipeline


def gated_trial(side: str, event: str) -> Any:
    settings = Settings()
    stage = {s.name: s for s in settings.task.stages}["full"]
    timing = TimingSettings(
        trig_trial_start=0.01, pre_sample=0.0, sample=SAMPLE_S, early_lick_sample=0.05,
        early_lick_delay=0.05, response_cue=0.1, answer_period=0.2, reward_consumption=0.1, no_response=0.01,
        stop_licking=0.1, inter_trial_interval=0.0, trial_end=0.01)
    params = TaskParameters(timing, settings.wiring, 0.03, 0.03,
                            DecoderGate(event, *GATE))
    context = contexts_from_settings(settings.contexts)["tactile"]
    spec = TrialSpec(trial_number=1, side=side, context=context, stage=stage, mode="antibias",  # type: ignore
                     free_drop=False)
    return build_trial(spec, params)


@dataclass
class LiveTrial:
    result: TrialResult
    start_cycle: int
    write_cycles: list[tuple[int, int]]
    decisions: list[Decision]
    record: dict[str, Any]


class CycleStampedAppPort(AppPortOutput):
    """The APP-port output, noting the emulator's cycle right after each byte is written."""

    def __init__(self, path: str, server: EmulatorServer) -> None:
        super().__init__(path)
        self.server = server
        self.write_cycles: list[tuple[int, int]] = []

    def send(self, code: int, trial: int) -> None:
        before = self.server.virtual_cycle()  # a busy host may deschedule us between write and read-back,
        super().send(code, trial)  # so the write happened somewhere in [before, after]
        self.write_cycles.append((before, self.server.virtual_cycle()))


def run_live_trial(server: EmulatorServer, client: BpodClient, pipeline: OnlinePipeline, side: str,
                   event: str, context: str = "tactile") -> LiveTrial:
    """What the rig and the frame source do for one trial, in one loop: state entries to the pipeline,
    frames to the pipeline as soon as they end (the microscope follows the emulator's clock), the record at
    the end."""
    sim = LockedSim(SimMicroscope(sim_config()))
    coupling = WorldCoupling(sim, server.world)  # type: ignore[arg-type]
    states: queue.Queue[tuple[str, float]] = queue.Queue()
    client.on_state = lambda state, time_s: states.put((state, time_s))
    coupling.announce_trial(context, side)
    number = TRIAL_OFFSET + client.trials_started + 1
    pipeline.on_trial_start({"trial": number, "context": context})
    decisions: list[Decision] = []
    started = threading.Event()
    server.world.add_trial_listener(lambda r: started.set() if r.kind == "start" else None)
    client.start_trial(gated_trial(side, event))
    assert started.wait(2)
    start_cycle = server.world.trials[-1].cycle
    frame_cycles = round(1 / RATE / CYCLE_S)
    seq = 0
    result = None
    try:
        while result is None:
            while not states.empty():
                state, time_s = states.get()
                pipeline.on_state({"trial": number, "state": state, "time_s": time_s})
            now = server.world.now_cycle
            for f in coupling.frames_until_cycle(now - frame_cycles):  # frames whose last line is scanned
                trial = TRIAL_OFFSET + (f.trial or 0)
                header = FrameHeader(seq, f.frame_index, f.timestamp_s, 0.0, trial, 0, 0, SIZE, SIZE, "<i2",
                                     time.time_ns())
                seq += 1
                out: PipelineOutput = pipeline.process_frame(header, f.pixels)
                assert out.traces
            result = client.poll_trial(0.002)
    finally:
        coupling.close()
        client.on_state = None
    data = result.to_dict()
    record = {"trial": number, "context": context, "side": side, "outcome": "no_response",
              "bpod": data}
    decoding = pipeline.on_trial_end(record).trials + pipeline.flush().trials
    assert [d.result.trial for d in decoding] == [number]
    closed = decoding[0].result.closed_loop
    assert closed is not None
    if closed.get("sent"):
        decisions.append(Decision(**{k: closed[k] for k in Decision.__dataclass_fields__}))
    output = pipeline.closed_loop.output if pipeline.closed_loop else None
    cycles = list(getattr(output, "write_cycles", []))
    return LiveTrial(result, start_cycle, cycles, decisions, decoding[0].record)


@pytest.fixture
def emulator() -> Iterator[tuple[EmulatorServer, BpodClient]]:
    with EmulatorServer(firmware=23) as server:
        client = BpodClient(server.port)
        client.connect()
        try:
            yield server, client
        finally:
            client.close()


def test_the_app_port_byte_ends_the_gated_delay_in_the_cycle_it_landed(
        emulator: tuple[EmulatorServer, BpodClient], tmp_path: Path) -> None:
    server, client = emulator
    assert server.app_port is not None
    outputs = SessionOutputs(tmp_path)
    output = CycleStampedAppPort(server.app_port, server)
    loop = ClosedLoopController(output, confidence_threshold=0.75, max_delay_s=1.0, window_s=0.6,
                                on_decision=outputs.append_decision)
    pipeline = trained_pipeline(loop)
    live = run_live_trial(server, client, pipeline, "right", "APP_SoftCode1")
    outputs.close()
    (decision,) = live.decisions
    (landed,) = live.result.event_times("APP_SoftCode1")
    ((before_write, after_write),) = live.write_cycles
    landed_cycle = live.start_cycle + round(landed / CYCLE_S)
    # the byte became APP_SoftCode1 in the cycle the emulator read it: at most ~2 ms after the write
    assert before_write <= landed_cycle <= after_write + 20, (before_write, after_write, landed_cycle)
    wait = live.result.visits(DECODER_WAIT_STATE)
    assert len(wait) == 1 and wait[0].end_s == pytest.approx(landed)  # the event ended the gated delay ...
    assert live.result.visits("ResponseCue")[0].start_s == pytest.approx(landed)  # ... and the go cue came
    delay_on = live.result.visits("DelayPeriod")[-1].start_s
    assert delay_on + GATE[0] - 1e-6 <= landed < delay_on + GATE[1]
    assert decision.side == "right" and decision.confidence >= 0.75 and decision.trial == TRIAL_OFFSET + 1
    assert decision.landed_bpod_s == pytest.approx(landed)
    assert 0 < decision.frame_end_to_landing_ms < 50  # frame's last line -> event, on the trial clock
    assert decision.frame_end_s <= landed and decision.host_latency_ms < 50
    log = read_jsonl(tmp_path / "decisions.jsonl")
    assert [line["kind"] for line in log] == ["sent", "landed"]
    assert log[1]["landed_bpod_s"] == pytest.approx(landed) and log[0]["frame_index"] == decision.frame_index
    assert live.record["closed_loop"]["landed_bpod_s"] == pytest.approx(landed)


def test_a_soft_code_through_the_rigs_control_socket_ends_the_gated_delay(
        emulator: tuple[EmulatorServer, BpodClient]) -> None:
    server, client = emulator
    context = zmq.Context.instance()
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind("tcp://127.0.0.1:*")
    requests: list[dict[str, Any]] = []
    stop = threading.Event()

    def rig_control() -> None:  # what the lead's `soft-code` command does in rig/session.py
        while not stop.is_set():
            if rep.poll(20):
                request = json.loads(rep.recv())
                requests.append(request)
                client.send_soft_code(request["number"])
                rep.send(json.dumps({"ok": True}).encode())
        rep.close()

    thread = threading.Thread(target=rig_control, daemon=True)
    thread.start()
    output = SoftCodeOutput(rep.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        loop = ClosedLoopController(output, confidence_threshold=0.75, max_delay_s=1.0, window_s=0.6)
        pipeline = trained_pipeline(loop)
        live = run_live_trial(server, client, pipeline, "left", "SoftCode1")
    finally:
        stop.set()
        thread.join(2)
        output.close()
    (decision,) = live.decisions
    (landed,) = live.result.event_times("SoftCode1")
    assert requests[0]["command"] == "soft-code" and requests[0]["trial"] == TRIAL_OFFSET + 1
    assert live.result.visits(DECODER_WAIT_STATE)[0].end_s == pytest.approx(landed)
    assert decision.side == "left" and decision.landed_bpod_s == pytest.approx(landed)
    assert 0 < decision.frame_end_to_landing_ms < 50
