"""FolderFollower and the IFD walker: each page once, in order, never partial, while a process writes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hardware.scanimage.follower import FolderFollower, FollowedPage
from hardware.scanimage.tiff_index import PageIndex, PageStatus, TiffIndexer, read_ifd
from hardware.scanimage.writer import ScanImageWriter

REPO = Path(__file__).resolve().parents[1]

# Runs in a separate Python process: ScanImage's side of the folder.
WRITER_SCRIPT = r"""
import json, os, sys, time
import numpy as np
from hardware.scanimage.writer import ScanImageWriter

cfg = json.loads(sys.argv[1])
H, W, C = cfg["height"], cfg["width"], cfg["channels"]

def pattern(trial, t, c):
    code = trial * 1000 + t * 10 + c
    return ((np.arange(H * W, dtype=np.int64).reshape(H, W) * (code + 1)) % 30011 - 15000).astype(np.int16)

def volume(trial, t):
    return np.stack([pattern(trial, t, c) for c in range(C)])

common = dict(height=H, width=W, channels=C, frame_rate_hz=30.0, template="compact")
if cfg["mode"] == "loop":
    for trial in range(1, cfg["trials"] + 1):
        w = ScanImageWriter.for_loop_trial(cfg["folder"], "trial", trial, acq_trigger_timestamp_s=0, **common)
        with w:
            for t in range(cfg["frames"]):
                w.write_frame(volume(trial, t), 0.01 * t)
                time.sleep(cfg["dt"])
        time.sleep(cfg["gap"])
else:
    w = ScanImageWriter(os.path.join(cfg["folder"], "grow_00001_00001.tif"), **common)
    for t in range(cfg["frames"]):
        w.write_frame(volume(1, t), 0.01 * t)
        time.sleep(cfg["dt"])
    if cfg["mode"] == "stop":  # the last frame is cut short and the writer dies without closing
        w.write_frame(volume(1, cfg["frames"]), 0.01 * cfg["frames"])
        size = os.path.getsize(w.path)
        os.truncate(w.path, size - H * W)
        os._exit(0)
    w.close()
"""


def pattern(trial: int, t: int, c: int, height: int, width: int) -> np.ndarray:
    """Same as the writer process's pattern: distinct per (trial, frame, channel), signed."""
    code = trial * 1000 + t * 10 + c
    values = (np.arange(height * width, dtype=np.int64).reshape(height, width) * (code + 1)) % 30011 - 15000
    return values.astype(np.int16)


