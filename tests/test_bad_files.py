"""Damaged ScanImage files: cut short, bytes flipped in the header and the IFDs, text that is not UTF-8,
empty files, files that are not TIFFs. `python -m hardware.scanimage info` says what is wrong in one line
(exit status 2, no traceback) after the summary of what is readable; `python -m online replay` replays the
readable part of every file and says in one line per file where it stopped (file and frame).

Every damaged file here is made from a real file: one written by hardware/scanimage/writer.py from
simulated frames, or the real recordings in ../shared/data (those tests skip when the folder is absent)."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hardware.scanimage.__main__ import main as scanimage_main
from hardware.scanimage.reader import ScanImageFile
from hardware.scanimage.tiff_index import PageIndex, TiffIndexer
from hardware.scanimage.writer import ScanImageWriter
from hardware.sim.microscope import MicroscopeConfig, SimMicroscope
from online.config import PipelineConfig
from online.process import EXIT_OK, EXIT_USER, main_replay, replay
from online.rois import RoiSet
from online.store import read_traces
from rig.online_child import ONLINE_SETTINGS_FILE, write_online_settings
from rig.settings import parse_settings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SI38 = DATA / "scanimage38_64x64x30.tif"
IMAGEJ = DATA / "twophoton_frame_512_imagej.tif"
BERGAMO = DATA / "scanimage2022_bergamo_header.txt.gz"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (the real sample files) is absent")

SIZE, RATE, N_FRAMES = 32, 10.0, 24
SETTINGS = parse_settings({"imaging": {"frame_rate_hz": RATE},
                           "online": {"registration": {"reference_frames": 8, "max_shift_px": 6}}})
CONFIG = PipelineConfig(SETTINGS.online, frame_rate_hz=SETTINGS.imaging.frame_rate_hz)
REFERENCE_FRAMES = CONFIG.online.registration.reference_frames


# --------------------------------------------------------------------------------------------------------
# files


@pytest.fixture(scope="module")
def sim() -> SimMicroscope:
    return SimMicroscope(MicroscopeConfig(height=SIZE, width=SIZE, n_neurons=6, frame_rate_hz=RATE, seed=3,
                                          frames_per_acquisition=N_FRAMES))


@pytest.fixture(scope="module")
def frames(sim: SimMicroscope) -> list[np.ndarray]:
    sim.start_trial(1.0, "tactile", "left", {"sample": 0.01, "delay": 1.0, "go": 2.0}, trial=1)
    return [f.pixels for f in sim.frames_until(1.0 + N_FRAMES / RATE)]


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_online_settings(SETTINGS, tmp_path_factory.mktemp("settings") / ONLINE_SETTINGS_FILE)


@pytest.fixture(scope="module")
def rois(sim: SimMicroscope, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rois") / "rois.npz"
    RoiSet.from_masks((SIZE, SIZE), sim.masks).save(path)
    return path


def write_recording(path: Path, frames: list[np.ndarray], trial: int = 1, **kwargs: object) -> Path:
    kwargs.setdefault("template", "compact")
    with ScanImageWriter(path, height=SIZE, width=SIZE, frame_rate_hz=RATE, file_counter=trial,
                         acq_state="loop", **kwargs) as writer:
        for i, pixels in enumerate(frames):
            writer.write_frame(pixels, i / RATE)
    return path


@pytest.fixture(scope="module")
def good(frames: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("good") / "rec_00001_00001.tif", frames)


def pages_of(path: Path) -> list[PageIndex]:
    with TiffIndexer(path, settle_s=0.0) as indexer:
        return indexer.update()


def damaged(tmp_path: Path, source: Path, change: Callable[[bytearray], object], name: str = "") -> Path:
    data = bytearray(source.read_bytes())
    change(data)
    path = tmp_path / (name or source.name)
    path.write_bytes(bytes(data))
    return path


def cut(size: int) -> Callable[[bytearray], object]:
    def change(data: bytearray) -> None:
        del data[size:]
    return change


def put(offset: int, new: bytes) -> Callable[[bytearray], object]:
    def change(data: bytearray) -> None:
        data[offset:offset + len(new)] = new
    return change


def readable_pages(pages: list[PageIndex], size: int) -> int:
    """Pages of the intact file that lie wholly in its first `size` bytes."""
    return sum(1 for page in pages if page.end <= size)


# --------------------------------------------------------------------------------------------------------
# running the commands


def strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


def info(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, list[str]]:
    """`python -m hardware.scanimage info PATH --json` in this process: status, summary, stderr lines."""
    status = scanimage_main(["info", str(path), "--json"])
    out, err = capsys.readouterr()
    return status, (strict_json(out) if out.strip() else None), err.strip().splitlines()


def replay_cli(path: Path, rois: Path | None, out: Path, capsys: pytest.CaptureFixture[str],
               settings: Path | None = None) -> tuple[int, dict, list[str]]:
    """`python -m online replay PATH --rois ROIS --out OUT [--settings ONLINE_SETTINGS]` in this process:
    status, its JSON line, stderr lines."""
    status = main_replay(str(path), str(out), None if rois is None else str(rois), None,
                         None if settings is None else str(settings), "trigger")
    stdout, err = capsys.readouterr()
    lines = stdout.strip().splitlines()
    return status, (strict_json(lines[0]) if lines else {}), err.strip().splitlines()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_one_sentence(lines: list[str], *words: str) -> None:
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def replayed_dff(out: Path) -> np.ndarray:
    return read_traces(out).dff


@pytest.fixture(scope="module")
def good_replay(good: Path, rois: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Traces of the intact file: the damaged copies must give exactly their first rows."""
    out = tmp_path_factory.mktemp("good_replay")
    summary = replay(good, out=out, rois=rois, config=CONFIG)
    assert summary.frames == N_FRAMES and not summary.stops
    return replayed_dff(out)


