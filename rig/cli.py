"""The `rig` command line (also `python -m rig`).

Subcommands parse their arguments here and hand over to library code; user errors (bad settings, bad
arguments) end as one line per problem on stderr and exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rig import __version__
from rig.errors import SessionFault, UserError

if TYPE_CHECKING:
    from rig.session import RunOptions
    from rig.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _rig_file(args: argparse.Namespace) -> Path | None:
    """The rig file of ``--rig``, else rig.yaml beside the settings file, else None (built-in rig)."""
    from rig.settings import DEFAULT_SETTINGS_PATH, find_rig_file

    found = find_rig_file(args.settings or DEFAULT_SETTINGS_PATH, args.rig)
    return found.resolve() if found is not None else None


def _load(args: argparse.Namespace) -> Settings:
    """The settings of ``--settings`` with the rig file of ``--rig`` (or the one beside it)."""
    from rig.settings import load_settings

    return load_settings(args.settings, rig=_rig_file(args))


def _cmd_check_settings(args: argparse.Namespace) -> int:
    """Validate a settings file and its rig file and print the resolved settings (values plus defaults)."""
    from rig.settings import dump_settings

    settings = _load(args)
    rig_file = _rig_file(args)
    with_rig = f" with the rig file {rig_file}" if rig_file is not None else ""
    sys.stdout.write(f"# {args.settings or 'settings.yaml'}{with_rig}: settings are valid; resolved values "
                     "follow\n")
    sys.stdout.write(dump_settings(settings))
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    """Run a session until its trial or time limit, `rig stop`, Ctrl-C or SIGTERM."""
    from dataclasses import replace

    from rig.session import RunOptions, run_session
    from rig.summary import format_summary, summarize_session

    settings = _load(args)
    rig_file = _rig_file(args)
    subject = {"subject": args.subject} if args.subject is not None else {}  # "" is refused, not defaulted
    options = RunOptions(**subject, context=args.context, trials=args.trials, minutes=args.minutes,
                         speed=args.speed, data_root=args.data, status_stream=sys.stderr, rig_file=rig_file,
                         rois=args.rois)
    real_rig = settings.bpod.port != "emulator"
    from rig.subject_info import check_supplement_ul, check_weight_g

    if args.supplementary_water is not None:
        check_supplement_ul(args.supplementary_water)  # before the session, not after it
    if args.weight is not None:
        options = replace(options, weight_g=check_weight_g(args.weight))
    if real_rig:  # the simulated rig asks nothing
        options = _ask_subject_care(settings, options, args.weight)
    gui = None
    if not args.no_gui:
        from rig.monitor import display_available, monitor_command, start_monitor_process

        if display_available():  # its own process: closing or crashing it never touches the session
            rig = ["--rig", str(rig_file)] if rig_file is not None else []
            gui = start_monitor_process(args.settings, monitor_command(args.settings) + rig)
    try:
        result = run_session(settings, replace(options, monitor=gui))  # the session watches the monitor
    except SessionFault as fault:  # everything received is on disk; the sentence says what ended it
        sys.stderr.write(f"\n{fault}\n")
        return EXIT_FAILURE
    finally:
        if gui is not None:
            from rig.monitor import stop_monitor_process

            stop_monitor_process(gui)
    _summary_figure(result.folder, settings, gui)
    sys.stderr.write("\n")
    summary = summarize_session(result.folder)
    sys.stdout.write(format_summary(summary) + "\n")
    sys.stdout.write(f"data: {result.folder}\n")
    if real_rig or args.supplementary_water is not None:
        _ask_supplementary_water(result.folder, args.supplementary_water)
    return EXIT_OK


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _ask_subject_care(settings: Settings, options: RunOptions, weight_g: float | None) -> RunOptions:
    """On a real rig: the subject's description where subject.json lacks it, and its weight, asked at the
    terminal (without one, what is missing is said and left unrecorded)."""
    from dataclasses import replace

    from rig.subject import load_subject
    from rig.subject_info import ask_subject_info, ask_weight, check_weight_g, parse_subject_info

    record = load_subject(Path(options.data_root or settings.data.root), options.subject)
    info = record.info if record is not None else None
    if weight_g is not None:
        check_weight_g(weight_g)
    if _interactive():
        if info is None or _incomplete(info):
            sys.stderr.write(f"subject {options.subject}: its description is not complete (for the data's "
                             "export)\n")
            info = ask_subject_info(info, input).to_json()
        if weight_g is None:
            weight_g = ask_weight(input)
    else:
        if info is None:
            logger.warning("subject %s has no species, sex, birth or genotype in subject.json (info); run "
                           "`rig run` at a terminal to give them", options.subject)
        if weight_g is None:
            logger.warning("the subject's weight is not recorded: give --weight G")
    if info is not None:
        parse_subject_info(info, f"subject {options.subject}")
    return replace(options, weight_g=weight_g, subject_info=info)


def _incomplete(info: dict[str, Any]) -> bool:
    from pydantic import ValidationError

    from rig.subject_info import SubjectInfo

    try:
        SubjectInfo.model_validate(info)
    except ValidationError:
        return True
    return False


def _ask_supplementary_water(folder: Path, given_ul: float | None) -> None:
    """After a real session: the water given besides the valves', into session.json."""
    from rig.store import read_json
    from rig.subject_info import ask_supplementary_water, record_supplementary_water

    if given_ul is None and not _interactive():
        logger.warning("supplementary water not recorded: give --supplementary-water UL")
        return
    if given_ul is None:
        delivered = (read_json(folder / "session.json").get("water") or {}).get("delivered_ul")
        given_ul = ask_supplementary_water(input, delivered)
    record_supplementary_water(folder, given_ul)


