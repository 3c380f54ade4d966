"""Online module benchmark: per-frame cost, replay speed, registration error, closed-loop latency.

1. Per plane frame, one core: 5 planes of 512x512 int16 at 30 Hz over all planes (6 Hz per plane, the
   paper's), from the simulated microscope (rendered beforehand and cycled, whole volumes), 500 ROIs per plane
   (the simulator's footprints), `OnlinePipeline.process_frame` with the settings' defaults (Gaussian peak
   fit, neuropil 0.7, 30 s dF/F baseline): per plane registration + trace extraction + dF/F, and on each
   volume's last plane trial alignment + the closed loop's running projection over all 2500 neurons on a
   trained delay CD (armed in a gated trial, never deciding). p50/p99 of wall time and of thread CPU time per
   plane frame (`p50_ms`, `p99_ms`; goal p50 <= 0.5 ms), per volume, and the share of a core at 30 Hz.
   BLAS/OpenMP are limited to one thread first.
2. Registration error on that synthetic stream: each plane's reference is built by the pipeline from its
   first `reference_frames` frames (as live); the error (shift + true displacement) is scored only on the
   frames after them, and each plane's reference's constant offset is the median error over the frames it
   was built from, so nothing is fitted on the scored frames. RMS and max (px; goal <= 0.1 px).
3. Replay, one plane: loop-mode 512x512 ScanImage files written by hardware/scanimage/writer.py from frames,
   replayed with `online.process.replay` (reading included), frames/s, four ways: the memory-mapped path
   (the files' layout allows a mapped view) and the block path (files that cannot be mapped: compressed,
   unequally spaced or foreign-byte-order pages; forced here by offering no mapped view, on the same
   files), each with the files in the page cache (hot: read once just before) and out of it (cold: fsync,
   then posix_fadvise(POSIX_FADV_DONTNEED) on each file, no root needed). The share of the files' pages
   resident just before each run (mincore) is reported, so a "cold" figure is known to be cold. One untimed
   replay of the first file goes first, so no run pays the one-off costs.
4. Closed loop, end to end, one plane: the Bpod emulator at 1x in its own process (firmware 23), the module as
   the rig starts it (`rig/online_child.py`, its own process, APP port), frames (512x512, 30 Hz, 500 neurons:
   the replay's microscope) sent over the lossless path as the simulated microscope finishes them on
   the Bpod's clock, state entries and trial records on an events PUB, as the session does. Training trials
   (ungated) until the decoder is ready, then decoder-gated trials (DecoderGate APP_SoftCode1, min 0.3 s, max
   2 s; the gate opens before the 0.6 s window is full, so the decision is made when the LAST frame of the
   window arrives). Latency = the Bpod time the event landed (trial record Events), on the host clock, minus
   the decision frame's send time (its header t_ns). Bpod -> host clock: offset = min over every state/event
   callback of (host receipt time - Bpod time); receipt is later than the event, so this overstates the
   latency by the smallest delivery delay (tens of us): the figure is conservative.

Run: `.venv/bin/python bench/online.py [--frames 3000] [--gated 40] [--only frame replay closed-loop]
[--usb-frames] [--json]`.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import percentile, print_report  # noqa: E402
from hardware.bpod.client import BpodClient  # noqa: E402
from hardware.bpod.trial import TrialEvent  # noqa: E402
from hardware.scanimage.reader import ScanImageFile  # noqa: E402
from hardware.scanimage.writer import ScanImageWriter  # noqa: E402
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope  # noqa: E402
from online.closed_loop import ClosedLoopController  # noqa: E402
from online.config import PipelineConfig  # noqa: E402
from online.decoding import ContextDecoder, EpochFeature  # noqa: E402
from online.pipeline import OnlinePipeline  # noqa: E402
from online.process import replay  # noqa: E402
from online.rois import RoiSet  # noqa: E402
from online.store import read_jsonl  # noqa: E402
from online.transport import LosslessSender, LossyPublisher  # noqa: E402
from online.wire import TOPIC_STATE, TOPIC_TRIAL, FrameHeader  # noqa: E402
from protocols.contexts import contexts_from_settings  # noqa: E402
from protocols.directional_licking import DecoderGate, TaskParameters, build_trial  # noqa: E402
from protocols.selection import TrialSpec  # noqa: E402
from protocols.settings import TimingSettings  # noqa: E402
from rig.free_endpoints import free_network  # noqa: E402
from rig.online_child import OnlineProcess  # noqa: E402
from rig.settings import Settings, parse_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = Settings()
"""The default settings: the online section and frame rate the benchmarks run with."""
log = logging.getLogger("bench.online")


class _Silent:
    name = "none"

    def send(self, code: int, trial: int) -> None: ...

    def event_name(self, code: int) -> str:
        return f"APP_SoftCode{code}"

    def poll(self) -> None: ...

    def close(self) -> None: ...


# -- 1 + 2: per-frame cost and registration error ---------------------------------------------------------


PLANES = 5
ROIS_PER_PLANE = 500
FULL_SIZE = MicroscopeConfig(n_neurons=500, neuron_radius_px=4.4, motion_px=4.0)
"""The one-plane microscope of the replay and closed-loop parts: 512x512 int16 at 30 Hz, 500 neurons."""
VOLUME = dataclasses.replace(FULL_SIZE, n_neurons=ROIS_PER_PLANE * PLANES, planes=PLANES)
"""The per-frame part's: 5 planes of 512x512 at 30 Hz over all planes (6 Hz per plane), 500 neurons each."""