# --------------------------------------------------------------------------------------------------------
# cut short


CUTS = ["empty", "1 byte", "inside the TIFF header", "inside the ScanImage block", "inside the first IFD",
        "inside the first pixels", "at the start of page 5", "inside the IFD of page 9",
        "inside the pixels of page 13", "one byte short"]


def cut_point(where: str, pages: list[PageIndex], size: int) -> int:
    return {
        "empty": 0,
        "1 byte": 1,
        "inside the TIFF header": 10,
        "inside the ScanImage block": 200,
        "inside the first IFD": pages[0].ifd_offset + 30,
        "inside the first pixels": pages[0].strip_offsets[0] + 100,
        "at the start of page 5": pages[5].ifd_offset,
        "inside the IFD of page 9": pages[9].ifd_offset + 300,
        "inside the pixels of page 13": pages[13].strip_offsets[0] + 7,
        "one byte short": size - 1,
    }[where]


@pytest.mark.parametrize("where", CUTS)
def test_info_on_a_file_cut_short_gives_the_readable_part_and_one_sentence(
        where: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = pages_of(good)
    size = cut_point(where, pages, good.stat().st_size)
    path = damaged(tmp_path, good, cut(size))
    status, summary, err = info(path, capsys)
    assert status == 2
    assert_one_sentence(err, str(path))
    readable = readable_pages(pages, size)
    if readable == 0:
        assert summary is None
    else:
        assert summary is not None and summary["frames"] == readable and summary["damage"]
        assert "cut short" in err[0] and f"{readable} of its pages are readable" in err[0]


@pytest.mark.parametrize("where", CUTS)
def test_replay_of_a_file_cut_short_replays_every_readable_frame_and_says_where_it_stopped(
        where: str, good: Path, rois: Path, good_replay: np.ndarray, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], settings_file: Path) -> None:
    pages = pages_of(good)
    size = cut_point(where, pages, good.stat().st_size)
    path = damaged(tmp_path, good, cut(size))
    readable = readable_pages(pages, size)
    status, figures, err = replay_cli(path, rois, tmp_path / "out", capsys, settings_file)
    assert status == EXIT_USER
    assert_one_sentence(err, str(path))
    if readable:
        assert f"stopped at frame {readable}" in err[0] and f"frames 0-{readable - 1} were replayed" in err[0]
    else:
        assert "not replayed" in err[0]
    assert figures["frames"] == readable
    (stop,) = figures["stopped"]
    assert stop["file"] == str(path) and stop["frame"] == readable and stop["reason"] in err[0]
    if readable > REFERENCE_FRAMES:  # the pipeline starts after its reference frames
        np.testing.assert_array_equal(replayed_dff(tmp_path / "out"), good_replay[:readable])


