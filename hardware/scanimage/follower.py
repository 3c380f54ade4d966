"""Follow a ScanImage output folder during acquisition and yield each page once, in order, when complete.

ScanImage in loop mode writes one file per acquisition (one per trial: `stem_00001_00001.tif`,
`stem_00002_00001.tif`, ...), and each file grows page by page. `FolderFollower` polls the folder, walks
new IFDs of the current file with the pure `tiff_index` walker (a page is emitted only when its IFD, tag
values and strip bytes are all on disk), and moves to the next file once one appears and the current
file has nothing pending. An acquisition that stops mid-file ends the iteration after `idle_timeout_s`
without new pages, with the incomplete tail reported (logged and kept in `stats`), never emitted.

The follower is a plain iterator, so publishing on ZeroMQ is one loop around it (the hook for the
frame-source adapter that will use `online/wire.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardware.scanimage.header import (
    AcquisitionLayout,
    FrameMetadata,
    acquisition_layout,
    parse_frame_description,
    parse_static_metadata,
)
from hardware.scanimage.tiff_index import PageIndex, TiffFormatError, TiffIndexer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowedPage:
    """One complete page. `frame` is the time point within the acquisition, `plane` the z index (both from
    0), `channel` the ScanImage channel number (as in channelSave, from 1); `timestamp_s` is
    frameTimestamps_sec (None for ScanImage 3.x)."""

    file: Path
    file_index: int
    page_index: int
    frame: int
    plane: int
    channel: int
    timestamp_s: float | None
    metadata: FrameMetadata
    pixels: np.ndarray

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "file_index": self.file_index,
            "page_index": self.page_index,
            "frame": self.frame,
            "plane": self.plane,
            "channel": self.channel,
            "timestamp_s": self.timestamp_s,
            "frame_number": self.metadata.frame_number,
            "acquisition_number": self.metadata.acquisition_number,
        }


@dataclass
class FollowerStats:
    """What happened, for the caller's report: counts, files skipped, incomplete tails, why it stopped."""

    files: int = 0
    pages: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    incomplete_tails: list[tuple[str, int]] = field(default_factory=list)  # (file name, bytes pending)
    out_of_order: int = 0  # pages whose frameNumbers did not increase within their file (still emitted)
    stopped_reason: str | None = None


@dataclass
class _FollowedFile:
    path: Path
    index: int
    indexer: TiffIndexer
    layout: AcquisitionLayout | None = None
    emitted: int = 0
    last_frame_number: int | None = None


