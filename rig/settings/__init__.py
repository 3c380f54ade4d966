"""The rig's settings: one typed, validated model for settings.yaml, composed from the sections.

- `schema`: the composed model (`Settings`) and the rig-level sections, with the checks across sections.
- `problems`: the wording of problems (`SettingsError`, one line per problem naming key path and value).
- `files`: reading (strict YAML with size and nesting limits, overrides) and writing settings files.

Everything a caller needs is importable from here: ``from rig.settings import Settings, load_settings``.
"""

from rig.settings.files import (
    DEFAULT_SETTINGS_PATH,
    MAX_SETTINGS_BYTES,
    MAX_SETTINGS_DEPTH,
    MAX_SETTINGS_VALUES,
    dump_settings,
    load_settings,
    parse_settings,
    read_settings_file,
)
from rig.settings.problems import SettingsError, format_problem
from rig.settings.schema import (
    AdvanceCriterion,
    AutoRewardSettings,
    BpodSettings,
    ClosedLoopSettings,
    ContextSettings,
    ContextSwitchSettings,
    DataSettings,
    DecoderSettings,
    ImagingSettings,
    MicroscopeSimSettings,
    MouseSimSettings,
    NetworkSettings,
    NormalDistribution,
    OnlineSettings,
    RegistrationSettings,
    RigSettings,
    SelectionSettings,
    Settings,
    SimSettings,
    SimSubjectSettings,
    TaskSettings,
    TimingSettings,
    TrainingStage,
    ValveCalibration,
    ValveCalibrationError,
    ValveCurve,
    ValvePoint,
    WiringSettings,
    bpod_line_names,
    endpoint_is_loopback,
    valve_time_s,
)

__all__ = [
    "DEFAULT_SETTINGS_PATH", "MAX_SETTINGS_BYTES", "MAX_SETTINGS_DEPTH", "MAX_SETTINGS_VALUES",
    "AdvanceCriterion", "AutoRewardSettings", "BpodSettings", "ClosedLoopSettings", "ContextSettings",
    "ContextSwitchSettings", "DataSettings", "DecoderSettings", "ImagingSettings", "MicroscopeSimSettings",
    "MouseSimSettings", "NetworkSettings", "NormalDistribution", "OnlineSettings", "RegistrationSettings",
    "RigSettings", "SelectionSettings", "Settings", "SettingsError", "SimSettings", "SimSubjectSettings",
    "TaskSettings", "TimingSettings", "TrainingStage", "ValveCalibration", "ValveCalibrationError",
    "ValveCurve", "ValvePoint", "WiringSettings", "bpod_line_names", "dump_settings", "endpoint_is_loopback",
    "format_problem", "load_settings", "parse_settings", "read_settings_file", "valve_time_s",
]