def test_the_commands_end_in_one_sentence_without_a_traceback(good: Path, rois: Path, tmp_path: Path,
                                                              settings_file: Path) -> None:
    pages = pages_of(good)
    path = damaged(tmp_path, good, cut(pages[7].strip_offsets[0] + 5))
    result = run("-m", "hardware.scanimage", "info", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "7 of its pages are readable" in result.stderr
    assert "frames" in result.stdout  # the summary of the readable part is still printed
    result = run("-m", "online", "replay", str(path), "--rois", str(rois), "--out", str(tmp_path / "out"),
                 "--settings", str(settings_file))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "stopped at frame 7" in result.stderr, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["frames"] == 7


# --------------------------------------------------------------------------------------------------------
# bytes flipped in the header and the IFDs


def structural_flips(pages: list[PageIndex]) -> dict[str, tuple[Callable[[bytearray], object], int | None]]:
    """Damage at the places a TIFF reader trusts, with the pages still readable (None: none, not a TIFF)."""
    p4, p6 = pages[4], pages[6]
    entries6 = p6.ifd_offset + 8  # BigTIFF: 8-byte tag count, then 20-byte entries
    return {
        "byte order mark": (put(0, b"XI"), None),
        "TIFF version": (put(2, b"\x2c\x00"), None),
        "BigTIFF offset size": (put(4, b"\x09\x00"), None),
        "first IFD pointer past the end": (put(8, (1 << 40).to_bytes(8, "little")), 0),
        "ScanImage block sizes": (put(24, (1 << 31).to_bytes(4, "little")), 0),
        "tag count of page 6": (put(p6.ifd_offset, (0xFFFF).to_bytes(8, "little")), 6),
        "tag types of page 6": (put(entries6 + 2, b"\xee\xee"), 6),
        "next-IFD pointer of page 4 loops back": (
            put(p4.next_pointer_pos, p4.ifd_offset.to_bytes(8, "little")), 5),
        "next-IFD pointer of page 4 into its pixels": (
            put(p4.next_pointer_pos, (p4.strip_offsets[0] + 64).to_bytes(8, "little")), 5),
    }


FLIPS = ["byte order mark", "TIFF version", "BigTIFF offset size", "first IFD pointer past the end",
         "ScanImage block sizes", "tag count of page 6", "tag types of page 6",
         "next-IFD pointer of page 4 loops back", "next-IFD pointer of page 4 into its pixels"]


@pytest.mark.parametrize("what", FLIPS)
def test_flipped_structure_gives_one_sentence_and_the_pages_before_it(
        what: str, good: Path, rois: Path, good_replay: np.ndarray, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], settings_file: Path) -> None:
    change, readable = structural_flips(pages_of(good))[what]
    path = damaged(tmp_path, good, change)
    status, summary, err = info(path, capsys)
    assert status == 2
    assert_one_sentence(err, str(path))
    if readable is None:
        assert summary is None and "not a TIFF" in err[0]
    elif readable == 0:
        assert summary is None
    else:
        assert summary is not None and summary["frames"] == readable
    status, figures, err = replay_cli(path, rois, tmp_path / "out", capsys, settings_file)
    assert status == EXIT_USER
    assert_one_sentence(err, str(path))
    assert figures["frames"] == (readable or 0)
    if readable and readable > REFERENCE_FRAMES:  # the pipeline starts after its reference frames
        np.testing.assert_array_equal(replayed_dff(tmp_path / "out"), good_replay[:readable])


def test_random_flips_in_the_header_and_first_ifds_never_escape_as_tracebacks(
        good: Path, rois: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        settings_file: Path) -> None:
    pages = pages_of(good)
    rng = random.Random(9)
    original = good.read_bytes()
    statuses = set()
    for trial in range(120):
        data = bytearray(original)
        for _ in range(rng.choice((1, 1, 2, 4))):
            # the header, the block's sizes, and the tag entries of pages 0 and 2 (not their free text)
            region = rng.choice([(0, 32), (pages[0].ifd_offset, pages[0].ifd_offset + 8 + 20 * 16),
                                 (pages[2].ifd_offset, pages[2].ifd_offset + 8 + 20 * 16)])
            data[rng.randrange(*region)] = rng.randrange(256)
        path = tmp_path / f"flip{trial}.tif"
        path.write_bytes(bytes(data))
        status, summary, err = info(path, capsys)
        statuses.add(status)
        assert status in (0, 2) and len(err) <= 1, (trial, err)
        if trial % 6 == 0:  # replay a share of them (each replay runs the pipeline)
            status, figures, err = replay_cli(path, rois, tmp_path / f"out{trial}", capsys, settings_file)
            assert status in (EXIT_OK, EXIT_USER) and len(err) <= 1, (trial, err)
            assert 0 <= figures["frames"] <= N_FRAMES
        path.unlink()
    assert statuses == {0, 2}  # some flips hit bytes nobody reads, others break the file


