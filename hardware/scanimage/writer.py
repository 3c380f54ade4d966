"""Write real ScanImage-format BigTIFF files, page by page, for tests and the simulated microscope.

The layout is ScanImage 2016+'s (see shared/specs/scanimage-tiff.md): the ScanImage block at byte 16
(magic 117637889, format version, byte lengths, the static `SI.*` text and the ROI JSON), the static text
again in every page's Software tag (305) and the ROI JSON in its Artist tag (315), and the frame-varying
data in each page's ImageDescription, space-padded to a fixed length as ScanImage does.

How the byte-16 block gets there: tifffile's TiffWriter always starts a new file with its own 16-byte
header and puts the first page right after it, and it has no option for a block. Its documented `append`
mode, however, opens an existing TIFF, keeps every byte and links new pages from the last IFD pointer.
So we write the 16-byte BigTIFF header (first-IFD pointer 0, i.e. no pages yet) and the ScanImage block
ourselves, then hand the file to `TiffWriter(path, append=True)`; tifffile links page 0 from byte 8.
No post-patching of offsets is needed, and tifffile, scanimage-tiff-reader and our reader agree on it.

Each `write_frame` writes its pages and flushes, so another process can read the file while it grows
(tifffile links a new IFD before filling it; the follower's IFD walker waits for complete pages).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import DTypeLike

from hardware.scanimage.header import format_matlab_value, split_static_text
from hardware.scanimage.reader import quiet_tifffile
from hardware.scanimage.tiff_index import SCANIMAGE_MAGIC

logger = logging.getLogger(__name__)

# The real ScanImage 2022.1 header shipped with the project's sample data (../shared/data from the repo).
BERGAMO_HEADER_PATH = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scanimage2022_bergamo_header.txt.gz"
)
DESCRIPTION_BYTES = 2000  # ScanImage pads each page description with spaces to a fixed size
_KEY_LINE = re.compile(r"^([A-Za-z_][\w.()]*)\s*=", re.MULTILINE)

# The keys the project reads, with values of an ordinary single-plane resonant acquisition.
COMPACT_SI_TEXT = """\
SI.LINE_FORMAT_VERSION = 1
SI.PREMIUM = false
SI.TIFF_FORMAT_VERSION = 3
SI.VERSION_COMMIT = ''
SI.VERSION_MAJOR = 2022
SI.VERSION_MINOR = 1
SI.VERSION_UPDATE = 0
SI.acqState = 'grab'
SI.acqsPerLoop = 1
SI.extTrigEnable = 0
SI.hChannels.channelName = {'Channel 1' 'Channel 2' 'Channel 3' 'Channel 4'}
SI.hChannels.channelSave = 1
SI.hChannels.channelsActive = 1
SI.hFastZ.discardFlybackFrames = false
SI.hFastZ.enable = false
SI.hFastZ.numDiscardFlybackFrames = 0
SI.hRoiManager.linesPerFrame = 512
SI.hRoiManager.mroiEnable = false
SI.hRoiManager.pixelsPerLine = 512
SI.hRoiManager.scanFramePeriod = 0.0333201
SI.hRoiManager.scanFrameRate = 30.0119
SI.hRoiManager.scanVolumeRate = 30.0119
SI.hScan2D.auxTriggersEnable = true
SI.hScan2D.channelsDataType = 'int16'
SI.hScan2D.logFileCounter = 1
SI.hScan2D.logFileStem = 'file'
SI.hScan2D.logFramesPerFile = Inf
SI.hScan2D.name = 'ResScan'
SI.hStackManager.actualNumSlices = 1
SI.hStackManager.enable = false
SI.hStackManager.framesPerSlice = 1
SI.hStackManager.numFramesPerVolume = 1
SI.hStackManager.numFramesPerVolumeWithFlyback = 1
SI.hStackManager.numSlices = 1
SI.hStackManager.stackMode = 'slow'
SI.imagingSystem = 'ResScan'
SI.name = 'ScanImage'
"""


def _compact_roi_json(height: int, width: int) -> str:
    scanfield = {"ver": 1, "classname": "scanimage.mroi.scanfield.fields.RotatedRectangle",
                 "name": "Default Imaging Scanfield", "centerXY": [0, 0], "sizeXY": [18, 18],
                 "rotationDegrees": 0, "enable": 1, "pixelResolutionXY": [width, height]}  # fmt: skip
    roi = {"ver": 1, "classname": "scanimage.mroi.Roi", "name": "Default Imaging Roi", "zs": 0,
           "scanfields": scanfield, "discretePlaneMode": 0, "enable": 1}  # fmt: skip
    group = {"ver": 1, "classname": "scanimage.mroi.RoiGroup", "name": "Default Imaging ROI Group",
             "rois": roi}  # fmt: skip
    return json.dumps(
        {"RoiGroups": {"imagingRoiGroup": group, "photostimRoiGroups": None, "integrationRoiGroup": None}},
        indent=2,
    )


@dataclass(frozen=True)
class HeaderTemplate:
    """Static text and ROI JSON to start from; `source` says where they came from (a path or 'built-in')."""

    si_text: str
    roi_json: str
    source: str


@lru_cache(maxsize=4)
def _read_template_file(path: str) -> HeaderTemplate:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    si_text, roi_json = split_static_text(text)
    return HeaderTemplate(si_text.rstrip("\n") + "\n", roi_json.strip(), path)


def load_header_template(source: HeaderTemplate | str | Path | None = None) -> HeaderTemplate:
    """The header to write: a given template or file (`SI` text, blank line, ROI JSON; .gz allowed),
    `'compact'` for the built-in one, or None for the real Bergamo header when the sample data is present
    (else the built-in one)."""
    if isinstance(source, HeaderTemplate):
        return source
    if source == "compact" or (source is None and not BERGAMO_HEADER_PATH.is_file()):
        return HeaderTemplate(COMPACT_SI_TEXT, _compact_roi_json(512, 512), "built-in")
    path = BERGAMO_HEADER_PATH if source is None else Path(source)
    return _read_template_file(str(path))


def set_header_values(si_text: str, values: Mapping[str, Any], *, columns: Sequence[str] = ()) -> str:
    """Replace (or append) `key = value` lines in SI text, keeping every other line byte for byte.

    Values are Python objects written as MATLAB literals; keys in `columns` are written as column vectors.
    """
    lines = si_text.rstrip("\n").split("\n")
    where: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = _KEY_LINE.match(line)
        if match is not None:
            where[match.group(1)] = number
    for key, value in values.items():
        line = f"{key} = {format_matlab_value(value, column=key in columns)}"
        if key in where:
            lines[where[key]] = line
        else:
            where[key] = len(lines)
            lines.append(line)
    return "\n".join(lines) + "\n"


def _set_roi_resolution(roi_json: str, height: int, width: int) -> str:
    """Point the imaging ROI group's scanfield at the written frame size (photostim/integration untouched)."""
    start = roi_json.find('"imagingRoiGroup"')
    if start < 0:
        return roi_json
    stop = roi_json.find('"photostimRoiGroups"', start)
    stop = len(roi_json) if stop < 0 else stop
    section = re.sub(
        r'("pixelResolutionXY"\s*:\s*\[)\s*\d+\s*,\s*\d+\s*(\])',
        rf"\g<1>{width},{height}\g<2>",
        roi_json[start:stop],
    )
    return roi_json[:start] + section + roi_json[stop:]