def _cmd_export_nwb(args: argparse.Namespace) -> int:
    """Write a session (or every session of a subject not yet exported) as NWB files."""
    from rig.nwb.writer import export_session, export_subject, session_folders
    from rig.store import SESSION_FILE

    path: Path = args.path
    if not path.is_dir():
        raise UserError(f"{path}: no such folder (give a session folder or a subject folder)")
    if (path / SESSION_FILE).is_file():
        done = [export_session(path, args.out)]
    elif args.out is not None:
        raise UserError("--out names one file: give a session folder with it, not a subject folder")
    elif not session_folders(path):
        raise UserError(f"{path}: neither a session folder (no {SESSION_FILE}) nor a subject folder with "
                        "sessions")
    else:
        done = export_subject(path)
        if not done:
            sys.stdout.write(f"{path}: every ended session is already exported\n")
    for item in done:
        sys.stdout.write(f"{item.session} -> {item.path} ({item.trials} trials, {item.planes} planes)\n")
    return EXIT_OK


def _summary_figure(folder: Path, settings: Settings, gui: Any) -> None:
    """The session's summary.png: the monitor saves it when the session ends; the rig draws it when no
    monitor ran (or the monitor did not)."""
    from rig.session_figure import FIGURE_FILE, save_session_figure

    if gui is None or not (folder / FIGURE_FILE).is_file():
        save_session_figure(folder, settings.wiring)


def _seconds_list(text: str) -> tuple[float, ...]:
    values = tuple(_positive_float(part) for part in text.split(",") if part.strip())
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give 2 or more open times, comma-separated")
    return values


def _sides(text: str) -> tuple[str, ...]:
    sides = tuple(part.strip() for part in text.split(",") if part.strip())
    if not sides or any(side not in ("left", "right") for side in sides):
        raise argparse.ArgumentTypeError(f"{text!r}: valves are left, right or left,right")
    return tuple(dict.fromkeys(sides))


def _cmd_calibrate_valves(args: argparse.Namespace) -> int:
    """Deliver drops through the Bpod, take the weights, fit and write the curves into the rig file."""
    from hardware.bpod.client import BpodError
    from rig.bench import open_bench_bpod
    from rig.calibration import CalibrationRun, calibrate_valves
    from rig.settings import load_settings

    rig_file = _rig_file(args)
    if rig_file is None:
        raise UserError("calibrate-valves writes the curves into a rig file: give --rig FILE, or put a "
                        "rig.yaml beside the settings file")
    settings = load_settings(args.settings, rig=rig_file)
    run = CalibrationRun(rig_file=rig_file, sides=args.valves, durations_s=args.durations, drops=args.drops,
                         interval_s=args.interval, weights=args.weights)
    run.check_weights()
    try:
        with open_bench_bpod(settings) as bpod:
            calibrate_valves(bpod.client, settings.wiring, settings.bpod.valve_calibration, run, sys.stdin,
                             sys.stdout)
    except BpodError as exc:  # missing, not a Bpod, unsupported firmware, lost: one sentence
        raise UserError(str(exc)) from None
    load_settings(args.settings, rig=rig_file)  # the task's reward volume against the new curves
    return EXIT_OK


