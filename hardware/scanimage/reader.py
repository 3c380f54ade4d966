"""`ScanImageFile`: a finished ScanImage TIFF as typed metadata plus (time, plane, channel) frames.

Pixels and descriptions come from scanimage-tiff-reader (fast, made by ScanImage's authors). tifffile is
used only where that library cannot help: reading the Software/Artist tags of files that lost the byte-16
block, and as the pixel backend for TIFFs scanimage-tiff-reader refuses. Works for ScanImage 2016+ BigTIFF
(with or without the block), the 2018a JSON variant and ScanImage 3.x classic TIFF (which has no per-frame
timestamps: none are synthesised, `timestamps_s` is None).

Damaged files: the pure IFD walker (tiff_index.py) first finds the pages that are wholly on disk and well
formed; only those are read (a library would hand back the garbage of a page cut short), and `damage` says
where the file stops being readable. Text that is not UTF-8 is read with those bytes replaced and listed
in `problems`. Every failure is a ScanImageError whose message is one sentence naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hardware.scanimage.header import (
    FLAVOR_SI3,
    AcquisitionLayout,
    FrameMetadata,
    StaticMetadata,
    acquisition_layout,
    parse_frame_description,
    parse_static_metadata,
)
from hardware.scanimage.tiff_index import (
    FinishedIndex,
    PageIndex,
    TiffFormatError,
    TiffHeaderError,
    index_finished_file,
    read_scanimage_block,
)

logger = logging.getLogger(__name__)

# The frameTimestamps_sec line of a `key = value` page description, with a plain decimal value: read without
# parsing the whole description (replay reads every page's timestamp). Anything else takes the full parser.
_TIMESTAMP_LINE = re.compile(
    r"^[ \t]*frameTimestamps_sec[ \t]*=[ \t]*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[ \t]*\r?$",
    re.MULTILINE,
)


class ScanImageError(Exception):
    """A file that cannot be read as a ScanImage recording; the message is one sentence for the user."""


class NotATiffError(ScanImageError):
    """The file is not a TIFF at all."""


class NotScanImageError(ScanImageError):
    """A TIFF without ScanImage metadata."""


class DamagedFileError(ScanImageError):
    """A ScanImage TIFF cut short or corrupt before any readable page, or where pixels were asked for."""


@contextlib.contextmanager
def quiet_tifffile(level: int = logging.CRITICAL) -> Iterator[None]:
    """tifffile's log held to `level` and above: it logs each structural problem it meets, and the reader
    reports damage in one sentence itself (the writer: 'contains no pages' on its header-only file)."""
    tifffile_logger = logging.getLogger("tifffile")
    previous = tifffile_logger.level
    tifffile_logger.setLevel(level)
    try:
        yield
    finally:
        tifffile_logger.setLevel(previous)


@dataclass(frozen=True)
class TriggerTimes:
    """Trigger edges on the imaging clock (seconds since the acquisition mode started).

    `acquisition` holds (acquisition number, start-trigger time) for acquisitions that had a trigger;
    `aux` the edges seen on auxTrigger0..3 in file order.
    """

    acquisition: tuple[tuple[int, float], ...] = ()
    next_file_markers: tuple[float, ...] = ()
    aux: tuple[tuple[float, ...], ...] = ((), (), (), ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "acquisition": [[number, time] for number, time in self.acquisition],
            "next_file_markers": list(self.next_file_markers),
            "aux": [list(edges) for edges in self.aux],
        }


class _Backend(Protocol):
    n_pages: int
    page_shape: tuple[int, int]
    dtype: np.dtype

    def data(self, start: int, stop: int) -> np.ndarray: ...

    def description(self, index: int) -> str: ...

    def static_text(self) -> str: ...

    def close(self) -> None: ...


class _SitrBackend:
    """scanimage-tiff-reader: the default, fastest path."""

    def __init__(self, path: Path) -> None:
        from ScanImageTiffReader import ScanImageTiffReader

        self._reader = ScanImageTiffReader(str(path))
        shape = list(self._reader.shape())
        self.n_pages = len(self._reader)
        self.page_shape = (int(shape[-2]), int(shape[-1]))
        self.dtype = np.dtype(self._reader.dtype())

    def data(self, start: int, stop: int) -> np.ndarray:
        if self.n_pages == 1:  # the library reports a 2-D shape for one page; ranges misbehave there
            return self._reader.data().reshape(1, *self.page_shape)[start:stop]
        return self._reader.data(beg=start, end=stop)

    def description(self, index: int) -> str:
        return self._reader.description(index)

    def static_text(self) -> str:
        return self._reader.metadata()

    def close(self) -> None:
        self._reader.close()


class _TifffileBackend:
    """tifffile, for TIFFs that scanimage-tiff-reader does not open."""

    def __init__(self, path: Path) -> None:
        import tifffile

        try:
            with quiet_tifffile():
                self._tif = tifffile.TiffFile(path)
                pages = self._tif.pages
                self.n_pages = len(pages)
                first = pages.first if self.n_pages else None
        except tifffile.TiffFileError as exc:
            raise NotATiffError(f"{path}: not a TIFF file") from exc
        except Exception as exc:  # tifffile meets garbage with struct, index and value errors
            raise DamagedFileError(f"{path}: a damaged TIFF file ({exc})") from exc
        if first is None:
            self._tif.close()
            raise NotATiffError(f"{path}: TIFF file without pages")
        self.page_shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = np.dtype(first.dtype)

    def data(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self.page_shape), self.dtype)
        with quiet_tifffile():
            return np.stack([self._tif.pages[i].asarray() for i in range(start, stop)])

    def description(self, index: int) -> str:
        with quiet_tifffile():
            return self._tif.pages[index].description

    def static_text(self) -> str:
        with open(self._tif.filehandle.path, "rb") as fh:
            block = read_scanimage_block(fh)
        return "" if block is None else block.si_text + "\n" + block.roi_text

    def close(self) -> None:
        self._tif.close()


class _IndexBackend:
    """The walker's own pages, for damaged files: libraries trust sizes and offsets that damage may have
    changed (scanimage-tiff-reader asked for gigabytes on a cut ScanImage 3.8 file); every byte read here
    was checked to lie in the file."""

    def __init__(self, path: Path, index: FinishedIndex) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - held for the file's lifetime, closed in close()
        self._index = index
        first = index.pages[0]
        self.n_pages = len(index.pages)
        self.page_shape = (first.height, first.width)
        self.dtype = first.dtype.newbyteorder("=")

    def data(self, start: int, stop: int) -> np.ndarray:
        pages = self._index.pages[start:stop]
        if not pages:
            return np.empty((0, *self.page_shape), self.dtype)
        return np.stack([page.read_pixels(self._fh) for page in pages])

    def description(self, index: int) -> str:
        return self._index.pages[index].description

    def static_text(self) -> str:
        block = self._index.block
        return "" if block is None else block.si_text + "\n" + block.roi_text

    def close(self) -> None:
        self._fh.close()


def _open_backend(path: Path, index: FinishedIndex | None) -> _Backend:
    if index is not None and index.damage is not None:
        try:
            return _IndexBackend(path, index)
        except TiffFormatError as exc:  # a sample format the walker does not read
            logger.debug("%s: no walker backend (%s)", path.name, exc)
    try:
        return _SitrBackend(path)
    except Exception as exc:  # the library raises bare Exception with its log text
        logger.debug("scanimage-tiff-reader cannot open %s (%s); trying tifffile", path, exc)
    return _TifffileBackend(path)


def _static_from_tags(path: Path) -> tuple[str, str]:
    """Software (SI text) and Artist (ROI JSON) of page 0 through tifffile, for files the walker does not
    index: the copy of the static header in every page."""
    import tifffile

    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        software = page.tags.valueof(305) or ""
        artist = page.tags.valueof(315) or ""
    return (software if isinstance(software, str) else ""), (artist if isinstance(artist, str) else "")


def _finished_index(path: Path) -> FinishedIndex | None:
    """The walker's index of the complete pages, or None for a layout it does not read (compressed or tiled
    pages: the libraries read those and judge them)."""
    try:
        index = index_finished_file(path)
    except TiffHeaderError as exc:
        raise NotATiffError(f"{path}: {exc}") from None
    except TiffFormatError as exc:
        logger.debug("%s: not indexed (%s)", path.name, exc)
        return None
    if not index.pages:
        if index.damage is None:
            raise NotATiffError(f"{path}: TIFF file without pages")
        if index.header is None:
            raise NotATiffError(f"{path}: {index.damage}")
        raise DamagedFileError(f"{path}: no readable page: {index.damage}")
    return index


class ScanImageFile:
    """One ScanImage TIFF: metadata, layout and frames. Use as a context manager (or call `close()`).

    Shape is (frames, planes, channels, height, width): frames are time points, planes include saved
    flyback frames (`flyback_planes` of them, at the end of each volume), channels follow `channels`
    (the saved channel numbers). Pages are ordered ((t * planes + z) * channels + c).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self._index = _finished_index(self.path)
        self._backend = _open_backend(self.path, self._index)
        self._n_pages = self._backend.n_pages
        self.damage: str | None = None
        """Why the readable pages end before the file's last page (cut short, corrupt IFD); None: whole."""
        if self._index is not None:
            self.damage = self._index.damage
            if len(self._index.pages) < self._n_pages:
                self._n_pages = len(self._index.pages)
                self.damage = self.damage or f"page {self._n_pages} is damaged"
        self._text_problems: list[str] = []
        self._undecodable_pages: set[int] = set()
        try:
            self.static, self.has_scanimage_block = self._read_static()
        except BaseException:
            self._backend.close()
            raise
        self.layout: AcquisitionLayout = acquisition_layout(self.static.values)
        for note in self.layout.notes:
            logger.info("%s: %s", self.path.name, note)
        if self.n_pages % self.layout.pages_per_frame:
            logger.warning(
                "%s: %d pages is not a whole number of time points (%d pages each); the last %d are "
                "left out of frames()",
                self.path.name,
                self.n_pages,
                self.layout.pages_per_frame,
                self.n_pages % self.layout.pages_per_frame,
            )
        self._metadata_cache: dict[int, FrameMetadata] = {}

    def _static_text(self) -> str:
        """The byte-16 block's text; when it is not UTF-8, the walker's copy with those bytes replaced."""
        block = self._index.block if self._index is not None else None
        try:
            text = self._backend.static_text()
        except UnicodeDecodeError:
            text = "" if block is None else block.si_text + "\n" + block.roi_text
        if block is not None and block.undecodable:
            self._text_problems.append("its ScanImage header (the block at byte 16) is not UTF-8 text, read "
                                       "with those bytes replaced")
        return text

    def _tag_text(self) -> tuple[str, str]:
        """Software and Artist of page 0 (the static header when the block is missing)."""
        if self._index is None:
            return _static_from_tags(self.path)
        first = self._index.pages[0]
        if first.undecodable:
            self._text_problems.append("the ScanImage header in its Software/Artist tags is not UTF-8 text, "
                                       "read with those bytes replaced")
        return first.software or "", first.artist or ""

    def _read_static(self) -> tuple[StaticMetadata, bool]:
        text = self._static_text()
        if text.strip():
            return parse_static_metadata(text), True
        first = self.description(0) if self.n_pages else ""
        if first.lstrip().startswith("state."):
            return parse_static_metadata(first), False
        software, artist = self._tag_text()
        if software.lstrip().startswith("SI."):
            logger.info("%s: no ScanImage block at byte 16; using the Software/Artist tags", self.path.name)
            return parse_static_metadata(software, artist), False
        raise NotScanImageError(
            f"{self.path}: a TIFF file, but not from ScanImage (no ScanImage block, no SI.* Software tag, "
            "no state.* description)"
        )

    # --- lifetime -------------------------------------------------------------------------------------

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> ScanImageFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- static facts ---------------------------------------------------------------------------------

    @property
    def header(self) -> dict[str, Any]:
        """Flat `SI.*` (or `state.*`) keys with typed values."""
        return self.static.values

    @property
    def rois(self) -> dict[str, Any]:
        """The ROI-group JSON ({} for ScanImage 3.x)."""
        return self.static.rois

    @property
    def version(self) -> str | None:
        return self.layout.version

    @property
    def is_scanimage3(self) -> bool:
        return self.static.flavor == FLAVOR_SI3

    @property
    def n_pages(self) -> int:
        """Pages that can be read (all of them, unless the file is damaged: see `damage`)."""
        return self._n_pages

    @property
    def problems(self) -> list[str]:
        """What is wrong with the file, one sentence each (empty for a sound file): the damage, and text that
        is not UTF-8 in the parts read so far (the summary reads every page's description)."""
        damage = [] if self.damage is None else [
            f"damaged: {self.damage}; the first {self.n_pages} of its pages are readable"]
        return damage + self.text_problems

    @property
    def text_problems(self) -> list[str]:
        """Text that is not UTF-8 in the parts read so far (all pixels are still read)."""
        out = list(self._text_problems)
        if self._undecodable_pages:
            pages = sorted(self._undecodable_pages)
            more = f" and {len(pages) - 1} more page(s)" if len(pages) > 1 else ""
            out.append(f"the description of page {pages[0]}{more} is not UTF-8 text, read with those bytes "
                       "replaced")
        return out

    @property
    def channels(self) -> list[int]:
        """Saved channel numbers, in page order (SI.hChannels.channelSave)."""
        return list(self.layout.channels)

    @property
    def planes(self) -> int:
        return self.layout.planes

    @property
    def flyback_planes(self) -> int:
        return self.layout.flyback_planes

    @property
    def n_frames(self) -> int:
        return self.n_pages // self.layout.pages_per_frame

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        height, width = self._backend.page_shape
        return (self.n_frames, self.planes, len(self.channels), height, width)

    @property
    def dtype(self) -> np.dtype:
        return self._backend.dtype

    @property
    def frame_rate_hz(self) -> float | None:
        """Rate of time points: scanVolumeRate (or scanFrameRate / planes) for volumes, else scanFrameRate."""
        return self.layout.frame_rate_hz

    # --- pixels ---------------------------------------------------------------------------------------

    def page(self, index: int) -> np.ndarray:
        """One page (height, width)."""
        if not 0 <= index < self.n_pages:
            raise IndexError(f"page {index} out of range (file has {self.n_pages})")
        return self._pixels(index, index + 1)[0]

    def _pixels(self, start: int, stop: int) -> np.ndarray:
        """Pages [start, stop) from the library; its failures (bare Exceptions from scanimage-tiff-reader,
        value and OS errors from tifffile) become one DamagedFileError."""
        try:
            return self._backend.data(start, stop)
        except Exception as exc:
            raise DamagedFileError(f"{self.path}: pages {start}-{stop - 1} cannot be read ({exc})") from exc

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Time points [start, stop) as (n, planes, channels, height, width)."""
        n_frames = self.n_frames
        stop = n_frames if stop is None else min(stop, n_frames)
        start = max(0, start)
        per_frame = self.layout.pages_per_frame
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        data = self._pixels(start * per_frame, stop * per_frame)
        return data.reshape(stop - start, *self.shape[1:])

    def frames_view(self) -> np.ndarray | None:
        """Every time point as a read-only, zero-copy view of the file (n, planes, channels, height, width)
        through a memory map, or None when the pages are not laid out for that (compressed or split pixel
        data, unequal page spacing, foreign byte order, ...): then use `frames()`. Same values as
        `frames()`, without reading and copying the pixels up front (replay's fast path)."""
        n_pages = self.n_frames * self.layout.pages_per_frame
        if n_pages == 0 or self._index is None or len(self._index.pages) < n_pages:
            return None
        pages: list[PageIndex] = self._index.pages[:n_pages]
        try:
            dtype = pages[0].dtype
        except TiffFormatError as exc:
            logger.debug("%s: no mapped view (%s)", self.path.name, exc)
            return None
        height, width = self._backend.page_shape
        if dtype != self.dtype or not dtype.isnative:
            return None
        size = height * width * dtype.itemsize
        starts = []
        for page in pages:
            offsets, counts = page.strip_offsets, page.strip_byte_counts
            if (page.shape != (height, width) or page.dtype != dtype or sum(counts) != size
                    or any(o + c != nxt for o, c, nxt in zip(offsets, counts, offsets[1:], strict=False))):
                return None
            starts.append(offsets[0])
        stride = starts[1] - starts[0] if n_pages > 1 else size
        if stride < size or any(b - a != stride for a, b in zip(starts, starts[1:], strict=False)):
            return None
        try:
            mapped = np.memmap(self.path, dtype=np.uint8, mode="r")
            view = np.ndarray((n_pages, height, width), dtype, buffer=mapped, offset=starts[0],
                              strides=(stride, width * dtype.itemsize, dtype.itemsize))
        except (OSError, ValueError, TypeError) as exc:
            logger.debug("%s: no mapped view (%s)", self.path.name, exc)
            return None
        return view.reshape(self.shape)

    def frame(self, index: int) -> np.ndarray:
        """One time point (planes, channels, height, width)."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (file has {self.n_frames})")
        return self.frames(index, index + 1)[0]

    def page_position(self, index: int) -> tuple[int, int, int]:
        """(frame, plane, channel index) of a page."""
        return self.layout.page_position(index)

    # --- per-page metadata ----------------------------------------------------------------------------

    def description(self, index: int) -> str:
        """Page `index`'s ImageDescription; text that is not UTF-8 comes with those bytes replaced and the
        page listed in `problems`."""
        try:
            return self._backend.description(index)
        except UnicodeDecodeError:
            if self._index is None:
                raise DamagedFileError(f"{self.path}: page {index}'s description is not UTF-8 text") from None
            self._undecodable_pages.add(index)
            return self._index.pages[index].description

    def frame_metadata(self, index: int) -> FrameMetadata:
        """The typed ImageDescription of page `index` (empty for ScanImage 3.x pages)."""
        cached = self._metadata_cache.get(index)
        if cached is None:
            if not 0 <= index < self.n_pages:
                raise IndexError(f"page {index} out of range (file has {self.n_pages})")
            if self.is_scanimage3:
                cached = FrameMetadata(flavor=FLAVOR_SI3)
            else:
                cached = parse_frame_description(self.description(index))
            self._metadata_cache[index] = cached
        return cached

    def _first_channel_pages(self) -> Sequence[int]:
        return range(0, self.n_pages, len(self.channels))

    def _fast_timestamp(self, index: int) -> float | None:
        """frameTimestamps_sec of a page read from its one line (None: use the full parser instead)."""
        cached = self._metadata_cache.get(index)
        if cached is not None:
            return cached.timestamp_s
        text = self.description(index)
        if text.lstrip().startswith("{") or "\x00" in text.rstrip("\x00"):
            return None  # JSON descriptions, or NULs inside the text: the parser's rules apply
        found = _TIMESTAMP_LINE.findall(text)
        if len(found) != 1 or text.count("frameTimestamps_sec") != 1:
            return None
        return float(found[0])

    @cached_property
    def page_timestamps_s(self) -> np.ndarray | None:
        """frameTimestamps_sec of every page (NaN where missing); None when the file has none."""
        if self.is_scanimage3:
            logger.info("%s: ScanImage 3.x stores no frame timestamps; none are synthesised", self.path.name)
            return None
        stamps = np.full(self.n_pages, np.nan)
        for index in range(self.n_pages):
            value = self._fast_timestamp(index)
            if value is None:
                value = self.frame_metadata(index).timestamp_s
            if value is not None:
                stamps[index] = value
        if np.isnan(stamps).all():
            return None
        return stamps

    @property
    def timestamps_s(self) -> np.ndarray | None:
        """One timestamp per time point (its first page), or None if the file has no timestamps."""
        stamps = self.page_timestamps_s
        if stamps is None:
            return None
        return stamps[: self.n_frames * self.layout.pages_per_frame : self.layout.pages_per_frame].copy()

    @property
    def plane_timestamps_s(self) -> np.ndarray | None:
        """(time points, planes): each plane frame's own timestamp (its first channel's page; planes of a
        volume are scanned one after the other), or None if the file has no timestamps."""
        stamps = self.page_timestamps_s
        if stamps is None:
            return None
        _, planes, channels, _, _ = self.shape
        n = self.n_frames * self.layout.pages_per_frame
        return stamps[:n].reshape(self.n_frames, planes, channels)[:, :, 0].copy()

    @cached_property
    def trigger_times(self) -> TriggerTimes:
        """Start-trigger, next-file and aux-trigger times gathered from the page descriptions."""
        if self.is_scanimage3:
            return TriggerTimes()
        acquisitions: dict[int, float] = {}
        markers: list[float] = []
        aux: list[list[float]] = [[], [], [], []]
        for index in self._first_channel_pages():
            meta = self.frame_metadata(index)
            if meta.acq_trigger_timestamp_s is not None and meta.acquisition_number is not None:
                acquisitions.setdefault(meta.acquisition_number, meta.acq_trigger_timestamp_s)
            marker = meta.next_file_marker_timestamp_s
            if marker is not None and (not markers or markers[-1] != marker):
                markers.append(marker)
            for channel, edges in enumerate(meta.aux_triggers):
                aux[channel].extend(edges)
        return TriggerTimes(
            acquisition=tuple(sorted(acquisitions.items())),
            next_file_markers=tuple(markers),
            aux=tuple(tuple(edges) for edges in aux),
        )

    # --- summary --------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for `python -m hardware.scanimage info`."""
        frames, planes, channels, height, width = self.shape
        stamps = self.timestamps_s
        finite = stamps[np.isfinite(stamps)] if stamps is not None else np.empty(0)
        rate = self.frame_rate_hz
        return {
            "file": str(self.path),
            "version": self.version,
            "frames": frames,
            "planes": planes,
            "flyback_planes": self.flyback_planes,
            "channels": channels,
            "saved_channels": self.channels,
            "height": height,
            "width": width,
            "pages": self.n_pages,
            "dtype": self.dtype.name,
            "frame_rate_hz": rate if rate is not None and math.isfinite(rate) else None,
            "timestamps_s": [float(finite[0]), float(finite[-1])] if len(finite) else None,
            "trigger_times": self.trigger_times.to_dict(),
            "acq_state": self.layout.acq_state,
            "scanimage_block": self.has_scanimage_block,
            "header_flavor": self.static.flavor,
            "malformed_header_lines": len(self.static.malformed),
            "notes": list(self.layout.notes),
            "damage": self.damage,
            "problems": self.problems,
        }
