"""The rig's settings: one typed, validated model for settings.yaml, composed from the sections.

- `schema`: the composed model (`Settings`) and the rig-level sections, with the checks across sections.
- `problems`: the wording of problems (`SettingsError`, one line per problem naming key path and value).
- `files`: reading (strict YAML with size and nesting limits, overrides) and writing settings files.
- `rig_file`: which sections are the rig box's (a rig file per box) and which the experiment's.

The sections of the other packages are theirs (`protocols.settings`: the task's; `hardware.settings`: the
devices'); they are re-exported here with the rest, so a caller needs only
``from rig.settings import Settings, load_settings``.
"""

from hardware.settings import (
    BpodSettings,
    MicroscopeSimSettings,
    MouseSimSettings,
    NormalDistribution,
    SimSettings,
    SimSubjectSettings,
    ValveCalibration,
    ValveCalibrationError,
    ValveCurve,
    ValvePoint,
    bpod_line_names,
    valve_time_s,
)
from online.settings import ClosedLoopSettings, DecoderSettings, OnlineSettings, RegistrationSettings
from protocols.settings import (
    AdvanceCriterion,
    AutoRewardSettings,
    ContextSettings,
    ContextSwitchSettings,
    SelectionSettings,
    TaskSettings,
    TimingSettings,
    TrainingStage,
    WiringSettings,
)
from rig.settings.files import (
    DEFAULT_SETTINGS_PATH,
    MAX_SETTINGS_BYTES,
    MAX_SETTINGS_DEPTH,
    MAX_SETTINGS_VALUES,
    dump_settings,
    dump_settings_files,
    load_settings,
    parse_settings,
    read_settings_file,
)
from rig.settings.problems import SettingsError, format_problem
from rig.settings.rig_file import EXPERIMENT_SECTIONS, RIG_FILE_NAME, find_rig_file, rig_sections
from rig.settings.schema import DataSettings, ImagingSettings, NetworkSettings, RigSettings, Settings

__all__ = [
    "DEFAULT_SETTINGS_PATH", "EXPERIMENT_SECTIONS", "MAX_SETTINGS_BYTES", "MAX_SETTINGS_DEPTH",
    "MAX_SETTINGS_VALUES", "RIG_FILE_NAME",
    "AdvanceCriterion", "AutoRewardSettings", "BpodSettings", "ClosedLoopSettings", "ContextSettings",
    "ContextSwitchSettings", "DataSettings", "DecoderSettings", "ImagingSettings", "MicroscopeSimSettings",
    "MouseSimSettings", "NetworkSettings", "NormalDistribution", "OnlineSettings", "RegistrationSettings",
    "RigSettings", "SelectionSettings", "Settings", "SettingsError", "SimSettings", "SimSubjectSettings",
    "TaskSettings", "TimingSettings", "TrainingStage", "ValveCalibration", "ValveCalibrationError",
    "ValveCurve", "ValvePoint", "WiringSettings", "bpod_line_names", "dump_settings", "dump_settings_files",
    "find_rig_file", "format_problem", "load_settings", "parse_settings", "read_settings_file",
    "rig_sections", "valve_time_s",
]