def scanimage_file_name(stem: str, acquisition: int, chunk: int = 1) -> str:
    """ScanImage's loop-mode name: `stem_00001_00001.tif` (acquisition / file counter, then file chunk)."""
    return f"{stem}_{acquisition:05d}_{chunk:05d}.tif"


def format_epoch(when: datetime) -> str:
    """`[2023  7 24 14 14 17.854]`, the layout ScanImage prints (MATLAB num2str of a date vector)."""
    seconds = when.second + when.microsecond / 1e6
    return f"[{when.year} {when.month:2d} {when.day:2d} {when.hour:2d} {when.minute:2d} {seconds:6.3f}]"


def _format_times(times: Sequence[float]) -> str:
    return "[" + " ".join(f"{float(t):.9f}" for t in times) + "]"


def format_frame_description(
    *,
    frame_number: int,
    acquisition_number: int,
    frame_number_acquisition: int,
    timestamp_s: float,
    acq_trigger_timestamp_s: float = -1.0,
    next_file_marker_timestamp_s: float = -1.0,
    end_of_acquisition: bool = False,
    end_of_acquisition_mode: bool = False,
    dc_over_voltage: bool = False,
    epoch: datetime | None = None,
    aux_triggers: Sequence[Sequence[float]] = ((), (), (), ()),
    i2c_data: Sequence[Any] | None = None,
    pad_to: int = DESCRIPTION_BYTES,
) -> str:
    """One page's ImageDescription, key order and number formats as in real files, padded with spaces."""
    if len(aux_triggers) != 4:
        raise ValueError(f"aux_triggers needs 4 lists (auxTrigger0..3), got {len(aux_triggers)}")
    lines = [
        f"frameNumbers = {frame_number}",
        f"acquisitionNumbers = {acquisition_number}",
        f"frameNumberAcquisition = {frame_number_acquisition}",
        f"frameTimestamps_sec = {timestamp_s:.9f}",
        f"acqTriggerTimestamps_sec = {acq_trigger_timestamp_s:.9f}",
        f"nextFileMarkerTimestamps_sec = {next_file_marker_timestamp_s:.9f}",
        f"endOfAcquisition = {int(end_of_acquisition)}",
        f"endOfAcquisitionMode = {int(end_of_acquisition_mode)}",
        f"dcOverVoltage = {int(dc_over_voltage)}",
        f"epoch = {format_epoch(epoch or datetime.now())}",
        *(f"auxTrigger{n} = {_format_times(times)}" for n, times in enumerate(aux_triggers)),
        f"I2CData = {format_matlab_value(list(i2c_data)) if i2c_data else '{}'}",
    ]
    text = "\n".join(lines) + "\n"
    return text + " " * max(0, pad_to - len(text))


