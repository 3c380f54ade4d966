"""`python -m hardware.scanimage`: info (text and JSON), follow, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hardware.scanimage.__main__ import main
from hardware.scanimage.writer import ScanImageWriter

REPO = Path(__file__).resolve().parents[1]
SI38 = REPO.parent / "shared" / "data" / "scanimage38_64x64x30.tif"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardware.scanimage", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_file(path: Path, frames: int = 3, **kwargs: object) -> None:
    kwargs.setdefault("template", "compact")
    with ScanImageWriter(path, height=16, width=20, frame_rate_hz=15.0, **kwargs) as writer:
        shape = (writer.planes, len(writer.channels), 16, 20)
        for t in range(frames):
            writer.write_frame(np.full(shape, t, np.int16), 0.25 + t / 15.0)


@pytest.mark.skipif(not SI38.is_file(), reason="shared sample data not present")
def test_info_json_on_real_scanimage38_file() -> None:
    result = run_cli("info", str(SI38), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["frames"], info["planes"], info["channels"], info["height"], info["width"]) == (
        30,
        1,
        1,
        64,
        64,
    )
    assert info["dtype"] == "uint16"
    assert info["frame_rate_hz"] == pytest.approx(8.13802083333333)
    assert info["timestamps_s"] is None
    assert info["version"] == "3.8"


def test_info_json_on_written_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vol_00001_00001.tif"
    write_file(path, channels=2, planes=3)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["planes"], info["channels"], info["height"], info["width"]) == (
        3,
        3,
        2,
        16,
        20,
    )
    assert info["dtype"] == "int16" and info["version"] == "2022.1.0"
    assert info["frame_rate_hz"] == pytest.approx(15.0)
    assert info["timestamps_s"] == pytest.approx([0.25, 0.25 + 2 / 15.0])
    assert info["saved_channels"] == [1, 2] and info["scanimage_block"] is True


def test_info_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.tif"
    write_file(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 frames x 1 planes x 1 channels x 16 x 20" in out
    assert "15 Hz" in out and "0.250000 .. 0.383333 s" in out and "ScanImage:   2022.1.0" in out


def test_follow_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_file(tmp_path / "t_00001_00001.tif", frames=2)
    write_file(tmp_path / "t_00002_00001.tif", frames=1)
    assert main(["follow", str(tmp_path), "--jsonl", "--idle-timeout", "0.2", "--poll", "0.01"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(Path(r["file"]).name, r["frame"], r["plane"], r["channel"]) for r in rows] == [
        ("t_00001_00001.tif", 0, 0, 1),
        ("t_00001_00001.tif", 1, 0, 1),
        ("t_00002_00001.tif", 0, 0, 1),
    ]
    assert rows[1]["timestamp_s"] == pytest.approx(0.25 + 1 / 15.0)
    assert "followed 3 page(s) in 2 file(s); stopped: idle timeout" in captured.err


def test_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    cases = {
        str(tmp_path / "missing.tif"): "no such file",
        str(text): "not a TIFF file",
        str(plain): "not from ScanImage",
    }
    for path, message in cases.items():
        result = run_cli("info", path, "--json")
        assert result.returncode == 2, (path, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_follow_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["follow", str(tmp_path / "nope"), "--idle-timeout", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]