def _cmd_check_hardware(args: argparse.Namespace) -> int:
    """The rig box's self-test: one pass/fail line per check (or one JSON object); 1 if any fails."""
    import json

    from rig.self_test import report, self_test

    results = self_test(_load(args))
    if args.json:
        sys.stdout.write(json.dumps(report(results), indent=2) + "\n")
    else:
        sys.stdout.write("".join(result.line() + "\n" for result in results))
    return EXIT_OK if all(result.passed for result in results) else EXIT_FAILURE


def _cmd_monitor(args: argparse.Namespace) -> int:
    """Open the monitoring window on the running session (or on a simulated one with --demo)."""
    import os

    from rig.monitor import display_available

    if args.speed is not None and not args.demo:
        raise UserError("--speed applies to --demo only")
    if not display_available() and "QT_QPA_PLATFORM" not in os.environ:
        if args.screenshot is None:
            raise UserError("no display (DISPLAY and WAYLAND_DISPLAY are unset): "
                            "use --screenshot FILE.png to render offscreen")
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if args.demo:
        from rig.monitor.demo import DEMO_SPEED, run_demo

        return run_demo(args.settings, seconds=args.seconds, screenshot=args.screenshot,
                        speed=args.speed or DEMO_SPEED)
    from rig.monitor.window import run_monitor

    return run_monitor(_load(args), screenshot=args.screenshot, seconds=args.seconds)


def _cmd_online(args: argparse.Namespace) -> int:
    """The online module on its own (an analysis PC), from a settings.yaml: `python -m online` in the
    foreground, given the online settings written from it."""
    from rig.online_child import run_online_module

    options = ["--exit-with-parent", "--alignment", args.alignment, "--log-level", args.log_level]
    for flag, value in (("--session", args.session), ("--subject-dir", args.subject_dir),
                        ("--rois", args.rois), ("--app-port", args.app_port)):
        if value is not None:
            options += [flag, str(value)]
    return run_online_module(_load(args), [], options)


def _cmd_replay(args: argparse.Namespace) -> int:
    """`python -m online replay` with the online settings of a settings.yaml."""
    from rig.online_child import run_online_module

    options = ["--exit-with-parent", "--alignment", args.alignment]
    for flag, value in (("--rois", args.rois), ("--out", args.out), ("--trials", args.trials),
                        ("--workers", args.workers), ("--scheduler", args.scheduler)):
        if value is not None:
            options += [flag, str(value)]
    return run_online_module(_load(args), ["replay", *map(str, args.path)], options)


def _cmd_summary(args: argparse.Namespace) -> int:
    """Print what a session did, from its folder."""
    import json

    from rig.summary import format_summary, summarize_session

    summary = summarize_session(args.session)
    sys.stdout.write((json.dumps(summary, indent=2) if args.json else format_summary(summary)) + "\n")
    return EXIT_OK


def _cmd_simulate_study(args: argparse.Namespace) -> int:
    """One `rig run` per simulated day on the emulator, contexts by the schedule or at criterion."""
    from rig.bench import EMULATOR_PORT
    from rig.study import StudyDay, StudyError, StudyPlan, parse_schedule, run_study, write_study_settings

    settings = _load(args)
    if settings.bpod.port != EMULATOR_PORT or settings.imaging.source != "simulated":
        raise StudyError("simulate-study runs on the simulated rig only: these settings name a real Bpod "
                         f"({settings.bpod.port!r}) or imaging source ({settings.imaging.source!r})")
    contexts = list(settings.contexts)
    if args.schedule is not None:
        days = parse_schedule(args.schedule, contexts)
    elif args.days is not None:
        if not settings.task.context_switch.enabled:
            raise StudyError("--days without --schedule lets the rig switch contexts at criterion, but "
                             "task.context_switch.enabled is false in the settings")
        days = [StudyDay(i + 1, None) for i in range(args.days)]
    else:
        raise StudyError("give --schedule CONTEXT:DAYS,... or --days N (contexts switched at criterion)")
    data = Path(args.data if args.data is not None else settings.data.root)
    study_settings = write_study_settings(args.settings, data / args.subject,
                                          switch_at_criterion=args.schedule is None)
    plan = StudyPlan(args.subject, days, args.trials_per_session, args.speed, data,
                     settings=study_settings, rig_file=_rig_file(args))
    results = run_study(plan, status=sys.stderr)
    for result in results:
        sys.stdout.write(f"day {result.day.number:3d}  {result.day.context or '(at criterion)':<20} "
                         f"{result.seconds:6.1f} s  {result.session}\n")
    sys.stdout.write(f"subject: {data / args.subject}\n")
    return EXIT_OK


