"""Batch replay (online/batch_replay.py): sessions of a subject folder as tasks on a local Dask cluster of
worker processes give the files a serial replay of each session gives; a damaged session is named with the
reason and the others are finished; nothing is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.batch_replay import (
    BLAS_ENV,
    SessionTask,
    find_sessions,
    open_client,
    output_folder,
    replay_session,
)
from online.errors import UserInputError
from online.process import replay_config
from online.rois import RoiSet
from online.store import INDEX_DTYPE, read_jsonl, read_traces
from rig.online_child import write_online_settings
from rig.settings import dump_settings, parse_settings

REPO = Path(__file__).resolve().parents[1]
SIZE, RATE, FRAMES_PER_TRIAL, N_TRIALS = 32, 10.0, 12, 4
SESSIONS = ("2026-01-01_100000", "2026-01-02_100000", "2026-01-03_100000")
BROKEN = SESSIONS[1]
SETTINGS = {"imaging": {"frame_rate_hz": RATE},
            "online": {"registration": {"reference_frames": 8, "max_shift_px": 6},
                       "decoder": {"min_trials_per_side": 1}}}


def write_session(folder: Path, sim: SimMicroscope, t0: float) -> None:
    """A session folder as the rig leaves it: imaging/ (a loop-mode file per trial) and trials.jsonl."""
    period = FRAMES_PER_TRIAL / RATE
    with open(folder / "trials.jsonl", "w") as trials:
        for trial in range(1, N_TRIALS + 1):
            side = "left" if trial % 2 else "right"
            start = t0 + trial * period
            sim.start_trial(start, "tactile", side, {"sample": 0.01, "delay": 0.31, "go": 0.61}, trial=trial)
            new = sim.frames_until(start + period - 1e-9)
            with ScanImageWriter.for_loop_trial(folder / "imaging", "sim", trial, height=SIZE, width=SIZE,
                                                frame_rate_hz=RATE, template="compact",
                                                first_frame_number=new[0].frame_number + 1,
                                                acq_trigger_timestamp_s=0.0) as writer:
                for f in new:
                    writer.write_frame(f.pixels, f.timestamp_s)
            states = {"TrigTrialStart": [[0.0, 0.01]], "SamplePeriod": [[0.01, 0.31]],
                      "DelayPeriod": [[0.31, 0.61]], "ResponseCue": [[0.61, 0.71]],
                      "AnswerPeriod": [[0.71, 0.8]], "Reward": [[0.8, 0.83]]}
            record = {"trial": trial, "subject": "sim-mouse", "context": "tactile", "side": side,
                      "outcome": "hit", "licked_side": side, "free_drop": False,
                      "bpod": {"States": states, "Events": {"Tup": [0.01]}}}
            trials.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(subject folder of three sessions, the middle one with a file cut short; rois.npz; settings.yaml)."""
    root = tmp_path_factory.mktemp("batch")
    subject = root / "sim-mouse"
    sim = SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=6, frame_rate_hz=RATE, seed=3,
                                         frames_per_acquisition=FRAMES_PER_TRIAL))
    for k, name in enumerate(SESSIONS):
        (subject / name).mkdir(parents=True)
        write_session(subject / name, sim, t0=1000.0 * k)
    cut = subject / BROKEN / "imaging" / "sim_00003_00001.tif"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    RoiSet.from_masks((SIZE, SIZE), sim.masks).save(root / "rois.npz")
    (root / "settings.yaml").write_text(dump_settings(parse_settings(SETTINGS)))
    return subject, root / "rois.npz", root / "settings.yaml"


