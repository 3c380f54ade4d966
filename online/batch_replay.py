"""Replay many sessions at once: each session is one task on Dask distributed, running the single-session
`online.process.replay` unchanged, so a batch gives exactly the files a replay of each session alone gives.

- Sessions: a subject folder (its session folders, in name order), session folders (`imaging/` with the
  ScanImage files; their `trials.jsonl` is replayed with them when there is one), recording folders (the .tif
  files themselves) or single .tif files, in any mix.
- Where: a local cluster of worker processes (one per core by default, one thread each: the pipeline runs
  one frame at a time and holds the GIL, so processes, not threads, give the cores), or an existing cluster
  by its scheduler's address (e.g. one a lab runs on Slurm through dask-jobqueue). Workers of an existing
  cluster must see the same paths (a shared file system) and have this package installed.
- BLAS/OpenMP: one thread per worker, set in the workers' environment before they start (so before they
  import numpy: OpenBLAS and OpenMP read it once, when they load); see online/__main__.py for why.
- A session that fails (unreadable, damaged, an error in the pipeline, its worker died) is reported with its
  name and the reason, and the others are finished; the exit status is then non-zero.
- The local cluster and its workers end with the command, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from online.config import PipelineConfig
from online.errors import PipelineError, UserInputError
from online.process import EXIT_INTERNAL, EXIT_OK, EXIT_USER, replay, replay_config

logger = logging.getLogger("online.batch")

BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""The worker processes' environment: one BLAS/OpenMP thread each."""
IMAGING = "imaging"
"""A session folder's subfolder of ScanImage files (rig/imaging.py writes the simulated ones there)."""
TRIALS = "trials.jsonl"
REPLAY_FOLDER = "online_replay"
POLL_S = 0.05
"""How often the command looks for finished sessions (and for Ctrl-C)."""
WORKERS_START_S = 120.0
"""Time the local cluster's worker processes have to start (a loaded machine takes seconds)."""


@dataclass(frozen=True)
class SessionTask:
    """One session to replay: what `replay` is given."""

    name: str
    files: Path
    """A .tif file or a folder of them."""
    out: Path | None
    """None: replay's own default (beside the files)."""
    trials: Path | None = None


@dataclass
class SessionResult:
    """What one session's replay did; `error` when it did not run at all, `stops` when files were cut."""

    name: str
    frames: int = 0
    seconds: float = 0.0
    trials_decoded: int = 0
    out: str | None = None
    stops: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    internal: bool = False
    """The error is not the data's (a bug, a worker that died): exit status 1 rather than 2."""

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.stops)

    def reason(self) -> str:
        return self.error if self.error is not None else "; ".join(self.stops)


# -- which sessions ------------------------------------------------------------------------------------------


def _has_tifs(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")
                                   for p in folder.iterdir())


def is_recording(path: Path) -> bool:
    """A path the single-session replay takes as it is: a file, a folder of .tif files (or nothing there,
    which it reports)."""
    return path.is_file() or _has_tifs(path) or not path.exists()


def _session_task(folder: Path, out: Path | None) -> SessionTask:
    trials = folder / TRIALS
    return SessionTask(folder.name, folder / IMAGING, out / folder.name if out else folder / REPLAY_FOLDER,
                       trials if trials.is_file() else None)


def find_sessions(paths: Sequence[str | Path], out: str | Path | None = None) -> list[SessionTask]:
    """The sessions named by `paths` (see the module docstring), with absolute paths (workers may run
    elsewhere); with `out`, each session's outputs go to `out/<session name>`."""
    out_dir = Path(out).absolute() if out is not None else None
    tasks: list[SessionTask] = []
    for raw in paths:
        path = Path(raw).absolute()
        if path.is_file():
            tasks.append(SessionTask(path.stem, path, out_dir / path.stem if out_dir else None))
        elif _has_tifs(path):
            name = path.parent.name if path.name == IMAGING else path.name
            tasks.append(SessionTask(name, path, out_dir / name if out_dir else None))
        elif _has_tifs(path / IMAGING):
            tasks.append(_session_task(path, out_dir))
        elif path.is_dir():
            sessions = sorted(p for p in path.iterdir() if _has_tifs(p / IMAGING))
            if not sessions:
                raise UserInputError(f"{raw}: holds no ScanImage files, no session folder (imaging/ with "
                                     ".tif files) and is no subject folder of such sessions")
            tasks += [_session_task(p, out_dir) for p in sessions]
        else:
            raise UserInputError(f"{raw}: no such file or folder")
    outs = [output_folder(t) for t in tasks]
    for i, folder in enumerate(outs):
        if folder in outs[:i]:
            first = tasks[outs.index(folder)]
            where = f"--out {out}: " if out_dir is not None else ""
            raise UserInputError(f"{where}{first.files} and {tasks[i].files} would both write into {folder}; "
                                 "replay them in separate runs")
    return tasks


