"""The command line, run as a real subprocess (`python -m rig`) so exit codes and streams are the user's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rig.settings import Settings, load_settings


def rig(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rig", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_help_lists_subcommands() -> None:
    result = rig("--help")
    assert result.returncode == 0
    assert "check-settings" in result.stdout
    assert "run" in result.stdout


def test_check_settings_default_file_prints_resolved_yaml(tmp_path: Path) -> None:
    result = rig("check-settings")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "resolved.yaml"
    out.write_text(result.stdout, encoding="utf-8")
    assert load_settings(out) == Settings()


def test_check_settings_good_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("task:\n  timing: {sample: 0.5}\n", encoding="utf-8")
    result = rig("check-settings", path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["task"]["timing"]["sample"] == 0.5
    assert resolved["task"]["timing"]["response_cue"] == 0.1  # filled in from the defaults


def test_check_settings_bad_file_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("bpod: {firmware: 24}\ntask:\n  timng: {}\n  timing: {sample: -1}\n", encoding="utf-8")
    result = rig("check-settings", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "bpod.firmware = 24: must be one of 22, 23",
        "task.timing.sample = -1: must be greater than 0",
        "task.timng: unknown key (did you mean 'timing'?)",
    ]


def test_check_settings_yaml_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("task: [1, 2\n", encoding="utf-8")
    result = rig("check-settings", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{bad}:")
    assert "YAML syntax error" in result.stderr

    missing = rig("check-settings", tmp_path / "missing.yaml")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"{tmp_path / 'missing.yaml'}: settings file not found"


def test_run_refuses_an_unknown_context_before_starting(tmp_path: Path) -> None:
    result = rig("run", "--no-gui", "--trials", "3", "--context", "tactil", "--data", tmp_path)
    assert result.returncode == 2
    assert "--context 'tactil': unknown context (contexts: tactile, tactile-reversed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_control_commands_without_a_session_fail_clearly(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("network:\n  control: tcp://127.0.0.1:5999\n")
    result = rig("status", "--settings", settings)
    assert result.returncode == 2
    assert "no session answered on tcp://127.0.0.1:5999" in result.stderr


def test_run_rejects_bad_arguments() -> None:
    result = rig("run", "--trials", "0")
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


def test_main_in_process_returns_status(capsys: pytest.CaptureFixture[str]) -> None:
    from rig.cli import main

    assert main(["check-settings"]) == 0
    assert "bpod:" in capsys.readouterr().out
