"""A small pure IFD walker for classic TIFF and BigTIFF files that may still be growing.

Libraries that read whole files (scanimage-tiff-reader, tifffile) assume the file is finished. A folder
follower reads files while ScanImage writes them, so it needs to know which pages are *completely* on disk:
a page counts only when its IFD, the tag values we use and all its strip bytes lie inside the current file
size. Writers differ in order: tifffile first links the new IFD from the previous one, then writes the pixel
data, then fills the IFD (so a reader can briefly see a linked IFD that is still zeros); other writers link
last. The checks below accept a page only when every structure it needs is present and plausible, so either
order is safe. Only uncompressed strip images are supported (what ScanImage writes).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

TAG_WIDTH = 256
TAG_LENGTH = 257
TAG_BITS = 258
TAG_COMPRESSION = 259
TAG_DESCRIPTION = 270
TAG_STRIP_OFFSETS = 273
TAG_SAMPLES_PER_PIXEL = 277
TAG_STRIP_BYTE_COUNTS = 279
TAG_PLANAR_CONFIG = 284
TAG_SOFTWARE = 305
TAG_ARTIST = 315
TAG_TILE_WIDTH = 322
TAG_SAMPLE_FORMAT = 339

SCANIMAGE_MAGIC = 0x07030301  # 117637889, the uint32 at byte 16 of ScanImage 2016+ BigTIFF files
_MAX_TAGS = 4096  # a plausibility bound: real pages have ~20 tags; zeros or garbage fail it
# TIFF field type -> (struct code, size in bytes)
_TYPES: dict[int, tuple[str, int]] = {
    1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("s", 1),
    8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4),
    16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8),
}  # fmt: skip
_NUMERIC_TAGS = frozenset(
    {TAG_WIDTH, TAG_LENGTH, TAG_BITS, TAG_COMPRESSION, TAG_STRIP_OFFSETS, TAG_SAMPLES_PER_PIXEL,
     TAG_STRIP_BYTE_COUNTS, TAG_PLANAR_CONFIG, TAG_TILE_WIDTH, TAG_SAMPLE_FORMAT}
)  # fmt: skip


class TiffFormatError(ValueError):
    """The bytes are not a TIFF, or use a layout this walker does not read (compression, tiles)."""


class TiffHeaderError(TiffFormatError):
    """The first bytes are not a TIFF header this walker reads: not a TIFF file at all."""


class TiffChainError(TiffFormatError):
    """The IFD chain loops back: the file is corrupt from that link on."""


def _text(data: bytes) -> tuple[str, bool]:
    """A TIFF text value up to its first NUL, and whether it was not UTF-8 (the bad bytes become U+FFFD)."""
    raw = data.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


class PageStatus(Enum):
    """Why a page is not (yet) usable; COMPLETE pages come back as PageIndex instead."""

    INCOMPLETE = "incomplete"  # some bytes it needs are not on disk yet
    SUSPECT = "suspect"  # structurally complete, but a text value still ends in zeros (maybe mid-write)


@dataclass(frozen=True)
class TiffHeader:
    """Byte order and offset sizes; `first_pointer_pos` is where the offset of the first IFD is stored."""

    byteorder: str
    bigtiff: bool

    @property
    def first_pointer_pos(self) -> int:
        return 8 if self.bigtiff else 4

    @property
    def offset_format(self) -> str:
        return self.byteorder + ("Q" if self.bigtiff else "I")

    @property
    def offset_size(self) -> int:
        return 8 if self.bigtiff else 4

    @property
    def count_format(self) -> str:
        return self.byteorder + ("Q" if self.bigtiff else "H")

    @property
    def entry_size(self) -> int:
        return 20 if self.bigtiff else 12


def parse_tiff_header(data: bytes) -> TiffHeader | None:
    """The header from the first bytes of a file; None if fewer than 16 bytes are there yet."""
    if len(data) >= 2 and data[:2] not in (b"II", b"MM"):
        raise TiffHeaderError("not a TIFF file (the first two bytes are not II or MM)")
    if len(data) < 16:
        return None
    byteorder = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack(byteorder + "H", data[2:4])
    if version == 42:
        return TiffHeader(byteorder, False)
    if version == 43:
        offset_size, zero = struct.unpack(byteorder + "HH", data[4:8])
        if offset_size != 8 or zero != 0:
            raise TiffHeaderError(f"not a TIFF file (BigTIFF with offset size {offset_size}, not 8)")
        return TiffHeader(byteorder, True)
    raise TiffHeaderError(f"not a TIFF file (version field is {version}, expected 42 or 43)")


@dataclass(frozen=True)
class ScanImageBlock:
    """The ScanImage block at byte 16 of a BigTIFF: format version, static `SI.*` text and ROI JSON."""

    version: int
    si_text: str
    roi_text: str
    end: int  # first byte after the block
    undecodable: bool = False  # some of its text was not UTF-8 (those bytes read as U+FFFD)


def parse_scanimage_block(data: bytes) -> ScanImageBlock | None | bool:
    """Parse the block from the first bytes of a file.

    Returns the block, None when the file has no block (not a ScanImage BigTIFF or rewritten by another
    tool), or False when `data` is too short to tell yet (a file that is still being written).
    """
    if len(data) < 32:
        return False
    if data[:4] != b"II+\x00":
        return None
    magic, version, text_size, roi_size = struct.unpack("<IIII", data[16:32])
    if magic != SCANIMAGE_MAGIC:
        return None
    end = 32 + text_size + roi_size
    if len(data) < end:
        return False
    si_text, si_bad = _text(data[32 : 32 + text_size])
    roi_text, roi_bad = _text(data[32 + text_size : end])
    return ScanImageBlock(version, si_text, roi_text, end, si_bad or roi_bad)


def read_scanimage_block(fh: BinaryIO) -> ScanImageBlock | None:
    """The byte-16 block of a finished file, or None if it has none."""
    fh.seek(0)
    head = fh.read(32)
    if len(head) < 32 or head[:4] != b"II+\x00":
        return None
    _, _, text_size, roi_size = struct.unpack("<IIII", head[16:32])
    fh.seek(0)
    block = parse_scanimage_block(fh.read(32 + text_size + roi_size))
    return block if isinstance(block, ScanImageBlock) else None


@dataclass(frozen=True)
class PageIndex:
    """Where one page's pixels and tags are; `end` is the first byte after everything the page uses."""

    index: int
    ifd_offset: int
    next_pointer_pos: int
    byteorder: str
    width: int
    height: int
    bits_per_sample: int
    sample_format: int
    samples_per_pixel: int
    strip_offsets: tuple[int, ...]
    strip_byte_counts: tuple[int, ...]
    description: str
    software: str | None
    artist: str | None
    end: int
    undecodable: tuple[int, ...] = ()  # text tags that were not UTF-8 (those bytes read as U+FFFD)

    @property
    def dtype(self) -> np.dtype:
        kind = {1: "u", 2: "i", 3: "f"}.get(self.sample_format)
        if kind is None or self.bits_per_sample not in (8, 16, 32, 64):
            raise TiffFormatError(
                f"unsupported sample format {self.sample_format} with {self.bits_per_sample} bits"
            )
        return np.dtype(f"{self.byteorder}{kind}{self.bits_per_sample // 8}")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.samples_per_pixel == 1:
            return (self.height, self.width)
        return (self.height, self.width, self.samples_per_pixel)

    def read_pixels(self, fh: BinaryIO) -> np.ndarray:
        """The page as a native-byte-order array (a copy, safe to keep)."""
        chunks = []
        for offset, count in zip(self.strip_offsets, self.strip_byte_counts, strict=True):
            fh.seek(offset)
            chunk = fh.read(count)
            if len(chunk) != count:
                raise TiffFormatError(f"page {self.index}: strip at {offset} is cut short")
            chunks.append(chunk)
        dtype = self.dtype
        array = np.frombuffer(b"".join(chunks), dtype=dtype).reshape(self.shape)
        return array.astype(dtype.newbyteorder("="), copy=True)