# --------------------------------------------------------------------------------------------------------
# text that is not UTF-8


def test_a_page_description_that_is_not_utf8_costs_no_frame(
        good: Path, rois: Path, good_replay: np.ndarray, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], settings_file: Path) -> None:
    data = good.read_bytes()
    page = pages_of(good)[3]
    at = data.index(b"epoch = ", page.ifd_offset)  # the description's text, not its padding
    path = damaged(tmp_path, good, put(at + 8, b"\xff\xfe\x80"))
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is not None and summary["frames"] == N_FRAMES
    assert_one_sentence(err, str(path), "not UTF-8", "page 3")
    status, figures, err = replay_cli(path, rois, tmp_path / "out", capsys, settings_file)
    assert status == EXIT_OK and figures["frames"] == N_FRAMES
    assert_one_sentence(err, str(path), "not UTF-8", "page 3")
    np.testing.assert_array_equal(replayed_dff(tmp_path / "out"), good_replay)
    with ScanImageFile(path) as f:
        assert f.timestamps_s is not None and f.timestamps_s[3] == pytest.approx(0.3)


def test_a_static_header_that_is_not_utf8_is_read_with_the_bytes_replaced(
        good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = good.read_bytes()
    at = data.index(b"SI.hRoiManager.pixelsPerLine", 0, 4096)  # in the block at byte 16
    path = damaged(tmp_path, good, put(at + 3, b"\xc3\x28"))  # an invalid two-byte sequence
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is not None
    assert summary["frames"] == N_FRAMES and summary["frame_rate_hz"] == pytest.approx(RATE)
    assert_one_sentence(err, str(path), "not UTF-8", "ScanImage header")


def test_a_software_tag_that_is_not_utf8_in_a_file_without_the_block(
        frames: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_recording(tmp_path / "noblock.tif", frames[:6], scanimage_block=False)
    data = source.read_bytes()
    at = data.index(b"SI.hRoiManager.pixelsPerLine")  # page 0's Software tag
    path = damaged(tmp_path, source, put(at + 3, b"\xff"), name="noblock_bad.tif")
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is not None and summary["frames"] == 6
    assert summary["scanimage_block"] is False and summary["version"] == "2022.1.0"
    assert_one_sentence(err, str(path), "not UTF-8")


# --------------------------------------------------------------------------------------------------------
# not a recording at all, and folders with a bad file among good ones


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty file"),
    (b"II*\x00", "too short"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "not a TIFF"),
    (b"frameNumbers = 1\n" * 20, "not a TIFF"),
])  # fmt: skip
def test_files_that_are_no_tiff_give_one_sentence(content: bytes, words: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x_00001_00001.tif"
    path.write_bytes(content)
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is None
    assert_one_sentence(err, str(path), words)


def test_a_folder_with_bad_files_replays_the_readable_frames_of_every_file(
        frames: list[np.ndarray], good: Path, rois: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], settings_file: Path) -> None:
    folder = tmp_path / "imaging"
    for trial in (1, 2, 3):
        write_recording(folder / f"sim_{trial:05d}_00001.tif", frames, trial=trial)
    (folder / "sim_00004_00001.tif").write_bytes(b"")  # acquisition aborted before the first page
    (folder / "sim_00005_00001.tif").write_text("not an image\n")
    second = folder / "sim_00002_00001.tif"
    pages = pages_of(second)
    second.write_bytes(second.read_bytes()[: pages[15].strip_offsets[0] + 1])
    status, figures, err = replay_cli(folder, rois, tmp_path / "out", capsys, settings_file)
    assert status == EXIT_USER
    assert figures["files"] == 5 and figures["frames"] == N_FRAMES * 2 + 15
    assert len(err) == 3 and "Traceback" not in "".join(err)
    assert str(second) in err[0] and "stopped at frame 15" in err[0]
    assert str(folder / "sim_00004_00001.tif") in err[1] and "not replayed: empty file" in err[1]
    assert str(folder / "sim_00005_00001.tif") in err[2] and "not replayed: not a TIFF" in err[2]
    table = read_traces(tmp_path / "out")
    assert table.index["trial"].tolist() == [1] * N_FRAMES + [2] * 15 + [3] * N_FRAMES
    assert table.index["frame_index"].tolist() == [*range(N_FRAMES), *range(15), *range(N_FRAMES)]


