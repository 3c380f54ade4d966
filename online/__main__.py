"""`python -m online`: the live online module, or `python -m online replay` over recorded ScanImage files.

    python -m online --settings ONLINE_SETTINGS_JSON [--session DIR] [--subject-dir DIR]
                     [--rois SUITE2P_PLANE_DIR] [--app-port PATH] [--alignment trigger|aux]
                     [--exit-with-parent] [--log-level LEVEL]
    python -m online replay PATH [--rois SUITE2P_PLANE_DIR] [--out DIR] [--trials TRIALS_JSONL]
                     [--settings ONLINE_SETTINGS_JSON] [--alignment trigger|aux]
    python -m online replay SESSION_OR_SUBJECT_DIR... [--workers N | --scheduler tcp://HOST:PORT]
                     [--rois ...] [--out DIR] [--settings ...] [--alignment ...]

Several sessions (a subject folder, session folders, or more than one PATH) are replayed in parallel, each
session a task on Dask distributed (online/batch_replay.py).

The settings are the online-settings JSON the rig writes from a validated settings.yaml
(online/settings.py: `OnlineProcessSettings`): `rig run` starts this module with one, and `rig online` /
`rig replay` are the commands for people, taking settings.yaml.

Thread limits first. OMP_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 (and MKL's) are set here, before anything
imports numpy, because OpenBLAS and OpenMP read them once, when the library loads. The online module does
one frame at a time: its matrix products (trace weights, the registration's DFT refinement, building the
reference) are small, and a BLAS thread pool only adds wake-ups and spinning threads that compete with the
acquisition, the rig and the display for the same cores. Measured here: the DFT refinement's p99 was 24 ms
with OpenBLAS threads and 1.6 ms with one (online/registration.py); CaImAn users report the same
oversubscription. A value already set in the environment is kept.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _live_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m online",
                                     description="The online imaging module (live). "
                                                 "`python -m online replay --help` for replay.")
    parser.add_argument("--settings", type=Path, required=True,
                        help="the online-settings JSON the rig wrote (`rig online --settings settings.yaml` "
                             "starts this module from a settings.yaml)")
    parser.add_argument("--session", type=Path, default=None,
                        help="session folder for the online outputs (default: a new folder "
                             "<data.root>/online/<date_time>)")
    parser.add_argument("--subject-dir", type=Path, default=None,
                        help="<data_root>/<subject>: where coding_directions.json lives")
    parser.add_argument("--rois", type=Path, default=None,
                        help="suite2p output (a plane folder, or the folder of plane0..planeN), or a "
                             "folder/file with rois.npz (default: online.rois, else detect on the reference)")
    parser.add_argument("--app-port", default=None, help="the Bpod's APP serial port (firmware 23)")
    parser.add_argument("--alignment", choices=("trigger", "aux"), default="trigger",
                        help="trigger: frames carry trial and trigger time (loop mode); aux: continuous "
                             "acquisition with aux-trigger edges")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the parent process dies (prctl PR_SET_PDEATHSIG)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _is_batch(args: argparse.Namespace) -> bool:
    """More than one session, a session or subject folder, or a cluster asked for."""
    from online.batch_replay import is_recording

    return (len(args.path) > 1 or args.workers is not None or args.scheduler is not None
            or not is_recording(Path(args.path[0])))


def _replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m online replay", fromfile_prefix_chars="@",
                                     description="Run the online pipeline over recorded ScanImage files: one "
                                                 "recording, or many sessions in parallel on Dask "
                                                 "distributed. @FILE reads arguments (e.g. session folders) "
                                                 "from FILE, one per line.")
    parser.add_argument("path", nargs="+",
                        help="a ScanImage .tif file or a folder of per-trial files; or, replayed in "
                             "parallel: several of them, session folders (imaging/ + trials.jsonl), subject "
                             "folders")
    parser.add_argument("--rois", default=None, help="suite2p plane folder, or rois.npz")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <folder>/online_replay; several sessions: "
                             "<session>/online_replay, or <out>/<session name>)")
    parser.add_argument("--trials", default=None,
                        help="the session's trials.jsonl: decode trials too (one recording only; a session "
                             "folder's trials.jsonl is replayed with it)")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=_positive_int, default=None,
                         help="several sessions: worker processes of the local cluster (default: one per "
                              "core)")
    cluster.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                         help="several sessions: run them on the existing Dask cluster of this scheduler "
                              "(workers must see the same paths)")
    parser.add_argument("--settings", default=None,
                        help="the online-settings JSON the rig wrote (`rig replay` takes a settings.yaml)")
    parser.add_argument("--alignment", choices=("trigger", "aux"), default="trigger")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the parent process dies (prctl PR_SET_PDEATHSIG)")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from online import process

    if argv[:1] == ["replay"]:
        args = _replay_parser().parse_args(argv[1:])
        logging.basicConfig(level=args.log_level.upper(),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        if args.exit_with_parent:
            process.die_with_parent()
        if not _is_batch(args):
            return process.main_replay(args.path[0], args.out, args.rois, args.trials, args.settings,
                                       args.alignment)
        if args.trials is not None:
            print("online replay: --trials is for one recording (a .tif file or a folder of them); a session "
                  "folder's own trials.jsonl is replayed with it", file=sys.stderr)
            return process.EXIT_USER
        from online.batch_replay import main_batch

        return main_batch(args.path, args.out, args.rois, args.settings, args.alignment, args.scheduler,
                          args.workers)
    args = _live_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = process.LiveOptions(session_dir=args.session, settings_path=args.settings,
                                  subject_dir=args.subject_dir, rois=args.rois, app_port=args.app_port,
                                  alignment=args.alignment)
    return process.run_live(options, exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
