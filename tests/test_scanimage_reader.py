"""ScanImageFile on real files and on files from our writer (read back by our reader and by tifffile)."""

from __future__ import annotations

import logging
import math
import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hardware.scanimage.reader import NotATiffError, NotScanImageError, ScanImageFile
from hardware.scanimage.writer import (
    BERGAMO_HEADER_PATH,
    ScanImageWriter,
    format_epoch,
    load_header_template,
    scanimage_file_name,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SI38 = DATA / "scanimage38_64x64x30.tif"
IMAGEJ = DATA / "twophoton_frame_512_imagej.tif"
needs_data = pytest.mark.skipif(not SI38.is_file(), reason="shared sample data not present")
EPOCH = datetime(2024, 3, 5, 9, 30, 12, 250000)


def _volume(t: int, planes: int, channels: int, height: int, width: int) -> np.ndarray:
    """A distinct, signed pattern per (t, z, c) so page-order mistakes and sign loss both show."""
    base = np.arange(height * width, dtype=np.int32).reshape(height, width) % 997 - 400
    out = np.empty((planes, channels, height, width), np.int16)
    for z in range(planes):
        for c in range(channels):
            out[z, c] = base + 1000 * t + 100 * z + 10 * c
    return out


def _write(
    path: Path,
    *,
    frames: int,
    planes: int = 1,
    channels: int = 1,
    height: int = 24,
    width: int = 40,
    rate: float = 20.0,
    **kwargs: object,
) -> list[float]:
    times = [round(0.05 * t + 0.001, 6) for t in range(frames)]
    kwargs.setdefault("template", "compact")
    with ScanImageWriter(
        path, height=height, width=width, channels=channels, planes=planes, frame_rate_hz=rate, epoch=EPOCH,
        acq_trigger_timestamp_s=0.000125, **kwargs,
    ) as writer:  # fmt: skip
        for t in range(frames):
            aux = [[times[t] + 0.002], [], [times[t] + 0.003, times[t] + 0.004], []] if t % 2 == 0 else None
            writer.write_frame(_volume(t, planes, channels, height, width), times[t], aux_triggers=aux)
    return times


@needs_data
def test_scanimage38_file() -> None:
    with ScanImageFile(SI38) as recording:
        assert recording.version == "3.8"
        assert recording.is_scanimage3 and not recording.has_scanimage_block
        assert recording.shape == (30, 1, 1, 64, 64)
        assert recording.dtype == np.uint16
        assert recording.frame_rate_hz == pytest.approx(8.13802083333333)
        assert recording.channels == [2]  # state.acq.savingChannel2=1
        assert recording.header["state.acq.numberOfFrames"] == 30
        assert recording.timestamps_s is None  # ScanImage 3.x has none; none are synthesised
        assert recording.frame_metadata(0).timestamp_s is None
        assert recording.trigger_times.acquisition == ()
        frames = recording.frames()
        assert frames.shape == (30, 1, 1, 64, 64)
        expected = tifffile.imread(SI38)
        np.testing.assert_array_equal(frames[:, 0, 0], expected)
        np.testing.assert_array_equal(recording.page(7), expected[7])


@pytest.mark.parametrize(
    ("channels", "planes"),
    [(1, 1), (2, 1), (1, 3), (2, 3)],
)
def test_round_trip_our_reader(tmp_path: Path, channels: int, planes: int) -> None:
    path = tmp_path / scanimage_file_name("rt", 1)
    height, width, n_frames, rate = 24, 40, 5, 20.0
    times = _write(
        path, frames=n_frames, planes=planes, channels=channels, height=height, width=width, rate=rate
    )
    with ScanImageFile(path) as recording:
        assert recording.has_scanimage_block and recording.version == "2022.1.0"
        assert recording.shape == (n_frames, planes, channels, height, width)
        assert recording.n_pages == n_frames * planes * channels
        assert recording.dtype == np.int16
        assert recording.channels == list(range(1, channels + 1))
        assert recording.planes == planes
        assert recording.frame_rate_hz == pytest.approx(rate)
        assert recording.header["SI.hRoiManager.scanFrameRate"] == pytest.approx(rate * planes)
        data = recording.frames()
        for t in range(n_frames):
            np.testing.assert_array_equal(data[t], _volume(t, planes, channels, height, width))
        np.testing.assert_array_equal(recording.frame(3), data[3])
        np.testing.assert_array_equal(recording.frames(1, 3), data[1:3])
        assert recording.timestamps_s.tolist() == times  # exact: written with 9 decimals
        page = recording.layout.page_index(2, planes - 1, channels - 1)
        assert recording.page_position(page) == (2, planes - 1, channels - 1)
        np.testing.assert_array_equal(recording.page(page), data[2, planes - 1, channels - 1])
        meta = recording.frame_metadata(page)
        assert meta.frame_number == 2 * planes + planes  # 1-based ScanImage frame (one per plane)
        assert meta.frame_number_acquisition == meta.frame_number
        assert meta.timestamp_s == pytest.approx(times[2] + (planes - 1) / (rate * planes), abs=1e-9)
        assert meta.acq_trigger_timestamp_s == 0.000125
        assert meta.epoch == (2024, 3, 5, 9, 30, 12.25)
        triggers = recording.trigger_times
        assert triggers.acquisition == ((1, 0.000125),)
        assert triggers.aux[0] == pytest.approx([times[t] + 0.002 for t in (0, 2, 4)], abs=1e-9)
        expected_aux2 = [x for t in (0, 2, 4) for x in (times[t] + 0.003, times[t] + 0.004)]
        assert triggers.aux[2] == pytest.approx(expected_aux2, abs=1e-9)
        assert triggers.aux[1] == triggers.aux[3] == ()
        summary = recording.summary()
        assert summary["timestamps_s"] == [times[0], times[-1]]


@pytest.mark.parametrize(("channels", "planes"), [(1, 1), (2, 1), (2, 3)])
def test_round_trip_tifffile(tmp_path: Path, channels: int, planes: int) -> None:
    path = tmp_path / "tf.tif"
    _write(path, frames=3, planes=planes, channels=channels)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.is_scanimage
        meta = tif.scanimage_metadata
        assert meta["version"] == 3
        frame_data = meta["FrameData"]
        assert frame_data["SI.hRoiManager.linesPerFrame"] == 24
        assert frame_data["SI.hStackManager.actualNumSlices"] == planes
        assert meta["RoiGroups"]["imagingRoiGroup"]["rois"]["scanfields"]["pixelResolutionXY"] == [40, 24]
        assert len(tif.pages) == 3 * planes * channels
        pages = np.stack([page.asarray() for page in tif.pages])
        assert tif.pages[1].tags["Software"].value.startswith("SI.")
        assert '"RoiGroups"' in tif.pages[1].tags["Artist"].value
        assert "frameTimestamps_sec = 0.051000000" in tif.pages[planes * channels].description
    expected = np.stack([_volume(t, planes, channels, 24, 40) for t in range(3)]).reshape(-1, 24, 40)
    np.testing.assert_array_equal(pages, expected)


def test_description_is_space_padded_like_scanimage(tmp_path: Path) -> None:
    path = tmp_path / "pad.tif"
    _write(path, frames=1)
    from ScanImageTiffReader import ScanImageTiffReader

    with ScanImageTiffReader(str(path)) as reader:
        text = reader.description(0)
        static = reader.metadata()
    assert len(text) == 2000 and text.endswith(" ")
    assert text.splitlines()[0] == "frameNumbers = 1"
    assert "epoch = [2024  3  5  9 30 12.250]" in text
    assert static.startswith("SI.") and '"RoiGroups"' in static
    with open(path, "rb") as fh:
        head = fh.read(32)
    assert head[:4] == b"II+\x00"
    magic, version, text_size, roi_size = struct.unpack("<IIII", head[16:32])
    assert (magic, version) == (117637889, 3) and text_size > 100 and roi_size > 10


def test_file_without_scanimage_block_falls_back_to_tags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "noblock.tif"
    times = _write(path, frames=4, channels=2, scanimage_block=False)
    with open(path, "rb") as fh:
        fh.seek(16)
        assert struct.unpack("<I", fh.read(4))[0] != 117637889
    with tifffile.TiffFile(path) as tif:
        assert tif.is_scanimage and tif.scanimage_metadata == {}
    with caplog.at_level(logging.INFO), ScanImageFile(path) as recording:
        assert not recording.has_scanimage_block
        assert recording.shape == (4, 1, 2, 24, 40)
        assert recording.timestamps_s.tolist() == times
        assert recording.rois["RoiGroups"]["imagingRoiGroup"]["name"] == "Default Imaging ROI Group"
        np.testing.assert_array_equal(recording.frames()[3], _volume(3, 1, 2, 24, 40))
    assert "no ScanImage block" in caplog.text


@pytest.mark.skipif(not BERGAMO_HEADER_PATH.is_file(), reason="shared sample data not present")
def test_bergamo_template_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "bci_00007_00001.tif"
    with ScanImageWriter.for_loop_trial(
        tmp_path, "bci", 7, height=16, width=32, frame_rate_hz=30.0119, epoch=EPOCH,
        overrides={"SI.hScan2D.logFramesPerFile": 500},
    ) as writer:  # fmt: skip
        assert writer.path == path and writer.template_source.endswith(".txt.gz")
        for t in range(2):
            writer.write_frame(_volume(t, 1, 1, 16, 32), t / 30.0119)
    with ScanImageFile(path) as recording:
        header = recording.header
        assert header["SI.acqState"] == "loop"
        assert header["SI.hScan2D.logFileCounter"] == 7
        assert header["SI.hScan2D.logFramesPerFile"] == 500
        assert header["SI.hRoiManager.linesPerFrame"] == 16 and header["SI.hRoiManager.pixelsPerLine"] == 32
        assert header["SI.hBeams.powers"] == [15, 0.8]  # untouched real values survive
        assert header["SI.extTrigEnable"] == 1
        assert recording.frame_rate_hz == pytest.approx(30.0119)
        assert recording.shape == (2, 1, 1, 16, 32)
        assert recording.frame_metadata(1).acquisition_number == 7
        imaging = recording.rois["RoiGroups"]["imagingRoiGroup"]
        assert imaging["rois"]["scanfields"]["pixelResolutionXY"] == [32, 16]
        assert recording.rois["RoiGroups"]["integrationRoiGroup"]["rois"]  # the real integration ROIs


def test_incomplete_last_volume_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "partial.tif"
    with ScanImageWriter(path, height=8, width=8, planes=2, template="compact") as writer:
        writer.write_frame(np.ones((2, 8, 8), np.int16), 0.0)
    with tifffile.TiffWriter(path, append=True) as extra:  # one page of a second volume
        extra.write(np.zeros((8, 8), np.int16), software="SI.x = 1", description="frameNumbers = 3")
    with caplog.at_level(logging.WARNING), ScanImageFile(path) as recording:
        assert recording.n_pages == 3 and recording.shape[0] == 1
        assert recording.frames().shape == (1, 2, 1, 8, 8)
    assert "not a whole number of time points" in caplog.text


def test_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with ScanImageWriter(tmp_path / "bad.tif", height=8, width=8, channels=2, template="compact") as writer:
        with pytest.raises(ValueError, match="does not fit"):
            writer.write_frame(np.zeros((8, 8), np.int16), 0.0)
        with pytest.raises(TypeError, match="without loss"):
            writer.write_frame(np.zeros((2, 8, 8), np.float64), 0.0)
        writer.write_frame(np.zeros((2, 8, 8), np.uint8), 0.0)  # safe cast is fine
    with pytest.raises(ValueError):
        ScanImageWriter(tmp_path / "x.tif", frame_rate_hz=math.nan, template="compact")


def test_not_scanimage_and_not_tiff(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint16))
    with pytest.raises(NotScanImageError, match="not from ScanImage"):
        ScanImageFile(plain)
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(NotATiffError, match="not a TIFF"):
        ScanImageFile(text)
    with pytest.raises(FileNotFoundError):
        ScanImageFile(tmp_path / "missing.tif")
    if IMAGEJ.is_file():
        with pytest.raises(NotScanImageError):
            ScanImageFile(IMAGEJ)