def start_writer(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, json.dumps(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_file(folder: Path, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(folder.glob("*.tif")):
        if proc.poll() is not None and not any(folder.glob("*.tif")):
            raise AssertionError(f"writer exited early: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise AssertionError("the writer process did not create a file")
        time.sleep(0.01)


def follow_while_writing(
    folder: Path, cfg: dict, **kwargs: object
) -> tuple[list[FollowedPage], int, FolderFollower]:
    """Follow `folder` while a writer process fills it; stop (after draining) when the writer exits.
    Returns the pages, how many arrived while the writer was still running, and the follower."""
    proc = start_writer(cfg)
    try:
        wait_for_file(folder, proc)
        follower = FolderFollower(folder, poll_s=0.005, **kwargs)

        def stop_when_writer_exits() -> None:
            proc.wait(timeout=30)
            follower.stop()

        stopper = threading.Thread(target=stop_when_writer_exits, daemon=True)
        stopper.start()
        pages: list[FollowedPage] = []
        live = 0
        for page in follower:
            pages.append(page)
            live += proc.poll() is None
        stopper.join(timeout=30)
        assert proc.returncode == 0, proc.stderr.read().decode()
        return pages, live, follower
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_loop_mode_files_rotate_and_every_page_comes_once_in_order(tmp_path: Path) -> None:
    cfg = {"mode": "loop", "folder": str(tmp_path), "height": 32, "width": 48, "channels": 2,
           "trials": 3, "frames": 5, "dt": 0.01, "gap": 0.05}  # fmt: skip
    pages, live, follower = follow_while_writing(tmp_path, cfg)
    expected = [(trial, t, c) for trial in (1, 2, 3) for t in range(5) for c in range(2)]
    got = [(p.metadata.acquisition_number, p.frame, p.channel - 1) for p in pages]
    assert got == expected
    assert [p.file.name for p in pages[::10]] == [f"trial_{n:05d}_00001.tif" for n in (1, 2, 3)]
    assert [p.file_index for p in pages[::10]] == [0, 1, 2]
    assert [p.page_index for p in pages[:10]] == list(range(10))
    for page, (trial, t, c) in zip(pages, expected, strict=True):
        np.testing.assert_array_equal(page.pixels, pattern(trial, t, c, 32, 48))
        assert page.timestamp_s == pytest.approx(0.01 * t)
        assert page.plane == 0 and page.metadata.acq_trigger_timestamp_s == 0.0
    assert live > 0, "no page arrived while the writer was running: not following live"
    assert follower.stats.files == 3 and follower.stats.pages == 30
    assert follower.stats.incomplete_tails == [] and follower.stats.stopped_reason == "stopped"


def test_one_growing_file_never_yields_a_partial_page(tmp_path: Path) -> None:
    # large pages written back to back, polled fast: the follower sees pages mid-write
    cfg = {"mode": "grow", "folder": str(tmp_path), "height": 256, "width": 256, "channels": 1,
           "frames": 40, "dt": 0.002}  # fmt: skip
    pages, live, follower = follow_while_writing(tmp_path, cfg)
    assert [p.page_index for p in pages] == list(range(40))
    assert [p.frame for p in pages] == list(range(40))
    assert [p.metadata.frame_number for p in pages] == list(range(1, 41))
    for page in pages:
        np.testing.assert_array_equal(page.pixels, pattern(1, page.frame, 0, 256, 256))
    assert live > 0
    assert follower.stats.pages == 40 and follower.stats.incomplete_tails == []


def test_acquisition_stopping_mid_file_times_out_and_reports(tmp_path: Path) -> None:
    cfg = {"mode": "stop", "folder": str(tmp_path), "height": 32, "width": 32, "channels": 2,
           "frames": 6, "dt": 0.01}  # fmt: skip
    proc = start_writer(cfg)
    try:
        wait_for_file(tmp_path, proc)
        follower = FolderFollower(tmp_path, poll_s=0.01, idle_timeout_s=0.75)
        started = time.monotonic()
        pages = list(follower)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0
    # six complete frames of two channels; of the seventh, channel 0 is complete, channel 1 is cut short
    assert [(p.frame, p.channel) for p in pages] == [(t, c) for t in range(6) for c in (1, 2)] + [(6, 1)]
    for page in pages:
        np.testing.assert_array_equal(page.pixels, pattern(1, page.frame, page.channel - 1, 32, 32))
    assert follower.stats.stopped_reason == "idle timeout"
    assert [name for name, _ in follower.stats.incomplete_tails] == ["grow_00001_00001.tif"]
    assert follower.stats.incomplete_tails[0][1] > 0
    assert elapsed < 10


def _small_file(path: Path, frames: int = 4, **kwargs: object) -> None:
    with ScanImageWriter(path, height=8, width=12, channels=1, template="compact", **kwargs) as writer:
        for t in range(frames):
            writer.write_frame(pattern(1, t, 0, 8, 12), 0.1 * t)


def test_every_truncation_yields_only_whole_pages(tmp_path: Path) -> None:
    source = tmp_path / "full.tif"
    _small_file(source, frames=3)
    data = source.read_bytes()
    with TiffIndexer(source) as indexer:
        ends = [page.end for page in indexer.update()]
    assert len(ends) == 3 and ends[-1] == len(data)
    cut = tmp_path / "cut.tif"
    for size in range(0, len(data) + 1, 97):
        cut.write_bytes(data[:size])
        with TiffIndexer(cut, settle_s=0.0) as indexer:
            pages = indexer.update()
            assert len(pages) == sum(end <= size for end in ends), size
            for page in pages:
                np.testing.assert_array_equal(indexer.read_pixels(page), pattern(1, page.index, 0, 8, 12))
            assert indexer.has_incomplete_tail() == (size < len(data) and size > 0)


def test_linked_but_unwritten_ifd_waits(tmp_path: Path) -> None:
    """tifffile links a new IFD before filling it: zeros there mean 'not yet', not 'end' or 'corrupt'."""
    path = tmp_path / "late.tif"
    _small_file(path, frames=3)
    with TiffIndexer(path) as indexer:
        last = indexer.update()[-1]
    original = path.read_bytes()
    blank = bytearray(original)
    blank[last.ifd_offset : last.next_pointer_pos + 8] = bytes(last.next_pointer_pos + 8 - last.ifd_offset)
    path.write_bytes(bytes(blank))
    with TiffIndexer(path) as indexer:
        assert len(indexer.update()) == 2
        assert indexer.has_incomplete_tail()
        with open(path, "r+b") as fh:  # the writer fills the IFD in
            fh.seek(last.ifd_offset)
            fh.write(original[last.ifd_offset : last.next_pointer_pos + 8])
        new = indexer.update()
        assert [page.index for page in new] == [2] and not indexer.has_incomplete_tail()


def test_nul_padded_text_is_accepted_once_the_file_settles(tmp_path: Path) -> None:
    """Text ending in NULs may be mid-write; a writer that pads with NULs must not stall us for good."""
    path = tmp_path / "nul.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(np.zeros((4, 4), np.int16), description="frameNumbers = 1\n" + "#" * 64, metadata=None)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"#" * 64, b"\0" * 64))
    with TiffIndexer(path, settle_s=0.2) as indexer:
        assert indexer.update() == []  # looks like text still being written
        with open(path, "rb") as fh:
            assert read_ifd(fh, indexer.header, 16, path.stat().st_size, 0) is PageStatus.SUSPECT
        time.sleep(0.25)
        pages = indexer.update()
        assert len(pages) == 1 and isinstance(pages[0], PageIndex)
        assert pages[0].description == "frameNumbers = 1\n"


def test_rotation_gives_up_a_truncated_file_and_skips_non_tiffs(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    folder = tmp_path / "acq"
    folder.mkdir()
    _small_file(staging / "a_00001_00001.tif", frames=3)
    data = (staging / "a_00001_00001.tif").read_bytes()
    (folder / "a_00001_00001.tif").write_bytes(data[:-20])  # last page cut short
    (folder / "a_00002_00001.tif").write_text("not a tiff")
    _small_file(folder / "a_00003_00001.tif", frames=2)
    follower = FolderFollower(folder, poll_s=0.01, idle_timeout_s=0.3, settle_s=0.05)
    pages = list(follower)
    assert [(p.file.name[:7], p.frame) for p in pages] == [("a_00001", 0), ("a_00001", 1), ("a_00003", 0),
                                                           ("a_00003", 1)]  # fmt: skip
    assert [name for name, _ in follower.stats.incomplete_tails] == ["a_00001_00001.tif"]
    assert [name for name, _ in follower.stats.skipped_files] == ["a_00002_00001.tif"]
    assert follower.stats.stopped_reason == "idle timeout"


def test_skip_existing_and_scanimage3_pages(tmp_path: Path) -> None:
    _small_file(tmp_path / "old_00001_00001.tif", frames=2)
    follower = FolderFollower(tmp_path, poll_s=0.01, idle_timeout_s=0.2, skip_existing=True)
    assert list(follower) == []
    source = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scanimage38_64x64x30.tif"
    if not source.is_file():
        pytest.skip("shared sample data not present")
    shutil.copy(source, tmp_path / "si38.tif")
    pages = list(FolderFollower(tmp_path, pattern="si38*.tif", poll_s=0.01, idle_timeout_s=0.2))
    assert len(pages) == 30 and [p.frame for p in pages] == list(range(30))
    assert {p.channel for p in pages} == {2} and all(p.timestamp_s is None for p in pages)
    np.testing.assert_array_equal(pages[5].pixels, tifffile.imread(source, key=5))


def test_block_header_is_read_before_pages(tmp_path: Path) -> None:
    path = tmp_path / "b.tif"
    _small_file(path, frames=1)
    raw = path.read_bytes()
    text_size, roi_size = struct.unpack("<II", raw[24:32])
    head = tmp_path / "head.tif"
    head.write_bytes(raw[: 32 + text_size // 2])  # block announced, not all written
    with TiffIndexer(head) as indexer:
        assert indexer.update() == [] and indexer.block is None
        with open(head, "ab") as fh:
            fh.write(raw[32 + text_size // 2 :])
        assert len(indexer.update()) == 1
        assert indexer.block is not None and indexer.block.si_text.startswith("SI.")
        assert indexer.block.version == 3 and os.path.getsize(head) == len(raw)
