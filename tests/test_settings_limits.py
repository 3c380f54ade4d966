"""Settings files that are too big, too deep, expand through aliases, or give the wrong type: each is refused
in one line naming the file and the problem, before it can cost time or memory, and `rig check-settings`
says so with exit status 2 and no traceback."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rig.settings import (
    DEFAULT_SETTINGS_PATH,
    MAX_SETTINGS_BYTES,
    MAX_SETTINGS_DEPTH,
    MAX_SETTINGS_VALUES,
    SettingsError,
    load_settings,
)

REPO = Path(__file__).resolve().parents[1]
MEMORY_CAP = 1 << 30  # address-space limit of the command: a loader that blows up dies, not the host


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refusal(path: Path | str) -> str:
    """The one problem line for a refused file."""
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def check_settings(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rig", "check-settings", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=_cap_memory)


def assert_one_line_refusal(path: Path | str, *words: str) -> None:
    proc = check_settings(path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# --------------------------------------------------------------------------------------------------------
# size


def test_a_file_over_the_size_limit_is_refused_unread_even_when_its_yaml_is_valid(tmp_path: Path) -> None:
    # valid settings followed by a long comment: only the size is wrong
    path = write(tmp_path, "task:\n  reward_volume_ul: 2.5\n")
    with open(path, "a") as fh:
        fh.write(("# " + "x" * 1000 + "\n") * (MAX_SETTINGS_BYTES // 1000 + 1))
    line = refusal(path)
    assert str(path) in line and "too large" in line and f"{MAX_SETTINGS_BYTES // 1_000_000} MB" in line
    assert_one_line_refusal(path, "too large")


def test_a_file_just_under_the_size_limit_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  reward_volume_ul: 2.0\n")
    with open(path, "a") as fh:
        fh.write("#" * (MAX_SETTINGS_BYTES - path.stat().st_size - 1) + "\n")
    assert path.stat().st_size == MAX_SETTINGS_BYTES
    assert load_settings(path).task.reward_volume_ul == 2.0


def test_an_endless_file_is_refused_after_reading_the_limit() -> None:
    # /dev/zero reports size 0 and never ends: only a bounded read stops
    line = refusal("/dev/zero")
    assert "/dev/zero" in line and "too large" in line
    assert_one_line_refusal("/dev/zero", "too large")


# --------------------------------------------------------------------------------------------------------
# nesting and aliases


@pytest.mark.parametrize("style", ["flow lists", "flow mappings", "block mappings"])
def test_deep_nesting_is_refused_with_the_place_it_goes_too_deep(tmp_path: Path, style: str) -> None:
    levels = 100_000 if style.startswith("flow") else 400
    if style == "flow lists":
        text = "task: " + "[" * levels + "]" * levels + "\n"
    elif style == "flow mappings":
        text = "task: " + "{a: " * levels + "1" + "}" * levels + "\n"
    else:
        text = "".join(" " * depth + "a:\n" for depth in range(levels)) + " " * levels + "b: 1\n"
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    line = refusal(path)
    assert line.startswith(f"{path}:1:") or line.startswith(f"{path}:{MAX_SETTINGS_DEPTH}:"), line
    assert f"nested more than {MAX_SETTINGS_DEPTH} levels deep" in line
    assert_one_line_refusal(path, "nested more than")


def test_nesting_within_the_limit_is_judged_by_the_model(tmp_path: Path) -> None:
    levels = MAX_SETTINGS_DEPTH - 2  # the section and the key are two of the levels
    path = write(tmp_path, "task:\n  stages: " + "[" * levels + "]" * levels + "\n")
    line = refusal(path)
    assert "nested" not in line and line.startswith("task.stages[0]"), line


def test_too_many_values_are_refused_while_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  stages: [" + ", ".join(["{}"] * (2 * MAX_SETTINGS_VALUES)) + "]\n")
    assert path.stat().st_size < MAX_SETTINGS_BYTES
    line = refusal(path)
    assert line.startswith(f"{path}:2:") and f"more than {MAX_SETTINGS_VALUES:,} keys and values" in line
    assert_one_line_refusal(path, "keys and values")


def test_aliases_that_expand_to_billions_of_values_are_refused(tmp_path: Path) -> None:
    lines = ["laughs:", "  a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        name, previous = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\ntask:\n  stages: *i\n")  # 9**9 values
    line = refusal(path)
    assert str(path) in line and "aliases" in line and f"{MAX_SETTINGS_VALUES:,}" in line
    assert_one_line_refusal(path, "aliases")


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  stages: &loop [*loop]\n")
    line = refusal(path)
    assert str(path) in line and "refers to itself" in line
    assert_one_line_refusal(path, "refers to itself")


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        contexts:
          tactile: &tactile {modality: tactile, contingency: normal}
          tactile-reversed: {<<: *tactile, contingency: reversed}
        task:
          context_switch: {sequence: [tactile, tactile-reversed]}
    """)
    settings = load_settings(path)
    assert settings.contexts["tactile-reversed"].modality == "tactile"
    assert settings.contexts["tactile-reversed"].contingency == "reversed"


# --------------------------------------------------------------------------------------------------------
# strict types


@pytest.mark.parametrize(("text", "expected"), [
    ("task:\n  reward_volume_ul: true\n", "task.reward_volume_ul = true: must be a number, not true/false"),
    ("task:\n  reward_volume_ul: '2.5'\n",
     "task.reward_volume_ul = '2.5': must be a number, not text (write 2.5 without quotes)"),
    ("task:\n  selection:\n    history: '30'\n",
     "task.selection.history = '30': must be a whole number, not text (write 30 without quotes)"),
    ("task:\n  selection:\n    history: false\n",
     "task.selection.history = false: must be a whole number, not true/false"),
    ("task:\n  selection:\n    history: 30.0\n", "task.selection.history = 30.0: must be a whole number"),
    ("online:\n  start_with_rig: 1\n", "online.start_with_rig = 1: must be true or false"),
    ("online:\n  start_with_rig: 'yes'\n", "online.start_with_rig = 'yes': must be true or false"),
    ("bpod:\n  firmware: '23'\n", "bpod.firmware = '23': must be one of 22, 23"),
])  # fmt: skip
def test_values_of_the_wrong_type_are_refused_not_converted(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(write(tmp_path, text)) == expected


def test_a_whole_number_is_a_number_and_exponents_are_numbers(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "task:\n  reward_volume_ul: 2\n  timing:\n    sample: 13e-1\n"))
    assert settings.task.reward_volume_ul == 2.0 and isinstance(settings.task.reward_volume_ul, float)
    assert settings.task.timing.sample == pytest.approx(1.3)


def test_paths_are_still_written_as_text(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f"data:\n  root: {tmp_path / 'data'}\n"))
    assert settings.data.root == tmp_path / "data"


def test_the_repository_settings_load_and_check(tmp_path: Path) -> None:
    load_settings(DEFAULT_SETTINGS_PATH)
    proc = check_settings(DEFAULT_SETTINGS_PATH)
    assert proc.returncode == 0, proc.stderr
    # the resolved settings printed by check-settings load again under the strict rules
    resolved = write(tmp_path, proc.stdout, "resolved.yaml")
    assert load_settings(resolved) == load_settings(DEFAULT_SETTINGS_PATH)
