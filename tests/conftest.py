"""Shared test setup: Qt renders offscreen so GUI tests run without a display (CI, SSH); in CI, a test
skipped because the shared sample data is missing fails instead.

The real-file tests read ScanImage and two-photon sample files from `../shared/data` (beside the repository)
and skip with a reason that says "shared sample data" (or names the folder, ".../shared/data") when the folder
is absent, which is right for a user's fresh clone. A CI run has the folder, so such a skip there means the
tests did not run on the real files: with CI set (CI=true, as CI services and `.ci/run` set it) it is reported
as a failure (an error when the skip came from a `skipif` mark, which pytest evaluates at setup).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

MISSING_SHARED_DATA = ("shared sample data", "shared/data")
"""Words a skip for want of the shared sample data has in its reason (the phrase, or the folder)."""


def in_ci() -> bool:
    """CI set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(words in reason for words in MISSING_SHARED_DATA):
        report.outcome = "failed"
        report.longrepr = (f"{reason.removeprefix('Skipped: ')}: with CI={os.environ['CI']} the shared "
                           "sample data must be present (../shared/data beside the repository), so this test "
                           "may not skip")