class FolderFollower:
    """Yield every page of every matching file in `folder`, in file-name order, as it completes.

    `poll_s` is the sleep between polls; `idle_timeout_s` ends the iteration when no page arrived for
    that long (None: follow until `stop()`); `settle_s` is how long a file must stay unchanged before an
    incomplete tail is given up when a newer file has appeared; `skip_existing` ignores files already
    present at start (follow only new acquisitions).
    """

    def __init__(
        self,
        folder: str | Path,
        pattern: str = "*.tif",
        poll_s: float = 0.05,
        *,
        idle_timeout_s: float | None = None,
        settle_s: float = 0.25,
        skip_existing: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder}: not a folder")
        self.pattern = pattern
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s
        self.settle_s = settle_s
        self.stats = FollowerStats()
        self._known: set[str] = set()
        self._queue: list[Path] = []
        self._current: _FollowedFile | None = None
        self._file_count = 0
        self._stop = threading.Event()
        if skip_existing:
            self._known.update(path.name for path in self.folder.glob(pattern))

    # --- control --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the iteration after one last poll (safe to call from another thread): pages completed
        before the call are still yielded, an incomplete last page is not."""
        self._stop.set()

    def close(self) -> None:
        if self._current is not None:
            self._current.indexer.close()
            self._current = None

    def __enter__(self) -> FolderFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[FollowedPage]:
        last_page_at = time.monotonic()
        try:
            while not self._stop.is_set():
                pages = self.poll()
                if pages:
                    last_page_at = time.monotonic()
                    yield from pages
                    continue
                if self.idle_timeout_s is not None and time.monotonic() - last_page_at >= self.idle_timeout_s:
                    self._stop_on_idle()
                    return
                self._stop.wait(self.poll_s)
            self.stats.stopped_reason = "stopped"
            yield from self.poll()  # drain what was completed before stop() was called
        finally:
            self.close()

    # --- one poll -------------------------------------------------------------------------------------

    def poll(self) -> list[FollowedPage]:
        """All pages that became complete since the last poll (never blocks)."""
        out: list[FollowedPage] = []
        self._discover()
        while True:
            if self._current is None:
                if not self._queue:
                    break
                self._open(self._queue.pop(0))
                continue
            current = self._current
            try:
                for page in current.indexer.update():
                    followed = self._followed_page(current, page)
                    if followed is None:
                        break
                    out.append(followed)
            except TiffFormatError as exc:
                self._skip(current, str(exc))
                continue
            if self._current is None:
                continue  # skipped: go on with the next file, if any
            if not self._queue:
                break
            if not current.indexer.has_incomplete_tail():
                self._finish(current)
            elif current.indexer.seconds_since_change() >= self.settle_s:
                self._report_tail(current, "a newer file started")
                self._finish(current)
            else:
                break
        return out

    def _discover(self) -> None:
        new = [path for path in self.folder.glob(self.pattern) if path.name not in self._known]
        if not new:
            return
        self._known.update(path.name for path in new)
        self._queue.extend(new)
        self._queue.sort(key=lambda path: path.name)

    def _open(self, path: Path) -> None:
        try:
            indexer = TiffIndexer(path)
        except OSError as exc:
            self.stats.skipped_files.append((path.name, str(exc)))
            logger.warning("cannot open %s: %s; skipped", path, exc)
            return
        self._current = _FollowedFile(path, self._file_count, indexer)
        self._file_count += 1
        self.stats.files += 1
        logger.info("following %s", path)

    def _finish(self, followed: _FollowedFile) -> None:
        logger.info("%s: done after %d page(s)", followed.path.name, followed.emitted)
        followed.indexer.close()
        self._current = None

    def _skip(self, followed: _FollowedFile, reason: str) -> None:
        logger.warning("%s: %s; file skipped", followed.path.name, reason)
        self.stats.skipped_files.append((followed.path.name, reason))
        followed.indexer.close()
        self._current = None

    def _report_tail(self, followed: _FollowedFile, why: str) -> None:
        pending = followed.indexer.pending_bytes
        self.stats.incomplete_tails.append((followed.path.name, pending))
        logger.warning(
            "%s: %s while its last page was incomplete (%d byte(s) after page %d); that page is not emitted",
            followed.path.name,
            why,
            pending,
            followed.emitted - 1,
        )

    def _stop_on_idle(self) -> None:
        self.stats.stopped_reason = "idle timeout"
        current = self._current
        if current is not None and current.indexer.has_incomplete_tail():
            self._report_tail(current, f"acquisition stopped ({self.idle_timeout_s} s without a page)")
        logger.info(
            "no new page for %s s: stopped after %d page(s) in %d file(s)",
            self.idle_timeout_s,
            self.stats.pages,
            self.stats.files,
        )

    # --- pages ----------------------------------------------------------------------------------------

    def _layout(self, followed: _FollowedFile, first: PageIndex) -> AcquisitionLayout | None:
        """Static header from the byte-16 block, else page 0's Software tag, else a 3.x description."""
        block = followed.indexer.block
        if block is not None and block.si_text.strip():
            text = block.si_text
        elif first.software and first.software.lstrip().startswith("SI."):
            text = first.software
        elif first.description.lstrip().startswith("state."):
            text = first.description
        else:
            return None
        return acquisition_layout(parse_static_metadata(text, roi_json="").values)

    def _followed_page(self, followed: _FollowedFile, page: PageIndex) -> FollowedPage | None:
        if followed.layout is None:
            followed.layout = self._layout(followed, page)
            if followed.layout is None:
                self._skip(followed, "no ScanImage metadata (not a ScanImage file)")
                return None
        layout = followed.layout
        metadata = parse_frame_description(page.description)
        n_channels = len(layout.channels)
        channel_index = page.index % n_channels
        if metadata.frame_number_acquisition is not None:
            position = metadata.frame_number_acquisition - 1
            frame, plane = divmod(position, layout.planes)
        else:
            frame, plane, channel_index = layout.page_position(page.index)
        if channel_index == 0 and metadata.frame_number is not None:
            previous = followed.last_frame_number
            if previous is not None and metadata.frame_number <= previous:
                self.stats.out_of_order += 1
                logger.warning(
                    "%s page %d: frameNumbers %d after %d (out of order)",
                    followed.path.name,
                    page.index,
                    metadata.frame_number,
                    previous,
                )
            followed.last_frame_number = metadata.frame_number
        pixels = followed.indexer.read_pixels(page)
        followed.emitted += 1
        self.stats.pages += 1
        return FollowedPage(
            file=followed.path,
            file_index=followed.index,
            page_index=page.index,
            frame=frame,
            plane=plane,
            channel=layout.channels[channel_index],
            timestamp_s=metadata.timestamp_s,
            metadata=metadata,
            pixels=pixels,
        )