def _read_exact(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def read_ifd(
    fh: BinaryIO,
    header: TiffHeader,
    offset: int,
    file_size: int,
    index: int,
    *,
    text_tags: Collection[int] = (TAG_DESCRIPTION,),
    allow_trailing_nul: bool = False,
) -> PageIndex | PageStatus:
    """Index the IFD at `offset`, or say why it is not usable yet.

    Only the tags needed to read pixels and the ASCII tags in `text_tags` are decoded. A complete file
    with a broken IFD also reads as INCOMPLETE: the caller decides when waiting has lasted long enough.
    A text value ending in NUL bytes makes the page SUSPECT unless `allow_trailing_nul`.
    Raises TiffFormatError for a complete page in a layout we do not read.
    """
    bo = header.byteorder
    count_size = 8 if header.bigtiff else 2
    if offset < 8 or offset + count_size > file_size:
        return PageStatus.INCOMPLETE
    (n_tags,) = struct.unpack(header.count_format, _read_exact(fh, offset, count_size))
    if n_tags == 0 or n_tags > _MAX_TAGS:
        return PageStatus.INCOMPLETE  # zeros: the IFD is linked but not written yet
    entries_size = n_tags * header.entry_size
    next_pointer_pos = offset + count_size + entries_size
    if next_pointer_pos + header.offset_size > file_size:
        return PageStatus.INCOMPLETE
    raw = _read_exact(fh, offset + count_size, entries_size)
    entry_format = bo + ("HHQ8s" if header.bigtiff else "HHI4s")
    inline_size = header.offset_size
    numbers: dict[int, tuple[int | float, ...]] = {}
    texts: dict[int, str] = {}
    end = next_pointer_pos + header.offset_size
    suspect = False
    undecodable: list[int] = []
    for tag, type_code, count, value in struct.iter_unpack(entry_format, raw):
        if type_code not in _TYPES:
            return PageStatus.INCOMPLETE  # zeros or garbage where entries should be
        code, item_size = _TYPES[type_code]
        size = count * item_size
        value_offset = -1
        if size > inline_size:
            (value_offset,) = struct.unpack(header.offset_format, value)
            if value_offset + size > file_size:
                return PageStatus.INCOMPLETE
            end = max(end, value_offset + size)
        if tag not in _NUMERIC_TAGS and tag not in text_tags:
            continue
        data = value[:size] if value_offset < 0 else _read_exact(fh, value_offset, size)
        if type_code == 2:
            if len(data) >= 1 and data[0] == 0 and count > 1:
                return PageStatus.INCOMPLETE  # the text is linked but still zeros
            if count >= 2 and data[count - 2] == 0 and not allow_trailing_nul:
                suspect = True  # ends in zeros: maybe padded with NULs, maybe still being written
            texts[tag], bad = _text(data)
            if bad:
                undecodable.append(tag)
        elif tag in _NUMERIC_TAGS and type_code not in (2, 7):
            numbers[tag] = struct.unpack(bo + code * count, data)
    if TAG_TILE_WIDTH in numbers:
        raise TiffFormatError(f"page {index} is tiled; only strip images are supported")
    for required in (TAG_WIDTH, TAG_LENGTH, TAG_STRIP_OFFSETS, TAG_STRIP_BYTE_COUNTS):
        if required not in numbers:
            return PageStatus.INCOMPLETE
    compression = int(numbers.get(TAG_COMPRESSION, (1,))[0])
    if compression != 1:
        raise TiffFormatError(f"page {index} is compressed (scheme {compression}); only raw pages are read")
    width, height = int(numbers[TAG_WIDTH][0]), int(numbers[TAG_LENGTH][0])
    bits = int(numbers.get(TAG_BITS, (1,))[0])
    samples = int(numbers.get(TAG_SAMPLES_PER_PIXEL, (1,))[0])
    strip_offsets = tuple(int(v) for v in numbers[TAG_STRIP_OFFSETS])
    strip_counts = tuple(int(v) for v in numbers[TAG_STRIP_BYTE_COUNTS])
    if width <= 0 or height <= 0 or len(strip_offsets) != len(strip_counts):
        return PageStatus.INCOMPLETE
    if sum(strip_counts) != width * height * samples * bits // 8:
        return PageStatus.INCOMPLETE
    for strip_offset, strip_count in zip(strip_offsets, strip_counts, strict=True):
        if strip_offset == 0 or strip_offset + strip_count > file_size:
            return PageStatus.INCOMPLETE
        end = max(end, strip_offset + strip_count)
    if suspect:
        return PageStatus.SUSPECT
    return PageIndex(
        index=index,
        ifd_offset=offset,
        next_pointer_pos=next_pointer_pos,
        byteorder=bo,
        width=width,
        height=height,
        bits_per_sample=bits,
        sample_format=int(numbers.get(TAG_SAMPLE_FORMAT, (1,))[0]),
        samples_per_pixel=samples,
        strip_offsets=strip_offsets,
        strip_byte_counts=strip_counts,
        description=texts.get(TAG_DESCRIPTION, ""),
        software=texts.get(TAG_SOFTWARE),
        artist=texts.get(TAG_ARTIST),
        end=end,
        undecodable=tuple(undecodable),
    )


class TiffIndexer:
    """Index the pages of a TIFF file as they become complete on disk; call `update()` to catch up.

    Page 0 also gets its Software and Artist tags decoded (ScanImage's static header lives there when the
    byte-16 block is missing). A page whose text still ends in zero bytes is accepted only once the file
    has stopped changing for `settle_s` (a writer padding text with NULs would otherwise stall us).
    """

    def __init__(self, path: str | Path, *, settle_s: float = 0.1) -> None:
        self.path = Path(path)
        self.settle_s = settle_s
        self.pages: list[PageIndex] = []
        self.header: TiffHeader | None = None
        self.block: ScanImageBlock | None = None
        self._block_checked = False
        # unbuffered: a buffered reader would serve stale bytes of a file that another process extends
        self._fh: BinaryIO = open(self.path, "rb", buffering=0)  # noqa: SIM115 - held while the file grows
        self._next_pointer_pos: int | None = None
        self._seen_offsets: set[int] = set()
        self._size = -1
        self._size_changed_at = time.monotonic()
        self._consumed_end = 0

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TiffIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """File size at the last update."""
        return max(self._size, 0)

    def _file_size(self) -> int:
        size = os.fstat(self._fh.fileno()).st_size
        if size != self._size:
            self._size = size
            self._size_changed_at = time.monotonic()
        return size

    def seconds_since_change(self) -> float:
        """Time since the file size last changed (as seen by `update()`)."""
        return time.monotonic() - self._size_changed_at

    def _stable(self) -> bool:
        return time.monotonic() - self._size_changed_at >= self.settle_s

    def _check_block(self, size: int) -> bool:
        """Look for the ScanImage block at byte 16; False while it is still being written."""
        head = _read_exact(self._fh, 0, 32)
        if len(head) < 32:
            return False
        magic, _, text_size, roi_size = struct.unpack("<IIII", head[16:32])
        if magic == SCANIMAGE_MAGIC and head[:4] == b"II+\x00":
            if size < 32 + text_size + roi_size:
                return False
            block = parse_scanimage_block(_read_exact(self._fh, 0, 32 + text_size + roi_size))
            if isinstance(block, ScanImageBlock):
                self.block = block
                self._consumed_end = max(self._consumed_end, block.end)
        self._block_checked = True
        return True

    def update(self) -> list[PageIndex]:
        """Newly complete pages since the last call (in file order). Raises TiffFormatError for non-TIFF
        bytes or an unsupported page layout."""
        size = self._file_size()
        if self.header is None:
            head = _read_exact(self._fh, 0, min(size, 64))
            self.header = parse_tiff_header(head)
            if self.header is None:
                return []
            self._next_pointer_pos = self.header.first_pointer_pos
            self._consumed_end = self.header.first_pointer_pos + self.header.offset_size
        if self.header.bigtiff and not self._block_checked and not self._check_block(size):
            return []  # the ScanImage block is announced but not all on disk yet
        new: list[PageIndex] = []
        header = self.header
        assert self._next_pointer_pos is not None
        while self._next_pointer_pos + header.offset_size <= size:
            raw = _read_exact(self._fh, self._next_pointer_pos, header.offset_size)
            (offset,) = struct.unpack(header.offset_format, raw)
            if offset == 0:
                break
            index = len(self.pages)
            if offset in self._seen_offsets:
                raise TiffChainError(f"corrupt: the link to page {index} loops back to byte {offset}")
            text_tags = (TAG_DESCRIPTION, TAG_SOFTWARE, TAG_ARTIST) if index == 0 else (TAG_DESCRIPTION,)
            page = read_ifd(self._fh, header, offset, size, index, text_tags=text_tags)
            if page is PageStatus.SUSPECT and self._stable():
                page = read_ifd(
                    self._fh, header, offset, size, index, text_tags=text_tags, allow_trailing_nul=True
                )
            if not isinstance(page, PageIndex):
                break
            self._seen_offsets.add(offset)
            self.pages.append(page)
            new.append(page)
            self._next_pointer_pos = page.next_pointer_pos
            self._consumed_end = max(self._consumed_end, page.end)
        return new

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk beyond the last complete page: > 0 means a page is (still) incomplete."""
        return max(0, self.size - self._consumed_end)

    def has_incomplete_tail(self) -> bool:
        """True if a next page is linked or bytes follow the last complete page."""
        if self.header is None:
            return self.size > 0
        pointer = self._next_pointer_pos
        if pointer is not None and pointer + self.header.offset_size <= self.size:
            raw = _read_exact(self._fh, self._next_pointer_pos, self.header.offset_size)
            if struct.unpack(self.header.offset_format, raw)[0] != 0:
                return True
        return self.pending_bytes > 0

    def read_pixels(self, page: PageIndex) -> np.ndarray:
        return page.read_pixels(self._fh)

    def stop_reason(self) -> str | None:
        """For a file that is finished: why `update()` stopped before the end of the IFD chain (the file is
        cut short or corrupt from there on), or None when the chain ends cleanly after the last page."""
        size = self.size
        if self.header is None:
            return "empty file" if size == 0 else f"only {size} byte(s), too short for a TIFF header"
        if self.header.bigtiff and not self._block_checked:
            return f"cut short: the ScanImage header at byte 16 runs past the end of the file ({size} bytes)"
        pointer, index = self._next_pointer_pos, len(self.pages)
        assert pointer is not None
        if pointer + self.header.offset_size > size:
            return f"cut short: the file ends at byte {size}, inside the link to page {index}"
        raw = _read_exact(self._fh, pointer, self.header.offset_size)
        (offset,) = struct.unpack(self.header.offset_format, raw)
        if offset == 0:
            return None
        if offset >= size:
            return f"cut short: page {index} would start at byte {offset}, past the end ({size} bytes)"
        return f"page {index} (at byte {offset}) is cut short or corrupt"


@dataclass(frozen=True)
class FinishedIndex:
    """The complete pages of a finished file, its header (None: too short for one) and ScanImage block;
    `damage` says why the pages end before the IFD chain does (None: the file is whole)."""

    pages: list[PageIndex]
    header: TiffHeader | None
    block: ScanImageBlock | None
    damage: str | None


def index_finished_file(path: str | Path) -> FinishedIndex:
    """Every page of a finished file that is wholly on disk and well formed, in order, and where that stops:
    the pages a reader can trust in a file that was cut short or has damaged IFDs. Raises TiffFormatError
    for bytes that are not a TIFF or pages in a layout this walker does not read (compressed, tiled)."""
    with TiffIndexer(path, settle_s=0.0) as indexer:
        try:
            indexer.update()
        except TiffChainError as exc:
            return FinishedIndex(list(indexer.pages), indexer.header, indexer.block, str(exc))
        return FinishedIndex(list(indexer.pages), indexer.header, indexer.block, indexer.stop_reason())

