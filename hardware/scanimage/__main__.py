"""`python -m hardware.scanimage`: inspect a ScanImage file, follow an acquisition folder, adapt a stream.

    info FILE [--json]                       summary: version, shape, dtype, rate, timestamps, triggers
    follow DIR [--jsonl] [--idle-timeout S]  one line per page as ScanImage writes it
           [--publish ENDPOINT [--lossy]]    ... and publish each page in the wire format
    adapt --from ENDPOINT --to ENDPOINT      ScanImage's ZeroMQ frame stream -> the wire format
          [--lossy] [--idle-timeout S] [--planes N]

Publishing (hardware/scanimage/publish.py): by default on the lossless path, a PUSH socket that connects
to ENDPOINT (the online processor binds it) and waits while nobody takes frames; with --lossy on a PUB
socket bound to ENDPOINT (displays connect), which never waits. `adapt` subscribes (connects) to --from.
Bad input (missing file, not a TIFF, not ScanImage, a bad endpoint) ends as one line on stderr and exit
status 2. `info` on a damaged file (cut short, corrupt IFDs, text that is not UTF-8) prints the summary of
what is readable, then one line saying what is wrong, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("hardware.scanimage")

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more seconds")
    return value


def _format_info(summary: dict[str, Any]) -> str:
    rate = summary["frame_rate_hz"]
    stamps = summary["timestamps_s"]
    triggers = summary["trigger_times"]
    acquisition = ", ".join(f"#{n} at {t:.6f} s" for n, t in triggers["acquisition"]) or "none"
    aux = "; ".join(
        f"aux{n}: {len(edges)} edge(s)" + (f" from {edges[0]:.6f} s" if edges else "")
        for n, edges in enumerate(triggers["aux"])
    )
    block = "yes" if summary["scanimage_block"] else "no (static header from tags or description)"
    lines = [
        f"file:        {summary['file']}",
        f"ScanImage:   {summary['version'] or 'unknown version'} ({summary['header_flavor']} header, "
        f"block at byte 16: {block})",
        f"shape:       {summary['frames']} frames x {summary['planes']} planes x {summary['channels']} "
        f"channels x {summary['height']} x {summary['width']}  (saved channels {summary['saved_channels']}, "
        f"{summary['pages']} pages)",
        f"dtype:       {summary['dtype']}",
        f"frame rate:  {f'{rate:.6g} Hz per time point' if rate else 'unknown'}",
        "timestamps:  "
        + (f"{stamps[0]:.6f} .. {stamps[-1]:.6f} s" if stamps else "none in file (none synthesised)"),
        f"triggers:    acquisition start: {acquisition}",
        f"             {aux}",
    ]
    if summary["acq_state"]:
        lines.append(f"acq state:   {summary['acq_state']}")
    for note in summary["notes"]:
        lines.append(f"note:        {note}")
    for problem in summary["problems"]:
        lines.append(f"problem:     {problem}")
    return "\n".join(lines) + "\n"


def _cmd_info(args: argparse.Namespace) -> int:
    from hardware.scanimage.reader import ScanImageFile

    with ScanImageFile(args.file) as recording:
        summary = recording.summary()
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        sys.stdout.write(_format_info(summary))
    if summary["problems"]:
        sys.stderr.write(f"error: {args.file}: {'; '.join(summary['problems'])}\n")
        return EXIT_USER_ERROR
    return EXIT_OK


def _open_publisher(endpoint: str, lossy: bool) -> Any:
    from hardware.frames.publisher import FramePublisher

    if lossy:
        return FramePublisher.open(display_endpoint=endpoint, source="scanimage")
    return FramePublisher.open(lossless_endpoint=endpoint, source="scanimage")


def _cmd_follow(args: argparse.Namespace) -> int:
    from hardware.scanimage.follower import FolderFollower
    from hardware.scanimage.publish import publish_page

    follower = FolderFollower(
        args.folder, pattern=args.pattern, poll_s=args.poll, idle_timeout_s=args.idle_timeout
    )
    publisher = _open_publisher(args.publish, args.lossy) if args.publish else None
    try:
        for page in follower:
            if publisher is not None:
                publish_page(publisher, page)
            if args.jsonl:
                sys.stdout.write(json.dumps(page.to_json_dict()) + "\n")
            else:
                stamp = "-" if page.timestamp_s is None else f"{page.timestamp_s:.6f}"
                sys.stdout.write(
                    f"{page.file.name} page {page.page_index} frame {page.frame} plane {page.plane} "
                    f"channel {page.channel} t={stamp}\n"
                )
            sys.stdout.flush()
    except KeyboardInterrupt:
        follower.close()
        return EXIT_INTERRUPTED
    finally:
        if publisher is not None:
            publisher.close()
    stats = follower.stats
    report = f"followed {stats.pages} page(s) in {stats.files} file(s); stopped: {stats.stopped_reason}"
    if stats.incomplete_tails:
        report += f"; incomplete last page not emitted in {[name for name, _ in stats.incomplete_tails]}"
    if publisher is not None:
        report += f"; published {json.dumps(publisher.report())}"
    sys.stderr.write(report + "\n")
    return EXIT_OK


def _cmd_adapt(args: argparse.Namespace) -> int:
    from hardware.scanimage.publish import StreamAdapter

    with _open_publisher(args.to, args.lossy) as publisher:
        adapter = StreamAdapter(args.source, publisher, idle_timeout_s=args.idle_timeout, planes=args.planes)
        try:
            adapter.run()
        except KeyboardInterrupt:
            adapter.stopped_reason = "interrupted"
        report = {"stopped": adapter.stopped_reason, **adapter.stats.to_dict(), **publisher.report()}
    sys.stderr.write(f"adapted frame stream: {json.dumps(report)}\n")
    return EXIT_INTERRUPTED if adapter.stopped_reason == "interrupted" else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.scanimage",
        description="Inspect ScanImage TIFF files or follow an acquisition folder.",
    )
    parser.add_argument(
        "--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="summarise a ScanImage TIFF file")
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_cmd_info)
    follow = sub.add_parser("follow", help="print every page of a ScanImage folder as it is written")
    follow.add_argument("folder", type=Path)
    follow.add_argument("--jsonl", action="store_true", help="one JSON object per page")
    follow.add_argument(
        "--idle-timeout", type=_non_negative_float, default=None, metavar="S",
        help="stop after S seconds without a new page (default: follow until interrupted)",
    )  # fmt: skip
    follow.add_argument("--pattern", default="*.tif", help="file-name pattern (default: *.tif)")
    follow.add_argument("--poll", type=_non_negative_float, default=0.05, metavar="S", help="poll interval")
    follow.add_argument("--publish", metavar="ENDPOINT", default=None,
                        help="also publish every page in the wire format (lossless PUSH, connects)")
    follow.add_argument("--lossy", action="store_true",
                        help="publish on a PUB socket bound to ENDPOINT instead (displays)")
    follow.set_defaults(handler=_cmd_follow)
    adapt = sub.add_parser("adapt", help="republish ScanImage's ZeroMQ frame stream in the wire format")
    adapt.add_argument("--from", dest="source", metavar="ENDPOINT", required=True,
                       help="ScanImage's frame-stream PUB endpoint (connects)")
    adapt.add_argument("--to", metavar="ENDPOINT", required=True,
                       help="where to publish (lossless PUSH, connects; with --lossy: PUB, binds)")
    adapt.add_argument("--lossy", action="store_true", help="publish on a PUB socket bound to --to")
    adapt.add_argument(
        "--idle-timeout", type=_non_negative_float, default=None, metavar="S",
        help="stop after S seconds without a message, once one arrived (default: until interrupted)",
    )  # fmt: skip
    adapt.add_argument("--planes", type=int, default=1, metavar="N",
                       help="planes per volume: the stream's frames are planes in turn (default 1)")
    adapt.set_defaults(handler=_cmd_adapt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hardware.scanimage.reader import ScanImageError
    from hardware.scanimage.tiff_index import TiffFormatError
    from online.transport import TransportError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (ScanImageError, TiffFormatError, OSError, TransportError) as exc:
        message = (
            str(exc)
            if not isinstance(exc, OSError) or exc.filename is None
            else (f"{exc.filename}: {exc.strerror or exc}")
        )
        sys.stderr.write(f"error: {message}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