def per_frame(n_frames: int, distinct: int) -> dict[str, Any]:
    """Per plane frame, as `process_frame` sees them: plane after plane, the last of a volume also aligning,
    decoding and running the closed loop over every plane's neurons."""
    planes = VOLUME.planes
    distinct = max(planes, distinct // planes * planes)  # whole volumes, cycled
    sim = SimMicroscope(dataclasses.replace(VOLUME, mode="continuous"))
    for k in range(int(distinct / 30 / 2.5) + 1):
        sim.start_trial(0.1 + 2.5 * k, "tactile", "left" if k % 2 else "right",
                        {"sample": 0.01, "delay": 0.8, "go": 1.6})
        sim.lick(0.1 + 2.5 * k + 1.7, "right")
    config = PipelineConfig(DEFAULTS.online, frame_rate_hz=VOLUME.frame_rate_hz / planes, planes=planes)
    n_ref = config.online.registration.reference_frames  # per plane
    frames = sim.frames_until((n_ref * planes + distinct) / sim.frame_rate_hz)
    pixels = [f.pixels for f in frames]
    truth = np.array([f.truth.shift for f in frames])
    rois = [RoiSet.from_masks((sim.height, sim.width), sim.plane_masks(z)) for z in range(planes)]
    n_rois = sum(r.n for r in rois)
    # armed in every trial and never sending (its clock makes every frame look stale), so the running
    # projection and the decode run on every volume
    loop = ClosedLoopController(_Silent(), confidence_threshold=0.5,
                                window_s=config.online.decoder.delay_window_s, clock_ns=lambda: 2**62)
    pipeline = OnlinePipeline(config, rois=rois, closed_loop=loop)
    t0 = time.perf_counter()
    seq = 0

    def header(i: int, trial: int, time_s: float) -> FrameHeader:
        """Plane frame i (volume i // planes, plane i % planes)."""
        return FrameHeader(seq, i // planes, time_s, 0.0, trial, 0, i % planes, sim.height, sim.width, "<i2",
                           time.time_ns())

    shifts: dict[int, tuple[int, float, float]] = {}  # seq -> (plane, shift)

    def keep(out: Any) -> None:
        for t, h in zip(out.traces, out.headers, strict=True):
            shifts[h.seq] = (h.plane, t.shift_dy, t.shift_dx)

    for i in range(n_ref * planes):  # the reference phase (timed once, as setup)
        keep(pipeline.process_frame(header(i, 1, i / VOLUME.frame_rate_hz), pixels[i]))
        seq += 1
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    decoder = ContextDecoder("tactile", n_rois, pipeline.decoder_config, pipeline.roi_set_id)
    assert pipeline.decoder_config is not None
    windows = pipeline.decoder_config.windows()
    for k in range(24):  # a trained decoder: synthetic features (training cost is per trial, not timed here)
        side = "right" if k % 2 else "left"
        feats = {e: EpochFeature(rng.normal(size=n_rois) + (0.5 if side == "right" else 0.0),
                                 rng.normal(size=(w.n_bins(pipeline.decoder_config.bin_s), n_rois)))
                 for e, w in windows.items()}
        decoder.add_features(side, feats)
    pipeline.decoders["tactile"] = decoder
    wall, cpu = [], []
    trial, t_in_trial = 1, 0.0
    received = np.empty_like(pixels[0])
    n_frames = max(planes, n_frames // planes * planes)
    for i in range(n_frames):
        if i % 150 == 0:  # a new gated trial every 5 s, its delay gate open from the start
            trial += 1
            t_in_trial = 0.0
            pipeline.on_trial_start({"trial": trial, "context": "tactile"})
            for state in ("DelayPeriod", "DelayDecoderWait"):
                pipeline.on_state({"trial": trial, "state": state, "time_s": 0.0})
        k = n_ref * planes + i % distinct
        np.copyto(received, pixels[k])  # as a receive would
        h = header(i, trial, t_in_trial)
        seq += 1
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        out = pipeline.process_frame(h, received)
        w1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        wall.append((w1 - w0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
        keep(out)
        t_in_trial += 1 / VOLUME.frame_rate_hz
    if len(shifts) != n_ref * planes + n_frames:
        raise RuntimeError(f"the pipeline gave {len(shifts)} shifts for {n_ref * planes + n_frames} frames")
    # Each plane's reference has its own constant offset: the median error over the frames it was built
    # from; only frames the reference was not built from are scored.
    errors, worst = [], []
    for z in range(planes):
        ref = np.array([(dy, dx) for s, (p, dy, dx) in shifts.items() if p == z and s < n_ref * planes])
        ref_truth = truth[[s for s, (p, _, _) in shifts.items() if p == z and s < n_ref * planes]]
        offset = np.median(ref + ref_truth, axis=0)
        first_pass = range(n_ref * planes, n_ref * planes + distinct)  # each rendered frame scored once
        scored = [(s, dy, dx) for s, (p, dy, dx) in shifts.items() if p == z and s in first_pass]
        err = np.array([(dy, dx) for _, dy, dx in scored]) + truth[[s for s, _, _ in scored]] - offset
        errors.append(err)
        worst.append(float(np.abs(err).max()))
    err = np.concatenate(errors)
    volume_ms = np.add.reduceat(np.array(wall), np.arange(0, len(wall), planes))
    return {"p50_ms": percentile(wall, 50), "p99_ms": percentile(wall, 99), "cpu_p50_ms": percentile(cpu, 50),
            "cpu_p99_ms": percentile(cpu, 99), "mean_ms": float(np.mean(wall)), "planes": planes,
            "rois": n_rois, "rois_per_plane": ROIS_PER_PLANE, "frames_timed": n_frames,
            "volume_p50_ms": percentile(list(volume_ms), 50),
            "volume_p99_ms": percentile(list(volume_ms), 99),
            "core_share_at_30_hz": float(np.mean(wall)) * VOLUME.frame_rate_hz / 1e3,
            "registration_error_px": float(np.sqrt((err**2).sum(axis=1).mean())),
            "registration_scored_frames": len(err), "reference_frames": n_ref,
            "registration_max_error_px": float(np.abs(err).max()),
            "registration_max_error_px_per_plane": worst, "motion_px": float(np.abs(truth).max()),
            "reference_setup_s": setup_s, "stale_decodes": loop.stats()["stale"]}


# -- 3: replay --------------------------------------------------------------------------------------------


def write_replay_files(folder: Path, files: int, frames_per_file: int,
                       microscope: MicroscopeConfig = FULL_SIZE) -> tuple[list[Path], Path]:
    """Loop-mode ScanImage files of the (full-size) microscope, one per trial, and their ROIs (rois.npz)."""
    sim = SimMicroscope(dataclasses.replace(microscope, frames_per_acquisition=frames_per_file))
    imaging = folder / "imaging"
    period = frames_per_file / 30 + 0.5
    paths = []
    for trial in range(1, files + 1):
        start = trial * period
        sim.start_trial(start, "tactile", "left", {"sample": 0.01, "delay": 1.31, "go": 2.61}, trial=trial)
        frames = sim.frames_until(start + period)
        with ScanImageWriter.for_loop_trial(imaging, "sim", trial, height=sim.height, width=sim.width,
                                            frame_rate_hz=sim.config.frame_rate_hz, template="compact",
                                            acq_trigger_timestamp_s=0.0,
                                            first_frame_number=frames[0].frame_number + 1) as writer:
            for f in frames:
                writer.write_frame(f.pixels, f.timestamp_s)
            paths.append(writer.path)
    rois = RoiSet.from_masks((sim.height, sim.width), sim.masks)
    rois.save(folder / "rois.npz")
    return paths, imaging


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
PROT_READ, MAP_SHARED, PAGE = 1, 1, os.sysconf("SC_PAGE_SIZE")


def resident_fraction(paths: list[Path]) -> float:
    """Share of the files' pages in the page cache (mincore on a mapping that touches none of them)."""
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        n = (size + PAGE - 1) // PAGE
        fd = os.open(path, os.O_RDONLY)
        try:
            address = _libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            vector = (ctypes.c_ubyte * n)()
            try:
                if _libc.mincore(address, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
            finally:
                _libc.munmap(address, size)
        finally:
            os.close(fd)
        resident += sum(v & 1 for v in vector)
        total += n
    return resident / total if total else 0.0


def warm(paths: list[Path]) -> None:
    """Read the files once, so that they are in the page cache."""
    for path in paths:
        with path.open("rb") as fh:
            while fh.read(1 << 22):
                pass


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache: written back (fsync), then posix_fadvise(DONTNEED)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@contextlib.contextmanager
def block_path() -> Iterator[None]:
    """Replay as for files that cannot be memory-mapped: ScanImageFile offers no mapped view."""
    original = ScanImageFile.frames_view
    ScanImageFile.frames_view = lambda self: None  # type: ignore[method-assign, assignment, return-value]
    try:
        yield
    finally:
        ScanImageFile.frames_view = original  # type: ignore[method-assign]


def replay_speed(folder: Path, files: int, frames_per_file: int) -> dict[str, Any]:
    paths, imaging = write_replay_files(folder, files, frames_per_file)
    config = PipelineConfig(DEFAULTS.online, frame_rate_hz=DEFAULTS.imaging.frame_rate_hz)
    figures: dict[str, Any] = {"replay_files": files, "replay_cold_method": "fsync + posix_fadvise(DONTNEED)"}
    replay(paths[0], out=folder / "warm-up", rois=folder / "rois.npz", config=config)  # one-off costs
    for path_kind in ("mmap", "block"):
        for cache in ("hot", "cold"):
            (warm if cache == "hot" else evict)(paths)
            key = f"replay_{path_kind}_{cache}"
            figures[f"{key}_resident"] = round(resident_fraction(paths), 3)
            with block_path() if path_kind == "block" else contextlib.nullcontext():
                summary = replay(imaging, out=folder / key, rois=folder / "rois.npz", config=config)
            figures[f"{key}_frames_per_s"] = summary.frames_per_s
            figures[f"{key}_frames"] = summary.frames
    return figures


# -- 4: closed loop end to end ----------------------------------------------------------------------------


def trial_machine(settings: Settings, side: str, gated: bool, sample_s: float, delay_s: float) -> Any:
    stage = {s.name: s for s in settings.task.stages}["full"].model_copy(update={"delay_s": delay_s})
    timing = TimingSettings(
        trig_trial_start=0.01, sample=sample_s, early_lick_sample=0.05, early_lick_delay=0.05,
        response_cue=0.05, answer_period=0.1, reward_consumption=0.05, no_response=0.01,
        stop_licking=0.05, trial_end=0.01)
    gate = DecoderGate("APP_SoftCode1", 0.3, 2.0) if gated else None
    params = TaskParameters(timing, settings.wiring, 0.03, 0.03, gate)
    context = contexts_from_settings(settings.contexts)["tactile"]
    spec = TrialSpec(trial_number=1, side=side, context=context, stage=stage, mode="antibias",  # type: ignore
                     free_drop=False)
    return build_trial(spec, params)


def closed_loop_latency(folder: Path, n_train: int, n_gated: int, keep: Path | None = None,
                        usb_frames: bool = False) -> dict[str, Any]:
    """With `usb_frames` the emulator delivers bytes at USB frame boundaries (1 ms on r2), as a real link."""
    command = [sys.executable, "-m", "hardware.bpod.emulator", "--firmware", "23", "--exit-with-parent"]
    emulator = subprocess.Popen(command + (["--usb-frames"] if usb_frames else []), cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert emulator.stdout is not None
        main_port = emulator.stdout.readline().split(": ", 1)[1].strip()
        app_port = emulator.stdout.readline().split(": ", 1)[1].strip()
        return {**_run_closed_loop(folder, main_port, app_port, n_train, n_gated), "usb_frames": usb_frames}
    finally:
        if keep is not None:
            import shutil

            shutil.copytree(folder / "data", keep, dirs_exist_ok=True)
        emulator.terminate()
        emulator.wait(5)


def _run_closed_loop(folder: Path, main_port: str, app_port: str, n_train: int,
                     n_gated: int) -> dict[str, Any]:
    rate, sample_s = 30.0, 0.5
    config = dataclasses.replace(FULL_SIZE, frame_rate_hz=rate, seed=1, context_overlap=0.0)
    settings = parse_settings({
        "network": free_network(),
        "imaging": {"frame_height": config.height, "frame_width": config.width, "frame_rate_hz": rate,
                    "planes": 1},
        "online": {"registration": {"reference_frames": 30},
                   "decoder": {"min_trials_per_side": 5, "delay_window_s": 0.6},
                   "closed_loop": {"enabled": True, "mode": "app_port", "confidence_threshold": 0.7,
                                   "max_delay_s": 0.5}}})
    session = folder / "data" / "bench-mouse" / "session"
    session.mkdir(parents=True)
    sim = SimMicroscope(config)
    rng = np.random.default_rng(3)
    trial_starts: dict[int, float] = {}
    sides: dict[int, str] = {}
    pending: queue.Queue[tuple[int, str, Any, int]] = queue.Queue()
    seen: dict[int, list[tuple[float, int]]] = {}  # trial -> (Bpod time in trial, host receipt ns)
    with LossyPublisher(settings.network.events_pub, hwm=10_000, source="rig") as events, \
            OnlineProcess(settings, session, session.parent, app_port=app_port), \
            LosslessSender(settings.network.frames, source="bench-scope") as frames, \
            BpodClient(main_port) as client:
        # Callbacks are tagged with the trial they report on: the last ones of a trial may come after
        # poll_trial has returned it.
        client.on_state = lambda state, t: pending.put((client.trials_started, "state", (state, t),
                                                        time.time_ns()))
        client.on_event = lambda e: pending.put((client.trials_started, "event", e, time.time_ns()))
        time.sleep(0.3)
        sim_t = 1.0
        for n in range(1, n_train + n_gated + 1):
            gated = n > n_train
            side = str(rng.choice(["left", "right"]))
            events.send_event(TOPIC_TRIAL, {"kind": "start", "trial": n, "context": "tactile"})
            client.start_trial(trial_machine(settings, side, gated, sample_s, 0.9))
            start_host: float | None = None
            index = 0
            sim.start_trial(sim_t, "tactile", side, trial=n)
            result = None
            while result is None:
                while not pending.empty():
                    tag, kind, payload, host_ns = pending.get()
                    if kind == "state":
                        state, t = payload
                        events.send_event(TOPIC_STATE, {"trial": tag, "state": state, "time_s": t})
                        seen.setdefault(tag, []).append((t, host_ns))
                        if tag != n:
                            continue
                        if state == "TrigTrialStart":
                            start_host = host_ns / 1e9
                        elif state == "SamplePeriod":
                            sim.mark_epoch(sim_t + t, "sample")
                        elif state == "DelayPeriod":
                            sim.mark_epoch(sim_t + t, "delay")
                        elif state == "ResponseCue":
                            sim.mark_epoch(sim_t + t, "go")
                    else:
                        event: TrialEvent = payload
                        seen.setdefault(tag, []).append((event.time_s, host_ns))
                if start_host is not None:
                    while time.time() >= start_host + (index + 1) / rate:  # frame `index` has been scanned
                        for f in sim.frames_until(sim_t + (index + 1) / rate - 1e-9):
                            if f.trial != n:  # the previous acquisition's frames after its trial: not sent
                                continue
                            frames.send_frame(f.pixels, frame_index=f.frame_index, timestamp_s=f.timestamp_s,
                                              trigger_timestamp_s=0.0, trial=n)
                        index += 1
                result = client.poll_trial(0.0005)
            data = result.to_dict()
            trial_starts[n] = result.start_s
            record = {"trial": n, "context": "tactile", "side": side, "outcome": "hit", "licked_side": side,
                      "bpod": data}
            events.send_event(TOPIC_TRIAL, {"kind": "end", "trial": n, "record": record})
            sides[n] = side
            sim_t += result.duration_s + 1.0
            time.sleep(0.05)
        time.sleep(1.0)
    offsets = [host_ns / 1e9 - (trial_starts[tag] + t) for tag, pairs in seen.items() if tag in trial_starts
               for t, host_ns in pairs]
    offset = min(offsets)
    decisions = read_jsonl(session / "decisions.jsonl")
    sent = {d["trial"]: d for d in decisions if d["kind"] == "sent"}
    landed = {d["trial"]: d for d in decisions if d["kind"] == "landed"}
    latencies, host, frame_end = [], [], []
    for n, d in sent.items():
        if n not in landed:
            continue
        landing_host = offset + trial_starts[n] + landed[n]["landed_bpod_s"]
        latencies.append((landing_host - d["frame_t_ns"] / 1e9) * 1e3)
        host.append(d["host_latency_ms"])
        frame_end.append(landed[n]["frame_end_to_landing_ms"])

    def pct(values: list[float], q: float) -> float | None:
        return percentile(values, q) if values else None

    return {"closed_loop_p50_ms": pct(latencies, 50), "closed_loop_p99_ms": pct(latencies, 99),
            "closed_loop_max_ms": max(latencies) if latencies else None,
            "host_latency_p50_ms": pct(host, 50), "host_latency_p99_ms": pct(host, 99),
            "frame_end_to_landing_p50_ms": pct(frame_end, 50),
            "frame_end_to_landing_p99_ms": pct(frame_end, 99),
            "closed_loop_frame_px": config.height, "closed_loop_neurons": config.n_neurons,
            "gated_trials": n_gated, "decisions_landed": len(latencies),
            "no_decision": sum(d["kind"] == "none" for d in decisions),
            "decided_side_correct": sum(d["side"] == sides[n] for n, d in sent.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames timed for the per-frame cost")
    parser.add_argument("--distinct", type=int, default=150, help="distinct frames rendered and cycled")
    parser.add_argument("--replay-files", type=int, default=10)
    parser.add_argument("--replay-frames", type=int, default=300, help="frames per replayed file")
    parser.add_argument("--train", type=int, default=16, help="ungated training trials")
    parser.add_argument("--gated", type=int, default=40, help="decoder-gated trials")
    parser.add_argument("--only", nargs="+", choices=("frame", "replay", "closed-loop"), default=None,
                        help="run only these parts")
    parser.add_argument("--keep", type=Path, default=None, help="copy the closed-loop session folder here")
    parser.add_argument("--usb-frames", action="store_true",
                        help="closed loop with the emulator's USB model (bytes at 1 ms frame boundaries)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures: dict[str, Any] = {}
    parts = set(args.only or ("frame", "replay", "closed-loop"))
    if "frame" in parts:
        figures.update(per_frame(args.frames, args.distinct))
    if "replay" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            figures.update(replay_speed(Path(tmp), args.replay_files, args.replay_frames))
    if "closed-loop" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            figures.update(closed_loop_latency(Path(tmp), args.train, args.gated, args.keep, args.usb_frames))
    figures = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}

    def ms(key: str) -> str:
        value = figures.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    rows = []
    if "p50_ms" in figures:
        rows += [("per plane frame p50 / p99 (ms), wall", f"{ms('p50_ms')} / {ms('p99_ms')}"),
                 ("per plane frame p50 / p99 (ms), thread CPU", f"{ms('cpu_p50_ms')} / {ms('cpu_p99_ms')}"),
                 (f"per volume ({figures['planes']} planes) p50 / p99 (ms), wall",
                  f"{ms('volume_p50_ms')} / {ms('volume_p99_ms')}"),
                 ("share of one core at 30 Hz", f"{100 * figures['core_share_at_30_hz']:.1f} %"),
                 ("registration error RMS / max (px)",
                  f"{ms('registration_error_px')} / {ms('registration_max_error_px')}")]
    if "replay_files" in figures:
        for path_kind, name in (("mmap", "memory-mapped"), ("block", "block path")):
            for cache in ("hot", "cold"):
                key = f"replay_{path_kind}_{cache}"
                rate, resident = figures[key + "_frames_per_s"], figures[key + "_resident"]
                rows.append((f"replay, {name}, {cache} cache (frames/s; pages resident before)",
                             f"{rate:.1f} ({100 * resident:.0f}%)"))
    if "gated_trials" in figures:
        link = "USB model, 1 ms frames" if figures["usb_frames"] else "no USB model"
        rows += [(f"closed loop ({link}): last frame sent -> event in Bpod p50 / p99 (ms)",
                  f"{ms('closed_loop_p50_ms')} / {ms('closed_loop_p99_ms')}"),
                 ("closed loop: frame sent -> APP byte written p50 / p99 (ms)",
                  f"{ms('host_latency_p50_ms')} / {ms('host_latency_p99_ms')}"),
                 ("closed loop: frame's last line -> event (trial clock) p50 (ms)",
                  ms("frame_end_to_landing_p50_ms")),
                 ("closed loop: decisions landed / gated trials",
                  f"{figures['decisions_landed']} / {figures['gated_trials']}")]
    size = f"{FULL_SIZE.height}x{FULL_SIZE.width}"
    print_report(f"Online module: {size} int16, one core; per frame: {VOLUME.planes} planes x "
                 f"{ROIS_PER_PLANE} ROIs at 30 Hz over all planes; replay and closed loop: one plane, "
                 f"{FULL_SIZE.n_neurons} neurons at 30 Hz", rows, figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