def test_template_helpers() -> None:
    compact = load_header_template("compact")
    assert compact.source == "built-in" and "SI.hChannels.channelSave = 1" in compact.si_text
    assert scanimage_file_name("mouse", 12) == "mouse_00012_00001.tif"
    assert format_epoch(datetime(2023, 7, 24, 14, 14, 17, 854000)) == "[2023  7 24 14 14 17.854]"


@pytest.mark.parametrize("block", [True, False])
def test_tifffile_backend_when_scanimage_tiff_reader_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: bool
) -> None:
    import hardware.scanimage.reader as reader_module

    def refuse(path: Path) -> None:
        raise Exception("simulated: library cannot open this file")

    monkeypatch.setattr(reader_module, "_SitrBackend", refuse)
    path = tmp_path / "fallback.tif"
    times = _write(path, frames=3, channels=2, scanimage_block=block)
    with ScanImageFile(path) as recording:
        assert recording.has_scanimage_block is block
        assert recording.shape == (3, 1, 2, 24, 40) and recording.dtype == np.int16
        assert recording.timestamps_s.tolist() == times
        np.testing.assert_array_equal(recording.frames()[2], _volume(2, 1, 2, 24, 40))
        assert recording.frames(3, 3).shape == (0, 1, 2, 24, 40)