def processes_of_session(sid: int) -> list[int]:
    """Processes still running in the session (setsid) a command was started in."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


def wait_gone(sid: int, timeout_s: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_of_session(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **env})
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        with_left = wait_gone(proc.pid)
        if with_left:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not with_left, f"processes left behind: {with_left}"
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def assert_same_outputs(a: Path, b: Path) -> None:
    """Byte for byte, except the host clock each frame was processed at (t_ns)."""
    for name in ("traces.f32", "rois.npz", "reference.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ia, ib = read_traces(a).index, read_traces(b).index
    assert len(ia) == len(ib) == N_TRIALS * FRAMES_PER_TRIAL
    for field in INDEX_DTYPE.names:
        if field != "t_ns":
            np.testing.assert_array_equal(ia[field], ib[field], err_msg=field)
    assert read_jsonl(a / "decoder.jsonl") == read_jsonl(b / "decoder.jsonl")
    assert len(read_jsonl(a / "decoder.jsonl")) == N_TRIALS


def test_sessions_of_a_subject_folder_are_found_with_their_trials(study: tuple[Path, Path, Path],
                                                                  tmp_path: Path) -> None:
    subject, _, _ = study
    tasks = find_sessions([subject], out=tmp_path)
    assert [t.name for t in tasks] == list(SESSIONS)
    assert all(t.files == subject / t.name / "imaging" and t.trials == subject / t.name / "trials.jsonl"
               and t.out == tmp_path / t.name for t in tasks)
    own = find_sessions([subject / SESSIONS[0], subject / SESSIONS[2] / "imaging"])
    assert [output_folder(t) for t in own] == [subject / SESSIONS[0] / "online_replay",
                                               subject / SESSIONS[2] / "imaging" / "online_replay"]
    assert own[1].trials is None  # a recording folder: its trials only with --trials, alone
    with pytest.raises(UserInputError, match="would both write into"):
        find_sessions([subject / SESSIONS[0], subject / SESSIONS[0] / "imaging"], out=tmp_path)
    with pytest.raises(UserInputError, match="no session folder"):
        find_sessions([tmp_path])


def test_a_subject_on_two_workers_replays_as_serially_and_names_the_damaged_session(
        study: tuple[Path, Path, Path], tmp_path: Path) -> None:
    subject, rois, settings_yaml = study
    batch = tmp_path / "batch"
    proc = run([sys.executable, "-m", "rig", "replay", str(subject), "--workers", "2", "--out", str(batch),
                "--rois", str(rois), "--settings", str(settings_yaml)])
    assert proc.returncode == 2, proc.stderr
    figures = json.loads(proc.stdout.splitlines()[0])
    assert figures["failed"] == [BROKEN]
    assert [s["name"] for s in figures["sessions"]] == list(SESSIONS)
    failures = [line for line in proc.stderr.splitlines() if line.startswith(f"online replay: {BROKEN}: ")]
    assert len(failures) == 1 and "sim_00003_00001.tif" in failures[0] and "stopped at frame" in failures[0]
    assert "3/3 sessions, 1 failed" in proc.stderr
    # the same sessions one after the other in this process, as a replay of each alone
    config = replay_config(str(write_online_settings(parse_settings(SETTINGS), tmp_path / "online.json")),
                           "trigger")
    for name in SESSIONS:
        if name == BROKEN:
            continue
        serial = tmp_path / "serial" / name
        task = SessionTask(name, subject / name / "imaging", serial, subject / name / "trials.jsonl")
        result = replay_session(task, rois, config)
        assert not result.failed and result.frames == N_TRIALS * FRAMES_PER_TRIAL
        assert_same_outputs(serial, batch / name)


def _environment() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in BLAS_ENV}


def test_local_workers_are_processes_of_one_thread_and_one_blas_thread() -> None:
    with open_client(None, 2) as client:
        assert list(client.nthreads().values()) == [1, 1]
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert list(client.run(_environment).values()) == [BLAS_ENV, BLAS_ENV]
        workers = [int(pid) for pid in pids.values()]
    left = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    assert not left, f"worker processes left after the block: {left}"


def test_sessions_run_on_an_existing_cluster_which_stays_up(study: tuple[Path, Path, Path],
                                                            tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    subject, rois, _ = study
    good = [str(subject / name) for name in SESSIONS if name != BROKEN]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        proc = run([sys.executable, "-m", "online", "replay", *good, "--scheduler", cluster.scheduler_address,
                    "--rois", str(rois), "--out", str(tmp_path / "out")])
        assert proc.returncode == 0, proc.stderr
        figures = json.loads(proc.stdout.splitlines()[0])
        assert figures["failed"] == [] and figures["frames"] == 2 * N_TRIALS * FRAMES_PER_TRIAL
        assert len(client.nthreads()) == 1  # the command closed its client, not the cluster
    assert all((tmp_path / "out" / Path(g).name / "traces.f32").exists() for g in good)


@pytest.mark.parametrize(("address", "words"), [("tcp://127.0.0.1:9", "no Dask scheduler could be reached"),
                                              ("scheduler-host", "not a scheduler address")])
def test_a_bad_scheduler_address_is_one_sentence(study: tuple[Path, Path, Path], address: str,
                                                 words: str) -> None:
    subject, _, _ = study
    proc = run([sys.executable, "-m", "online", "replay", str(subject), "--scheduler", address],
               DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    assert proc.returncode == 2 and not proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"online replay: --scheduler {address}: {words}"), lines


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_batch_ends_the_local_cluster_and_its_workers(study: tuple[Path, Path, Path],
                                                                    tmp_path: Path, how: str) -> None:
    """Many sessions (links to the good ones), interrupted once the worker processes exist: Ctrl-C
    (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to `rig replay` (which passes it
    on): the command says so, exits 130, and nothing of it is left running."""
    subject, rois, settings_yaml = study
    many = tmp_path / "many"
    many.mkdir()
    for i in range(200):
        (many / f"s{i:03d}").symlink_to(subject / SESSIONS[i % 2 * 2])
    proc = subprocess.Popen([sys.executable, "-m", "rig", "replay", str(many), "--workers", "2", "--out",
                             str(tmp_path / "out"), "--rois", str(rois), "--settings", str(settings_yaml)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # rig, python -m online, multiprocessing's resource tracker and the two workers
        while len(processes_of_session(proc.pid)) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(processes_of_session(proc.pid)) >= 5, "the workers did not start"
        time.sleep(1.0)  # past the moment the command ignores SIGINT, while it starts them (batch_replay.py)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        left = wait_gone(proc.pid)
    finally:
        if processes_of_session(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "online replay: interrupted" in err and "Traceback" not in err, err
    assert not left, f"processes left behind: {left}"
