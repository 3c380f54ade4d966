"""Settings model: defaults, file loading, and error messages that name the key path and value."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from online.transport import is_local_endpoint
from rig.errors import UserError
from rig.settings import (
    DEFAULT_SETTINGS_PATH,
    Settings,
    SettingsError,
    ValveCalibrationError,
    ValveCurve,
    ValvePoint,
    dump_settings,
    load_settings,
    valve_time_s,
)


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_for(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text))
    return info.value.problems


# --------------------------------------------------------------------------------------------------------
# defaults


def test_defaults_construct_and_validate() -> None:
    settings = Settings()
    assert settings.bpod.port == "emulator"
    assert settings.bpod.firmware == 23
    assert settings.task.timing.sample == 1.3
    assert settings.task.reward_volume_ul == 2.5
    assert [s.name for s in settings.task.stages] == [
        "sample",
        "sample-antibias",
        "delay-0.3",
        "delay-0.5",
        "delay-0.8",
        "delay-1.0",
        "delay-1.3",
        "full",
    ]
    assert set(settings.contexts) == {"tactile", "tactile-reversed", "auditory", "auditory-reversed"}


def test_repository_settings_file_equals_model_defaults() -> None:
    assert DEFAULT_SETTINGS_PATH.name == "settings.yaml"
    assert load_settings() == Settings()
    assert load_settings(DEFAULT_SETTINGS_PATH) == Settings()


def test_empty_and_partial_files_take_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()
    settings = load_settings(write(tmp_path, "task:\n  timing: {sample: 0.5}\n"))
    assert settings.task.timing.sample == 0.5
    assert settings.task.timing.response_cue == Settings().task.timing.response_cue
    assert settings.bpod == Settings().bpod


def test_dump_round_trips(tmp_path: Path) -> None:
    settings = load_settings(overrides={"bpod.emulator_speed": 4, "task": {"timing": {"sample": 0.8}}})
    text = dump_settings(settings)
    assert isinstance(yaml.safe_load(text), dict)
    assert load_settings(write(tmp_path, text)) == settings


def test_overrides_nested_and_dotted() -> None:
    settings = load_settings(overrides={"bpod.emulator_speed": 10, "data": {"root": "/tmp/x"}})
    assert settings.bpod.emulator_speed == 10
    assert settings.data.root == Path("/tmp/x")
    assert settings.task == Settings().task


def test_settings_are_read_only() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.bpod.port = "/dev/ttyACM0"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------
# one line per bad value, naming key path and value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("task:\n  timng: {}\n", "task.timng: unknown key (did you mean 'timing'?)"),
        ("task:\n  timing: {sample: -1}\n", "task.timing.sample = -1: must be greater than 0"),
        ("task:\n  timing: {sample: 61}\n", "task.timing.sample = 61: must be at most 60"),
        ("task:\n  timing: {sample: abc}\n", "task.timing.sample = 'abc': must be a number"),
        ("bpod: {firmware: 24}\n", "bpod.firmware = 24: must be one of 22, 23"),
        ("bpod: {emulator_speed: 0}\n", "bpod.emulator_speed = 0: must be greater than 0"),
        ("task:\n  selection: {history: 2.5}\n", "task.selection.history = 2.5: must be a whole number"),
        ("online: {enabled: maybe}\n", "online.enabled = 'maybe': must be true or false"),
        (
            "imaging: {source: scanimage}\n",
            "imaging.source = 'scanimage': must be one of simulated, scanimage_folder, scanimage_stream, "
            "none",
        ),
        ("online: {registration: 5}\n", "online.registration = 5: must be a mapping of keys to values"),
    ],
)
def test_single_bad_value_gives_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_for(tmp_path, text) == [expected]


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "rig: {colour: blue}\n")
    assert line == "rig.colour: unknown key (valid keys: name)"


def test_unknown_top_level_section(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "netwrok: {}\n")
    assert line == "netwrok: unknown key (did you mean 'network'?)"


def test_list_indices_are_kept_in_the_path(tmp_path: Path) -> None:
    text = """\
    task:
      stages:
        - {name: a, delay_s: 0.3, timeout_s: 1, selection: random,
           advance: {min_trials: 1, perf_threshold: 0.5, window: 10}}
        - {name: b, delay_s: 0.3, timeout_s: 1, selection: random,
           advance: {min_trials: 1, perf_threshold: 0.5, window: 10}}
        - {name: c, delay_s: -2, timeout_s: 1, selection: random,
           advance: {min_trials: 1, perf_threshold: 75, window: 10}}
    """
    assert problems_for(tmp_path, text) == [
        "task.stages[2].delay_s = -2: must be greater than 0",
        "task.stages[2].advance.perf_threshold = 75: must be at most 1",
    ]


def test_multiple_problems_give_multiple_lines(tmp_path: Path) -> None:
    text = """\
    bpod: {firmware: 24, model: r3}
    task:
      timng: {}
      timing: {sample: -1}
    """
    problems = problems_for(tmp_path, text)
    assert problems == [
        "bpod.firmware = 24: must be one of 22, 23",
        "bpod.model = 'r3': must be one of r1, r2, r2plus",
        "task.timing.sample = -1: must be greater than 0",
        "task.timng: unknown key (did you mean 'timing'?)",
    ]


def test_error_str_is_one_line_per_problem_and_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, "bpod: {firmware: 24, timeout_s: -1}\n"))
    error = info.value
    assert isinstance(error, UserError)
    assert str(error).splitlines() == error.problems
    assert len(error.problems) == 2


def test_bad_context_reference_names_key_and_valid_names(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "task:\n  context_switch: {sequence: [tactile, tactle-reversed]}\n")
    assert line.startswith("task.context_switch.sequence[1] = 'tactle-reversed': unknown context")
    assert "did you mean 'tactile-reversed'?" in line
    for name in ("tactile", "tactile-reversed", "auditory", "auditory-reversed"):
        assert name in line


def test_bad_default_context(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "task: {default_context: smell}\n")
    assert line.startswith("task.default_context = 'smell': unknown context (contexts: tactile,")


def test_contexts_replaced_as_a_whole_are_checked(tmp_path: Path) -> None:
    text = "contexts: {auditory: {modality: auditory, contingency: normal}}\n"
    problems = problems_for(tmp_path, text)
    assert problems[0].startswith("task.default_context = 'tactile': unknown context (contexts: auditory)")
    # default_context, both entries of context_switch.sequence, and the simulated subject's context
    assert len(problems) == 4
    assert problems[3].startswith("sim.subject.trained_context = 'tactile': unknown context")


def test_bad_context_entry(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "contexts:\n  tactile: {modality: smell, contingency: normal}\n")
    assert line == "contexts.tactile.modality = 'smell': must be one of tactile, auditory"


def test_valve_calibration_not_increasing(tmp_path: Path) -> None:
    text = """\
    bpod:
      valve_calibration:
        left:
          - {valve_time_s: 0.03, volume_ul: 2.5}
          - {valve_time_s: 0.02, volume_ul: 3.0}
    """
    (line,) = problems_for(tmp_path, text)
    assert line.startswith("bpod.valve_calibration.left = [")
    assert "must strictly increase" in line


def test_valve_calibration_too_few_points(tmp_path: Path) -> None:
    text = "bpod:\n  valve_calibration:\n    right: [{valve_time_s: 0.03, volume_ul: 2.5}]\n"
    (line,) = problems_for(tmp_path, text)
    assert line.startswith("bpod.valve_calibration.right = [")
    assert line.endswith("needs at least 2 calibration points, got 1")


def test_valve_calibration_point_out_of_range(tmp_path: Path) -> None:
    text = """\
    bpod:
      valve_calibration:
        left: [{valve_time_s: 0.01, volume_ul: 1}, {valve_time_s: -0.03, volume_ul: 2.5}]
    """
    assert problems_for(tmp_path, text) == [
        "bpod.valve_calibration.left[1].valve_time_s = -0.03: must be greater than 0"
    ]


def test_reward_volume_outside_calibration(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "task: {reward_volume_ul: 12}\n")
    assert line.startswith("task.reward_volume_ul = 12.0: left and right valves: 12 uL is outside")


def test_non_loopback_endpoint_refused(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "network: {frames: 'tcp://0.0.0.0:5557'}\n")
    assert line.startswith("network.frames = 'tcp://0.0.0.0:5557': not a loopback address")
    assert "bind_loopback_only" in line


def test_non_loopback_endpoint_allowed_when_asked(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, "network: {frames: 'tcp://10.0.0.2:5557', bind_loopback_only: false,\n"
                        "          keys: keys, authorized_keys: keys/authorized}\n")
    )
    assert settings.network.frames == "tcp://10.0.0.2:5557"


def test_malformed_endpoint(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "network: {control: 'tcp://127.0.0.1:99999'}\n")
    assert line.startswith("network.control = 'tcp://127.0.0.1:99999': must look like tcp://HOST:PORT")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/rig-frames", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
    ],
)
def test_endpoint_is_loopback(endpoint: str, loopback: bool) -> None:
    assert is_local_endpoint(endpoint) is loopback


def test_wiring_checked_against_bpod_model(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "wiring: {go_cue: PWM5}\n")
    assert line == (
        "wiring.go_cue = 'PWM5': not an output of a Bpod r2 (BNC1-2, PWM1-4, Valve1-4); did you mean 'PWM4'?"
    )
    assert (
        load_settings(write(tmp_path, "bpod: {model: r2plus}\nwiring: {go_cue: PWM5}\n")).wiring.go_cue
        == "PWM5"
    )


def test_wiring_line_used_twice(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "wiring: {go_cue: PWM3}\n")
    assert line == "wiring.go_cue = 'PWM3': already used by wiring.sample_tone_high"


def test_trial_bitcode_is_off_unless_wired_and_fits_in_the_baseline(tmp_path: Path) -> None:
    assert load_settings().wiring.trial_bitcode is None
    (line,) = problems_for(tmp_path, "wiring: {trial_bitcode: BNC2}\n")
    assert line == "wiring.trial_bitcode = 'BNC2': already used by wiring.pole"
    wired = load_settings(write(tmp_path, "wiring: {trial_bitcode: BNC2, pole: PWM1}\n"))
    assert wired.wiring.trial_bitcode == "BNC2"
    (line,) = problems_for(tmp_path, "wiring: {trial_bitcode: BNC2, pole: PWM1}\n"
                                     "task: {timing: {pre_sample: 0.05}}\n")
    assert line.startswith("task.trial_bitcode: takes 0.069 s: it must be shorter than task.timing.pre_sa")
    unwired = load_settings(write(tmp_path, "task: {timing: {pre_sample: 0.05}}\n"))
    assert unwired.task.timing.pre_sample == 0.05


def test_closed_loop_app_port_needs_firmware_23(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "bpod: {firmware: 22}\nonline: {closed_loop: {enabled: true}}\n")
    assert line.startswith("online.closed_loop.mode = 'app_port': needs bpod.firmware 23")


def test_duplicate_stage_names(tmp_path: Path) -> None:
    stage = (
        "{name: a, delay_s: 0.3, timeout_s: 1, selection: random,"
        " advance: {min_trials: 1, perf_threshold: 0.5, window: 10}}"
    )
    (line,) = problems_for(tmp_path, f"task:\n  stages: [{stage}, {stage}]\n")
    assert line == "task.stages[1].name = 'a': duplicate stage name (also task.stages[0])"


def test_scanimage_folder_required(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "imaging: {source: scanimage_folder}\n")
    assert line == "imaging.scanimage_folder: required when imaging.source is 'scanimage_folder'"


# --------------------------------------------------------------------------------------------------------
# file problems


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  timing: {sample: 1\n  sample: 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}:3:")
    assert ": YAML syntax error: " in line


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, "task:\n  timing:\n    delay: 1\n    delay: 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}:4:5: duplicate key 'delay' (first on line 3)"]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert info.value.problems == [f"{path}: settings file not found"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    (line,) = info.value.problems
    assert line.startswith(f"{path}: must be a mapping of sections")


# --------------------------------------------------------------------------------------------------------
# valve calibration


def _curve(*points: tuple[float, float]) -> ValveCurve:
    return ValveCurve([ValvePoint(valve_time_s=t, volume_ul=v) for t, v in points])


def test_valve_time_interpolates_linearly() -> None:
    curve = _curve((0.01, 1.0), (0.03, 3.0), (0.07, 5.0))
    assert curve.valve_time_s(1.0) == pytest.approx(0.01)
    assert curve.valve_time_s(2.0) == pytest.approx(0.02)
    assert curve.valve_time_s(3.0) == pytest.approx(0.03)
    assert curve.valve_time_s(4.0) == pytest.approx(0.05)
    assert valve_time_s(curve.root, 5.0) == pytest.approx(0.07)


def test_valve_time_extrapolates_up_to_twice_the_range() -> None:
    curve = _curve((0.01, 1.0), (0.03, 3.0))
    assert curve.valve_time_s(6.0) == pytest.approx(0.06)
    assert curve.valve_time_s(0.5) == pytest.approx(0.005)
    with pytest.raises(ValveCalibrationError, match="outside the valve calibration"):
        curve.valve_time_s(6.5)
    with pytest.raises(ValveCalibrationError, match="outside the valve calibration"):
        curve.valve_time_s(0.4)


def test_valve_time_refuses_non_positive_extrapolation() -> None:
    curve = _curve((0.02, 2.0), (0.04, 2.5))  # the line crosses 0 s at 1.5 uL
    with pytest.raises(ValveCalibrationError, match="valve time"):
        curve.valve_time_s(1.2)


def test_reward_valve_time_from_defaults() -> None:
    settings = Settings()
    assert settings.reward_valve_time_s("left") == pytest.approx(0.03)
    assert settings.bpod.valve_calibration.valve_time_s("right", 2.5) == pytest.approx(0.03)


def test_bpod_2plus_needs_firmware_23(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "bpod: {model: r2plus, firmware: 22}\n")
    assert line == "bpod.firmware = 22: a Bpod r2plus runs firmware 23 only"


def test_simulated_subject_stage_must_exist(tmp_path: Path) -> None:
    (line,) = problems_for(tmp_path, "sim:\n  subject: {stage: ful}\n")
    assert line.startswith("sim.subject.stage = 'ful': unknown stage (did you mean 'full'?")