def _cmd_analyze(args: argparse.Namespace) -> int:
    """A subject's study as in the paper: figures, an HTML report and result.json in --out."""
    import json

    from rig.analysis.figures import all_figures
    from rig.analysis.report import write_report
    from rig.analysis.study import AnalysisOptions, analyze_subject

    try:
        options = AnalysisOptions(method=args.method, min_trials_per_side=args.min_trials_per_side,
                                  n_repeats=args.repeats, source=args.activity)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = args.out if args.out is not None else args.subject_dir / "analysis"
    result = analyze_subject(args.subject_dir, options, status=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    figures = all_figures(result, out)
    report = write_report(result, figures, out)
    if args.json:
        keys = ("subject", "sessions", "neurons", "blocks", "trials_to_criterion", "cd_similarity",
                "cross_decoding", "cross_decoding_sessions", "memory_trace")
        sys.stdout.write(json.dumps({k: result[k] for k in keys}) + "\n")
    else:
        sys.stdout.write(f"report: {report}\nfigures: {', '.join(str(p) for p in figures.values())}\n")
    return EXIT_OK


def _cmd_control(args: argparse.Namespace) -> int:
    """Send one request to the running session's control socket and print its answer."""
    import json

    from rig.control import link_security, send_request

    settings = _load(args)
    extra: dict[str, str] = {}
    if args.command == "switch-context":
        extra = {"context": args.name}
    elif args.command == "valve":
        extra = {"side": args.side, "action": "flush" if args.flush else "drop"}
    reply = send_request(settings.network.control, args.command, security=link_security(settings.network),
                         **extra)
    if not reply.get("ok"):
        raise UserError(f"the session refused {args.command!r}: {reply.get('error')}")
    reply.pop("ok")
    text = json.dumps(reply, indent=2) if args.command == "status" else reply.get("message", "ok")
    sys.stdout.write(text + "\n")
    return EXIT_OK


def _cmd_keys(args: argparse.Namespace) -> int:
    """Make this machine's CURVE key pair, for endpoints off loopback."""
    import socket

    from online.transport import TransportError, create_key_pair

    folder = args.folder
    if folder is None:
        folder = _load(args).network.keys or Path("keys")
    name = args.name or socket.gethostname()
    try:
        public, secret = create_key_pair(folder, name)
    except TransportError as exc:
        raise UserError(str(exc)) from None
    sys.stdout.write(f"secret key: {secret} (stays on this machine; network.keys: {folder})\n"
                     f"public key: {public} (copy it into network.authorized_keys on every machine of this "
                     f"rig, this one included; it is found there by the name {name!r}, so use that host name "
                     "or address in the endpoints)\n")
    return EXIT_OK


def _add_rig_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rig", metavar="FILE", type=Path, default=None,
                        help="the rig box's file: Bpod, wiring, valve calibration, devices, endpoints, data "
                             "root (default: rig.yaml beside the settings file, else the built-in "
                             "simulated rig)")