class ScanImageWriter:
    """Write one ScanImage acquisition file, one time point per `write_frame` call.

    `frame_rate_hz` is the rate of time points (the volume rate when `planes` > 1; ScanImage's
    scanFrameRate is then planes times higher). Pages go out in ScanImage order: channels fastest, then
    planes, then time; each plane is its own ScanImage frame (own frameNumbers and timestamp), the channels
    of one plane share them. `overrides` sets any `SI.*` value last, e.g. {"SI.extTrigEnable": 1}.

    Cost: like ScanImage, every page repeats the static text and ROI JSON (`repeat_static_tags`). With the
    real Bergamo template that is ~2.3 MB of ROI JSON per page (its integration-ROI masks); for fast, small
    files pass `template="compact"` or `repeat_static_tags=False` (then only page 0 carries them).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int = 512,
        width: int = 512,
        channels: Sequence[int] | int = (1,),
        planes: int = 1,
        frame_rate_hz: float = 30.0,
        dtype: DTypeLike = np.int16,
        template: HeaderTemplate | str | Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        acq_state: str = "grab",
        file_counter: int = 1,
        acquisition_number: int | None = None,
        first_frame_number: int = 1,
        acq_trigger_timestamp_s: float | None = None,
        epoch: datetime | None = None,
        scanimage_block: bool = True,
        repeat_static_tags: bool = True,
        description_bytes: int = DESCRIPTION_BYTES,
        format_version: int = 3,
    ) -> None:
        self.path = Path(path)
        self.channels = tuple(range(1, channels + 1)) if isinstance(channels, int) else tuple(channels)
        if not self.channels or height < 1 or width < 1 or planes < 1:
            raise ValueError("need at least one channel and plane and a positive frame size")
        if not (frame_rate_hz > 0 and math.isfinite(frame_rate_hz)):
            raise ValueError(f"frame_rate_hz must be a positive number, not {frame_rate_hz}")
        if format_version not in (3, 4):
            raise ValueError("ScanImage TIFF format version is 3 or 4")
        self.height, self.width, self.planes = int(height), int(width), int(planes)
        self.dtype = np.dtype(dtype)
        self.frame_rate_hz = float(frame_rate_hz)
        self.scan_frame_rate_hz = self.frame_rate_hz * self.planes
        self.acquisition_number = file_counter if acquisition_number is None else acquisition_number
        self.first_frame_number = first_frame_number
        self.acq_trigger_timestamp_s = -1.0 if acq_trigger_timestamp_s is None else acq_trigger_timestamp_s
        self.epoch = epoch or datetime.now()
        self.description_bytes = description_bytes
        self.repeat_static_tags = repeat_static_tags
        self.frames_written = 0
        self.pages_written = 0

        base = load_header_template(template)
        stem = re.sub(r"(_\d{5}){1,2}$", "", self.path.stem)
        channel_value = list(self.channels) if len(self.channels) > 1 else self.channels[0]
        values: dict[str, Any] = {
            "SI.TIFF_FORMAT_VERSION": format_version,
            "SI.acqState": acq_state,
            "SI.hChannels.channelSave": channel_value,
            "SI.hChannels.channelsActive": channel_value,
            "SI.hRoiManager.linesPerFrame": self.height,
            "SI.hRoiManager.pixelsPerLine": self.width,
            "SI.hRoiManager.scanFrameRate": self.scan_frame_rate_hz,
            "SI.hRoiManager.scanFramePeriod": 1.0 / self.scan_frame_rate_hz,
            "SI.hRoiManager.scanVolumeRate": self.frame_rate_hz,
            "SI.hScan2D.channelsDataType": self.dtype.name,
            "SI.hScan2D.logFileCounter": file_counter,
            "SI.hScan2D.logFileStem": stem,
            "SI.hFastZ.enable": self.planes > 1,
            "SI.hFastZ.numDiscardFlybackFrames": 0,
            "SI.hFastZ.discardFlybackFrames": False,
            "SI.hStackManager.enable": self.planes > 1,
            "SI.hStackManager.stackMode": "fast" if self.planes > 1 else "slow",
            "SI.hStackManager.numSlices": self.planes,
            "SI.hStackManager.actualNumSlices": self.planes,
            "SI.hStackManager.numFramesPerVolume": self.planes,
            "SI.hStackManager.numFramesPerVolumeWithFlyback": self.planes,
        }
        values.update(overrides or {})
        self.static_text = set_header_values(base.si_text, values, columns=("SI.hChannels.channelSave",))
        self.roi_json = _set_roi_resolution(base.roi_json, self.height, self.width)
        self.template_source = base.source

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if scanimage_block:
            si_bytes = self.static_text.encode("utf-8") + b"\x00"
            roi_bytes = self.roi_json.encode("utf-8") + b"\x00"
            with open(self.path, "wb") as fh:
                fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))  # BigTIFF header, no page yet
                fh.write(struct.pack("<IIII", SCANIMAGE_MAGIC, format_version, len(si_bytes), len(roi_bytes)))
                fh.write(si_bytes + roi_bytes)
            with quiet_tifffile(logging.ERROR):  # "contains no pages": our header-only file, expected
                self._tiff = tifffile.TiffWriter(self.path, bigtiff=True, append=True)
        else:
            self._tiff = tifffile.TiffWriter(self.path, bigtiff=True)
        self._software = self.static_text.encode("utf-8")
        self._artist = self.roi_json.encode("utf-8")
        logger.debug("writing %s (template %s)", self.path, self.template_source)

    @classmethod
    def for_loop_trial(cls, folder: str | Path, stem: str, trial: int, **kwargs: Any) -> ScanImageWriter:
        """The file of one loop-mode acquisition (one trial): `stem_<trial>_00001.tif`, logFileCounter and
        acquisitionNumbers = trial, SI.acqState = 'loop'."""
        kwargs.setdefault("acq_state", "loop")
        kwargs.setdefault("file_counter", trial)
        kwargs.setdefault("acquisition_number", trial)
        return cls(Path(folder) / scanimage_file_name(stem, trial), **kwargs)

    def __enter__(self) -> ScanImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tiff.close()

    def _pages(self, frame: np.ndarray) -> np.ndarray:
        """Normalise one time point to (planes, channels, height, width)."""
        array = np.asarray(frame)
        n_z, n_c = self.planes, len(self.channels)
        shape = (n_z, n_c, self.height, self.width)
        squeezable = (array.ndim == 2 and n_z * n_c == 1) or (array.ndim == 3 and (n_z == 1 or n_c == 1))
        if squeezable and array.size == math.prod(shape):
            array = array.reshape(shape)
        if array.shape != shape:
            raise ValueError(
                f"frame shape {np.asarray(frame).shape} does not fit (planes, channels, height, width) "
                f"= {shape}"
            )
        if array.dtype != self.dtype:
            if not np.can_cast(array.dtype, self.dtype, casting="safe"):
                raise TypeError(f"frame dtype {array.dtype} cannot be stored as {self.dtype} without loss")
            array = array.astype(self.dtype)
        return array

    def write_frame(
        self,
        frame: np.ndarray,
        timestamp_s: float | Sequence[float],
        *,
        aux_triggers: Sequence[Sequence[float]] | None = None,
        next_file_marker_timestamp_s: float = -1.0,
        end_of_acquisition: bool = False,
        i2c_data: Sequence[Any] | None = None,
    ) -> int:
        """Write one time point and flush it to disk; returns its index in the file.

        `timestamp_s` is the imaging-clock time of plane 0 (later planes follow at the scan frame period)
        or one time per plane. `aux_triggers` (four lists of edge times) go with plane 0's pages.
        """
        pages = self._pages(frame)
        if isinstance(timestamp_s, (int, float)):
            times = [float(timestamp_s) + z / self.scan_frame_rate_hz for z in range(self.planes)]
        else:
            times = [float(t) for t in timestamp_s]
            if len(times) != self.planes:
                raise ValueError(f"need {self.planes} plane timestamps, got {len(times)}")
        no_triggers: tuple[tuple[float, ...], ...] = ((), (), (), ())
        for z in range(self.planes):
            index_in_acq = self.frames_written * self.planes + z
            description = format_frame_description(
                frame_number=self.first_frame_number + index_in_acq,
                acquisition_number=self.acquisition_number,
                frame_number_acquisition=index_in_acq + 1,
                timestamp_s=times[z],
                acq_trigger_timestamp_s=self.acq_trigger_timestamp_s,
                next_file_marker_timestamp_s=next_file_marker_timestamp_s,
                end_of_acquisition=end_of_acquisition and z == self.planes - 1,
                epoch=self.epoch,
                aux_triggers=(aux_triggers if aux_triggers is not None and z == 0 else no_triggers),
                i2c_data=i2c_data,
                pad_to=self.description_bytes,
            )
            for c in range(len(self.channels)):
                self._write_page(pages[z, c], description)
        self._tiff.filehandle.flush()
        self.frames_written += 1
        return self.frames_written - 1

    def _write_page(self, page: np.ndarray, description: str) -> None:
        static = self.repeat_static_tags or self.pages_written == 0
        extratags = [(305, 2, 0, self._software, False), (315, 2, 0, self._artist, False)] if static else []
        self._tiff.write(
            page,
            description=description,
            software=False,
            metadata=None,
            photometric="minisblack",
            contiguous=False,
            extratags=extratags,
        )
        self.pages_written += 1