def output_folder(task: SessionTask) -> Path:
    """Where a task's replay writes: its `out`, else replay's default (beside the files)."""
    if task.out is not None:
        return task.out
    return (task.files if task.files.is_dir() else task.files.parent) / REPLAY_FOLDER


# -- one session (runs in a worker) --------------------------------------------------------------------------


def replay_session(task: SessionTask, rois: Path | None, config: PipelineConfig | None) -> SessionResult:
    """One session's replay, as `python -m online replay` of that session alone runs it."""
    try:
        summary = replay(task.files, out=task.out, rois=rois, trials=task.trials, config=config)
    except (UserInputError, PipelineError) as exc:
        return SessionResult(task.name, error=str(exc))
    return SessionResult(task.name, summary.frames, summary.seconds, summary.trials_decoded, str(summary.out),
                         [stop.sentence() for stop in summary.stops], list(summary.warnings))


# -- the cluster ---------------------------------------------------------------------------------------------


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A Dask client: of a new local cluster of `workers` single-threaded processes (closed with the block,
    workers and all), or of the running cluster whose scheduler is at `scheduler`."""
    from distributed import Client, LocalCluster
    from distributed.comm import get_address_host_port

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_dask_logs())
        if scheduler is not None:
            try:
                get_address_host_port(scheduler)  # a malformed address, before a Client that would hang on it
            except ValueError as exc:
                raise UserInputError(f"--scheduler {scheduler}: not a scheduler address such as "
                                     f"tcp://HOST:PORT ({exc})") from exc
            try:
                client = Client(scheduler, set_as_default=False)
            except (OSError, ValueError, TypeError) as exc:
                raise UserInputError(f"--scheduler {scheduler}: no Dask scheduler could be reached there "
                                     f"({exc})") from exc
            yield stack.enter_context(client)
            return
        os.environ.update(BLAS_ENV)  # the workers' environment as they start; this process's too
        # loopback only; no dashboard, and its HTTP server on a free port rather than 8787
        cluster = stack.enter_context(LocalCluster(
            n_workers=0, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR,
            env=dict(BLAS_ENV)))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        _start_workers(cluster, client, workers)
        yield client


def _start_workers(cluster: Any, client: Any, n: int) -> None:
    """The local cluster's `n` worker processes, started with SIGINT ignored, which they inherit (an ignored
    signal stays ignored across exec, and Python then installs no KeyboardInterrupt): Ctrl-C reaches the
    terminal's whole process group, and this process alone should stop the batch and close the workers in
    order. SIGINT is ignored here only until the processes exist, not while they import and connect."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster.scale(n)
        deadline = time.monotonic() + WORKERS_START_S
        while len(multiprocessing.active_children()) < n and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        client.wait_for_workers(n, timeout=WORKERS_START_S)
    except TimeoutError as exc:
        raise PipelineError(f"the local cluster's {n} worker process(es) did not start within "
                            f"{WORKERS_START_S:.0f} s") from exc


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's INFO lines (every worker started, every key cancelled) off while a batch runs: they would
    drown the status line and the failures."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    dask_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        dask_logger.setLevel(level)


class BatchInterrupted(Exception):
    """Ctrl-C or SIGTERM while sessions were running."""