def test_a_folder_whose_first_file_is_unreadable_still_takes_the_rate_from_the_next(
        frames: list[np.ndarray], rois: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imaging"
    folder.mkdir()
    (folder / "sim_00001_00001.tif").write_bytes(b"II*\x00\x08")
    long = frames * 3  # more than the default reference frames
    write_recording(folder / "sim_00002_00001.tif", long, trial=2)
    status, figures, err = replay_cli(folder, rois, tmp_path / "out", capsys)
    assert status == EXIT_USER and figures["frames"] == len(long)
    assert_one_sentence(err, "sim_00001_00001.tif", "not replayed")
    assert read_traces(tmp_path / "out").meta["frame_rate_hz"] == pytest.approx(RATE)


# --------------------------------------------------------------------------------------------------------
# the real files in ../shared/data


@needs_data
@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.3, 0.77, 0.999])
def test_the_real_scanimage38_file_cut_short(fraction: float, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pages = pages_of(SI38)
    size = int(SI38.stat().st_size * fraction)
    path = damaged(tmp_path, SI38, cut(size))
    readable = readable_pages(pages, size)
    status, summary, err = info(path, capsys)
    assert status == 2
    assert_one_sentence(err, str(path))
    assert (summary is None) if readable == 0 else (summary["frames"] == readable)
    if readable:
        with ScanImageFile(path) as f, ScanImageFile(SI38) as whole:
            np.testing.assert_array_equal(f.frames(), whole.frames(0, readable))


@needs_data
def test_the_real_scanimage38_file_with_a_state_header_that_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = SI38.read_bytes()
    at = data.index(b"state.acq.frameRate")
    path = damaged(tmp_path, SI38, put(at + 2, b"\xff\xff"))
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is not None and summary["frames"] == 30 and summary["version"] == "3.8"
    assert_one_sentence(err, str(path), "not UTF-8")


@needs_data
def test_the_real_scanimage38_file_cut_short_replays_its_readable_frames(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = pages_of(SI38)
    path = damaged(tmp_path, SI38, cut(pages[20].strip_offsets[0] + 10))
    rois = tmp_path / "rois.npz"
    squares = [{"ypix": np.repeat(np.arange(y, y + 6), 6), "xpix": np.tile(np.arange(x, x + 6), 6)}
               for y in (10, 30, 50) for x in (10, 30, 50) if y + 6 <= 64 and x + 6 <= 64]
    RoiSet.from_masks((64, 64), squares).save(rois)
    settings = write_online_settings(parse_settings({"online": {"registration": {"reference_frames": 10}}}),
                                     tmp_path / ONLINE_SETTINGS_FILE)
    status, figures, err = replay_cli(path, rois, tmp_path / "out", capsys, settings)
    assert status == EXIT_USER and figures["frames"] == 20
    assert_one_sentence(err, str(path), "stopped at frame 20")
    assert read_traces(tmp_path / "out").index["frame_index"].tolist() == list(range(20))


@needs_data
def test_the_real_imagej_file_is_not_a_scanimage_recording(capsys: pytest.CaptureFixture[str]) -> None:
    status, summary, err = info(IMAGEJ, capsys)
    assert status == 2 and summary is None
    assert_one_sentence(err, str(IMAGEJ), "not from ScanImage")


@needs_data
def test_the_real_bergamo_header_with_bytes_that_are_not_utf8(
        frames: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_recording(tmp_path / "bergamo_00001_00001.tif", frames[:4], template=BERGAMO,
                             repeat_static_tags=False)
    with ScanImageFile(source) as f:
        assert f.version == "2022.1.0" and f.rois  # the real header and ROI groups
    data = source.read_bytes()
    at = data.index(b"SI.hBeams", 0, 1 << 20)
    path = damaged(tmp_path, source, put(at, b"\xfe"), name="bergamo_bad.tif")
    status, summary, err = info(path, capsys)
    assert status == 2 and summary is not None and summary["frames"] == 4
    assert_one_sentence(err, str(path), "not UTF-8", "ScanImage header")
    shutil.rmtree(tmp_path)


def test_a_clean_file_gives_status_0_and_no_problem(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, summary, err = info(good, capsys)
    assert status == 0 and err == [] and summary is not None
    assert summary["frames"] == N_FRAMES and summary["damage"] is None and summary["problems"] == []
    assert all(math.isfinite(t) for t in summary["timestamps_s"])