def _add_settings_and_rig(parser: argparse.ArgumentParser, giving: str | None = None) -> None:
    """`--settings FILE` (the experiment, `giving` what the command reads from it) and `--rig FILE`."""
    what = f" giving {giving}" if giving else ""
    parser.add_argument("--settings", metavar="FILE", type=Path, default=None,
                        help=f"settings file{what} (default: settings.yaml)")
    _add_rig_option(parser)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; kept separate from main() so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="rig",
        description=(
            "Rig controller for the delayed-response directional-licking task: Bpod state machine, "
            "two-photon frames and online preparatory decoding."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser(
        "check-settings",
        help="validate a settings file and print the resolved settings",
        description=(
            "Validate a settings file and print the resolved settings as YAML (missing keys take their "
            "defaults). Problems are printed one per line to stderr, and the exit status is 2."
        ),
    )
    check.add_argument(
        "settings",
        metavar="file",
        nargs="?",
        type=Path,
        default=None,
        help="settings file (default: the repository's settings.yaml)",
    )
    _add_rig_option(check)
    check.set_defaults(func=_cmd_check_settings)

    run = sub.add_parser(
        "run",
        help="run a session (with the default settings: the simulated rig)",
        description=(
            "Run a session: Bpod (or its emulator), frame source, online module and monitoring GUI. "
            "With the default settings everything is simulated on this machine."
        ),
    )
    run.add_argument(
        "--subject", metavar="ID", default=None, help="subject ID (default: the simulated mouse)"
    )
    run.add_argument(
        "--context", metavar="NAME", default=None, help="task context (default: the subject's current one)"
    )
    run.add_argument("--trials", metavar="N", type=_positive_int, default=None, help="stop after N trials")
    run.add_argument(
        "--minutes", metavar="M", type=_positive_float, default=None, help="stop after M minutes"
    )
    run.add_argument(
        "--speed",
        metavar="X",
        type=_positive_float,
        default=None,
        help="emulator clock speed, times real time (overrides bpod.emulator_speed)",
    )
    run.add_argument("--data", metavar="DIR", type=Path, default=None, help="data root (overrides data.root)")
    run.add_argument("--rois", metavar="DIR", type=Path, default=None,
                     help="the session's ROIs: suite2p output (a plane folder, or the folder of "
                          "plane0..planeN) or rois.npz (overrides online.rois; default: detect)")
    _add_settings_and_rig(run)
    run.add_argument("--no-gui", action="store_true", help="do not open the monitoring window")
    run.add_argument("--weight", metavar="G", type=_positive_float, default=None,
                     help="the subject's weight before the session (g), in the monitor and session.json; "
                          "asked on a real rig when missing")
    run.add_argument("--supplementary-water", metavar="UL", type=float, default=None,
                     help="water given after the session besides the valves' (uL); asked on a real rig "
                          "when missing")
    run.set_defaults(func=_cmd_run)

    calibrate = sub.add_parser(
        "calibrate-valves", help="measure the reward valves and write their curves into the rig file",
        description="Open each valve --drops times at each of --durations (a Bpod state machine "
                    "per batch; the emulator on the simulated rig), take the total weight of each batch "
                    "(asked on stdin, or --weights FILE: CSV valve,duration_s,grams or a YAML list of "
                    "those), fit volume per drop against open time, print the points and the fit, save a "
                    "figure next to the rig file and rewrite bpod.valve_calibration in it (dated; its "
                    "other lines are kept).")
    _add_settings_and_rig(calibrate)
    calibrate.add_argument("--valves", type=_sides, default=("left", "right"),
                           help="left, right or left,right (default: both)")
    calibrate.add_argument("--durations", metavar="S,S,...", type=_seconds_list, default=(0.015, 0.03, 0.06),
                           help="open times in seconds (default: 0.015,0.03,0.06)")
    calibrate.add_argument("--drops", metavar="N", type=_positive_int, default=100,
                           help="openings per valve and open time (default: 100)")
    calibrate.add_argument("--interval", metavar="S", type=_positive_float, default=0.2,
                           help="time between openings in seconds (default: 0.2)")
    calibrate.add_argument("--weights", metavar="FILE", type=Path, default=None,
                           help="the measured weights (default: ask for each on stdin)")
    calibrate.set_defaults(func=_cmd_calibrate_valves)

    hardware = sub.add_parser(
        "check-hardware", help="self-test the rig box: Bpod, modules, wiring, lick sensors, valves, cables",
        description="Connect the Bpod (the emulator on the simulated rig), list its modules and check each "
                    "wiring line: lick sensors report a touch when asked, valves open and close, loopback "
                    "cables (checks.loopbacks) carry their output; devices add their own checks. One "
                    "pass/fail line per check; exit status 1 if any fails.")
    _add_settings_and_rig(hardware)
    hardware.add_argument("--json", action="store_true", help="print one JSON object")
    hardware.set_defaults(func=_cmd_check_hardware)

    monitor = sub.add_parser(
        "monitor",
        help="open the monitoring window on the running session",
        description=(
            "Open the monitoring window: live registered frame with ROI outlines, ROI traces, preparatory "
            "decoding, trial outcomes, licks, Perf100, health, and session controls. It only listens "
            "(lossy) and sends control requests: closing it leaves the session running. `rig run` opens "
            "it by itself when a display is available."
        ),
    )
    _add_settings_and_rig(monitor, "network endpoints and contexts")
    monitor.add_argument("--demo", action="store_true",
                         help="run a short simulated session in this process and watch it")
    monitor.add_argument("--screenshot", metavar="FILE.png", type=Path, default=None,
                         help="save the window to FILE.png after --seconds and exit "
                              "(renders offscreen without a display)")
    monitor.add_argument("--seconds", metavar="S", type=_positive_float, default=None,
                         help="close after S seconds (with --screenshot, default 8 for --demo, 5 otherwise)")
    monitor.add_argument("--speed", metavar="X", type=_positive_float, default=None,
                         help="--demo only: simulated clock speed, times real time (default 20)")
    monitor.set_defaults(func=_cmd_monitor)

    online = sub.add_parser(
        "online", help="run the online module on its own (e.g. on an analysis PC)",
        description="The online imaging module in the foreground, with the settings of a settings.yaml "
                    "(`rig run` starts it itself when online.start_with_rig). Ctrl-C stops it cleanly.")
    _add_settings_and_rig(online)
    online.add_argument("--session", metavar="DIR", type=Path, default=None,
                        help="folder for the online outputs (default: <data.root>/online/<date_time>)")
    online.add_argument("--subject-dir", metavar="DIR", type=Path, default=None,
                        help="<data_root>/<subject>: where the subject's coding directions are kept")
    online.add_argument("--rois", metavar="DIR", type=Path, default=None,
                        help="suite2p output (a plane folder, or the folder of plane0..planeN), or a "
                             "folder/file with rois.npz (default: online.rois, else detect)")
    online.add_argument("--app-port", metavar="PATH", default=None,
                        help="the Bpod's APP serial port (firmware 23), for the closed loop")
    online.add_argument("--alignment", choices=("trigger", "aux"), default="trigger",
                        help="trigger: loop mode (a file per trial); aux: continuous, aux-trigger edges")
    online.set_defaults(func=_cmd_online)

    replay = sub.add_parser(
        "replay", help="run the online pipeline over recorded ScanImage files",
        description="The online pipeline over a ScanImage file or a folder of per-trial files, as fast as it "
                    "can, with the online settings of a settings.yaml. Several sessions (session folders, a "
                    "subject folder, several PATHs) run in parallel on Dask distributed: a local cluster of "
                    "worker processes, or an existing cluster with --scheduler.",
        fromfile_prefix_chars="@")
    replay.add_argument("path", metavar="PATH", type=Path, nargs="+",
                        help="a ScanImage .tif file or a folder of them; or several, session folders, "
                             "subject folders (@FILE: paths from FILE, one per line)")
    _add_settings_and_rig(replay)
    replay.add_argument("--rois", metavar="DIR", type=Path, default=None,
                        help="suite2p plane folder, or rois.npz")
    replay.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="output folder (default: <folder>/online_replay)")
    replay.add_argument("--trials", metavar="TRIALS_JSONL", type=Path, default=None,
                        help="the session's trials.jsonl: decode trials too")
    replay.add_argument("--alignment", choices=("trigger", "aux"), default="trigger")
    cluster = replay.add_mutually_exclusive_group()
    cluster.add_argument("--workers", metavar="N", type=_positive_int, default=None,
                         help="several sessions: worker processes of the local cluster (default: one per "
                              "core)")
    cluster.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                         help="several sessions: the scheduler of an existing Dask cluster to run them on")
    replay.set_defaults(func=_cmd_replay)

    study = sub.add_parser(
        "simulate-study",
        help="simulate days of training: one rig run per day on the emulator",
        description=(
            "Run one simulated session per day for one subject on the emulator, the simulated mouse "
            "carrying its learning and its field of view from day to day. Contexts follow --schedule "
            "(CONTEXT:DAYS,...) or, with --days N, the rig switches them at criterion."
        ),
    )
    study.add_argument("--subject", metavar="ID", required=True, help="subject ID (a new or simulated one)")
    study.add_argument("--schedule", metavar="PLAN", default=None,
                       help="contexts by day, e.g. tactile:3,tactile-reversed:4,tactile:2")
    study.add_argument("--days", metavar="N", type=_positive_int, default=None,
                       help="N days, contexts switched by the rig at criterion (instead of --schedule)")
    study.add_argument("--trials-per-session", metavar="N", type=_positive_int, default=150,
                       help="trials per day (default: 150)")
    study.add_argument("--speed", metavar="X", type=_positive_float, default=50.0,
                       help="emulator clock speed, times real time (default: 50)")
    study.add_argument("--data", metavar="DIR", type=Path, default=None,
                       help="data root (overrides data.root)")
    _add_settings_and_rig(study)
    study.set_defaults(func=_cmd_simulate_study)

    analyze = sub.add_parser(
        "analyze",
        help="a subject's sessions analysed as in the paper: figures and an HTML report",
        description=(
            "Read every session of a subject and report learning per context, trials to criterion, CD "
            "similarity across blocks with split-half ceilings, cross-decoding by block and by session, "
            "the memory trace and per-context PSTHs. Recomputed from the session files alone."
        ),
    )
    analyze.add_argument("subject_dir", metavar="SUBJECT_DIR", type=Path, help="the subject's data folder")
    analyze.add_argument("--out", metavar="DIR", type=Path, default=None,
                         help="where the figures and report go (default: SUBJECT_DIR/analysis)")
    analyze.add_argument("--json", action="store_true", help="print the results as one JSON object")
    analyze.add_argument("--method", choices=["lda", "classic", "lda_eigenvector"], default="lda",
                         help="how a CD is computed (default: lda, the paper's)")
    analyze.add_argument("--min-trials-per-side", metavar="N", type=_positive_int, default=50,
                         help="correct trials per side a block or session needs (default: 50)")
    analyze.add_argument("--repeats", metavar="N", type=_positive_int, default=10,
                         help="random halves per comparison (default: 10)")
    analyze.add_argument("--activity", choices=["deconvolved", "dff"], default="deconvolved",
                         help="the activity analysed (default: deconvolved, dF/F where a session has none)")
    analyze.set_defaults(func=_cmd_analyze)

    summary = sub.add_parser("summary", help="summarise a finished (or running) session from its folder")
    summary.add_argument("session", metavar="SESSION_DIR", type=Path, help="the session's folder")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(func=_cmd_summary)

    export = sub.add_parser(
        "export-nwb", help="write sessions as NWB files (DANDI naming)",
        description="Write a session folder, or every ended session of a subject folder not yet exported, "
                    "as NWB 2.x: <data root>/nwb/sub-<id>/sub-<id>_ses-<id>_behavior+ophys.nwb.")
    export.add_argument("path", metavar="SESSION_DIR|SUBJECT_DIR", type=Path,
                        help="a session folder, or a subject folder")
    export.add_argument("--out", metavar="FILE", type=Path, default=None,
                        help="the NWB file to write (one session only)")
    export.set_defaults(func=_cmd_export_nwb)

    keys = sub.add_parser(
        "keys", help="make this machine's CURVE key pair (for endpoints off loopback)",
        description="Write NAME.key (public) and NAME.key_secret (mode 0600) for ZeroMQ CURVE; "
                    "never overwrites.",
    )
    keys.add_argument("--folder", metavar="DIR", type=Path, default=None,
                      help="where to write them (default: network.keys of the settings, else ./keys)")
    keys.add_argument("--name", default=None,
                      help="the host name or address other machines reach this one by "
                           "(default: the host name)")
    _add_settings_and_rig(keys, "network.keys")
    keys.set_defaults(func=_cmd_keys)

    for name, text in (("switch-context", "switch the running session's context at the next trial boundary"),
                       ("pause", "pause the running session after the current trial"),
                       ("resume", "resume a paused session"),
                       ("stop", "stop the running session after the current trial"),
                       ("status", "print the running session's status"),
                       ("valve", "open a reward valve of the running session for one calibrated drop (a free "
                                 "drop) or, with --flush, for session.flush_s")):
        control = sub.add_parser(name, help=text, description=text)
        if name == "switch-context":
            control.add_argument("name", metavar="NAME", help="context name (from settings.yaml contexts)")
        if name == "valve":
            control.add_argument("side", choices=("left", "right"), help="which valve")
            control.add_argument("--flush", action="store_true", help="a flush instead of one drop")
        _add_settings_and_rig(control, "network.control")
        control.set_defaults(func=_cmd_control, command=name)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rig` console script and `python -m rig`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