def run_batch(client: Any, tasks: Sequence[SessionTask], rois: Path | None, config: PipelineConfig | None,
              on_result: Callable[[SessionResult, int], None] | None = None,
              stop: threading.Event | None = None) -> list[SessionResult]:
    """Every task on the cluster; results in task order. `on_result(result, done)` as each one finishes.
    `stop` set: the sessions not finished are cancelled and `BatchInterrupted` raised."""
    from distributed import as_completed

    futures = {client.submit(replay_session, task, rois, config, key=f"replay-{i}-{task.name}", pure=False): i
               for i, task in enumerate(tasks)}
    results: list[SessionResult | None] = [None] * len(tasks)
    finished = as_completed(futures, loop=client.loop)
    done = 0
    try:
        while done < len(tasks):
            if stop is not None and stop.is_set():
                raise BatchInterrupted
            if not finished.has_ready():
                time.sleep(POLL_S)
                continue
            for future in finished.next_batch(block=False):
                i = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 (a bug in one session, or its worker died: report it)
                    result = SessionResult(tasks[i].name, error=f"{type(exc).__name__}: {exc}", internal=True)
                results[i] = result
                done += 1
                if on_result is not None:
                    on_result(result, done)
    finally:
        client.cancel(list(futures), force=True)
    return [r for r in results if r is not None]


# -- the command ---------------------------------------------------------------------------------------------


class StatusLine:
    """Progress on stderr: one line rewritten in place on a terminal, a line per session otherwise."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.frames = 0
        self.failed = 0
        self.t0 = time.perf_counter()

    def __call__(self, result: SessionResult, done: int) -> None:
        self.frames += result.frames
        self.failed += result.failed
        rate = self.frames / max(time.perf_counter() - self.t0, 1e-9)
        line = (f"online replay: {done}/{self.total} sessions, {self.failed} failed, {self.frames} frames, "
                f"{rate:.0f} frames/s (last: {result.name})")
        if self.tty and (result.failed or result.warnings):
            self.stream.write("\r\x1b[K")  # the status line makes way
        if result.failed:
            print(f"online replay: {result.name}: {result.reason()}", file=self.stream)
        for warning in result.warnings:
            print(f"online replay: {result.name}: warning: {warning}", file=self.stream)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set the event, so the batch stops between two polls and the cluster is closed
    in order (an exception raised anywhere inside Dask's calls could leave its workers to the exit's
    reaping); a second one interrupts on the spot."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main_batch(paths: Sequence[str], out: str | None, rois: str | None, settings_path: str | None,
               alignment: str, scheduler: str | None, workers: int | None) -> int:
    """`python -m online replay` over several sessions: JSON of every session on stdout, then one line;
    progress and every failed session (its name and why) on stderr. Exit status 0 when every session was
    replayed whole, 2 when one was not (its data), 1 when one failed otherwise (a bug, a worker died)."""
    t0 = time.perf_counter()
    try:
        config = replay_config(settings_path, alignment)
        tasks = find_sessions(paths, out)
        roi_path = Path(rois).absolute() if rois is not None else None
        n = min(workers or default_workers(), len(tasks))
        with _stop_on_signals() as stop, open_client(scheduler, n) as client:
            if stop.is_set():
                raise BatchInterrupted
            logger.info("replaying %d session(s) on %d worker(s) of %s", len(tasks), len(client.nthreads()),
                        scheduler or "a local cluster")
            results = run_batch(client, tasks, roi_path, config, StatusLine(len(tasks)), stop)
    except (UserInputError, PipelineError) as exc:
        print(f"online replay: {exc}", file=sys.stderr)
        return EXIT_USER
    except (BatchInterrupted, KeyboardInterrupt):
        print("online replay: interrupted; sessions not finished have incomplete outputs", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - t0
    frames = sum(r.frames for r in results)
    failed = [r for r in results if r.failed]
    print(json.dumps({"sessions": [asdict(r) for r in results], "frames": frames,
                      "seconds": round(seconds, 3),
                      "frames_per_s": round(frames / seconds, 1) if seconds > 0 else None,
                      "failed": [r.name for r in failed]}))
    print(f"replayed {len(results) - len(failed)} of {len(results)} sessions, {frames} frames in "
          f"{seconds:.2f} s: {frames / max(seconds, 1e-9):.1f} frames/s"
          + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""))
    if any(r.internal for r in failed):
        return EXIT_INTERNAL
    return EXIT_USER if failed else EXIT_OK
