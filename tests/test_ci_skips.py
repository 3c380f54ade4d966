"""In CI the shared sample data is present, so a test skipped for want of it is a failure, not a pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

DATA = "/nonexistent/shared/data"

@pytest.mark.skipif(True, reason="shared sample data not present")
def test_marked():
    pass

def test_skipped_inside():
    pytest.skip(f"shared sample data not present at {DATA}")

@pytest.mark.skipif(True, reason="needs root")
def test_other_reason():
    pass

@pytest.mark.skipif(True, reason="../shared/data (the real sample files) is absent")
def test_named_folder():
    pass

def test_runs():
    assert True
'''


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(folder)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=60)


def test_skips_for_missing_shared_data_fail_in_ci_and_stay_skips_elsewhere(tmp_path: Path) -> None:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")  # the real hook, beside a sample test
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the repository's settings out of it

    clone = run_pytest(tmp_path, ci=None)
    assert clone.returncode == 0, clone.stdout
    assert "1 passed, 4 skipped" in clone.stdout

    for value in ("true", "1"):
        ci = run_pytest(tmp_path, ci=value)
        assert ci.returncode == 1, ci.stdout
        assert "1 failed, 1 passed, 1 skipped, 2 errors" in ci.stdout
        assert "ERROR test_sample.py::test_marked" in ci.stdout  # a skipif mark is evaluated at setup
        assert "ERROR test_sample.py::test_named_folder" in ci.stdout
        assert "FAILED test_sample.py::test_skipped_inside" in ci.stdout
        assert "CI=" in ci.stdout and "shared sample data not present" in ci.stdout

    off = run_pytest(tmp_path, ci="false")
    assert off.returncode == 0 and "1 passed, 4 skipped" in off.stdout


def test_ci_entry_point_runs_make_test_with_ci_set(tmp_path: Path) -> None:
    # A `make` first on PATH that records how it was called stands in for the whole suite.
    make = tmp_path / "make"
    make.write_text('#!/bin/sh\necho "CI=$CI make $*"\n')
    make.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([str(TESTS.parent / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and done.stdout == "CI=true make test\n", done
