"""Reading and writing settings files: a strict YAML loader with limits, merging of overrides, and dumps.

A settings file is small; anything that would cost time or memory before the model can say no (too many
bytes, nesting, or values, aliases that expand without end, duplicate keys) is refused while it is read, in
one line naming the file, the place and the problem.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rig.settings.problems import SettingsError
from rig.settings.rig_file import check_placement, find_rig_file, rig_file_keys, split_sections
from rig.settings.schema import Settings

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS_PATH: Path = Path(__file__).resolve().parents[2] / "settings.yaml"
"""The repository's settings.yaml, used when no file is given."""



MAX_SETTINGS_BYTES = 1_000_000
"""A settings file is a few kilobytes; a larger one is refused unread (PyYAML spent 38 s and 1.2 GB on
16 MB before the model could say no)."""
MAX_SETTINGS_DEPTH = 32
"""Nesting levels allowed in a settings file (the model's deepest value is 6 levels down). Checked while the
file is read, so deep input is refused long before PyYAML's recursive composer reaches Python's limit."""
MAX_SETTINGS_VALUES = 10_000
"""Keys and values in a settings file, as written and with its aliases expanded (the defaults have 451):
counted while the file is read, and nine lines of anchors and aliases can stand for a billion values."""


class _DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping defines a key twice; PyYAML would silently keep the last one."""


class _LimitError(yaml.MarkedYAMLError):
    """The file nests too deeply or its aliases expand too far: refused before it is built."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated key silently overrides the first) and nesting
    beyond MAX_SETTINGS_DEPTH or MAX_SETTINGS_VALUES as it reads, and reads YAML 1.2 numbers such as 1e-3
    as numbers (YAML 1.1 needs a dot)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self._depth >= MAX_SETTINGS_DEPTH:
            raise _LimitError(None, None, f"nested more than {MAX_SETTINGS_DEPTH} levels deep (settings "
                              "need a few)", self.peek_event().start_mark)
        self._nodes += 1
        if self._nodes > MAX_SETTINGS_VALUES:
            raise _LimitError(None, None, f"more than {MAX_SETTINGS_VALUES:,} keys and values (settings "
                              "have a few hundred)", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # keys written in this mapping may override keys merged in with `<<: *anchor`, not each other
    written = {id(key_node) for key_node, _ in node.value if key_node.tag != _MERGE_TAG}
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    first_line: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
            ) from exc
        if id(key_node) in written:
            if key in first_line:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key] + 1})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases make it deeper than MAX_SETTINGS_DEPTH, larger than
    MAX_SETTINGS_VALUES values, or endless (an alias inside its own anchor). An alias is a shared node, so
    each node's expanded size is computed once: a walk over the nodes as written, without recursion."""
    done: dict[int, tuple[int, int]] = {}  # node -> (values, depth) with aliases expanded
    on_path: set[int] = set()  # started, not finished: the current node and its ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            on_path.discard(id(node))
            parts = [done[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in parts)
            depth = 1 + max((d for _, d in parts), default=0)
            if values > MAX_SETTINGS_VALUES:
                raise _LimitError(None, None, "aliases expand this file to more than "
                                  f"{MAX_SETTINGS_VALUES:,} values", node.start_mark)
            if depth > MAX_SETTINGS_DEPTH:
                raise _LimitError(None, None, f"nested more than {MAX_SETTINGS_DEPTH} levels deep through "
                                  "aliases (settings need a few)", node.start_mark)
            done[id(node)] = (values, depth)
            continue
        if id(node) in done:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _LimitError(None, None, "an alias inside its own anchor refers to itself, so its value "
                                  "never ends", child.start_mark)
            if id(child) not in done:
                stack.append((child, False))


def _read_text(path: Path) -> str:
    """The file's text, read no further than MAX_SETTINGS_BYTES + 1 bytes (a device or pipe may not end)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SETTINGS_BYTES + 1)
    except FileNotFoundError:
        raise SettingsError([f"{path}: settings file not found"], path) from None
    except IsADirectoryError:
        raise SettingsError([f"{path}: is a folder, not a settings file"], path) from None
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read: {exc.strerror}"], path) from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsError([f"{path}: too large for a settings file (more than "
                             f"{MAX_SETTINGS_BYTES // 1_000_000} MB)"], path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError([f"{path}: not a UTF-8 text file"], path) from None


def _load_yaml(text: str) -> Any:
    """yaml.load with the strict loader, plus the alias check between composing and building."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_settings_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a settings file ({} if empty); file and YAML problems raise SettingsError."""
    text = _read_text(path)
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        if isinstance(exc, _DuplicateKeyError | _LimitError):
            raise SettingsError([f"{where}: {exc.problem}"], path) from None
        detail = exc.problem or "invalid YAML"
        if exc.context:
            detail = f"{detail} ({exc.context})"
        raise SettingsError([f"{where}: YAML syntax error: {detail}"], path) from None
    except yaml.YAMLError as exc:
        raise SettingsError([f"{path}: YAML syntax error: {exc}"], path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            [f"{path}: must be a mapping of sections (rig:, bpod:, task:, ...), not a {type(data).__name__}"],
            path,
        )
    return data


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{'bpod.port': x} -> {'bpod': {'port': x}}, so callers can override one key by its path."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        target = out
        for part in parts[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = target[part] = {}
            target = existing
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
        last = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(last), dict):
            target[last] = _merge(target[last], value)
        else:
            target[last] = value
    return out


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of mappings; anything else in ``update`` (lists included) replaces ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_settings(data: Mapping[str, Any], source: Path | None = None) -> Settings:
    """Validate a raw mapping (as read from YAML) into Settings; problems raise SettingsError."""
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise SettingsError.from_validation_error(exc, Settings, source) from None


def _problem_section(line: str) -> str:
    """The top-level key a problem line starts with (``bpod`` of ``bpod.firmware = 24: ...``)."""
    match = re.match(r"[A-Za-z_][A-Za-z0-9_-]*", line)
    return match.group(0) if match else ""


def load_settings(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None,
                  rig: Path | str | None = None) -> Settings:
    """Read, merge and validate the experiment's settings and the rig box's file.

    ``path`` defaults to the repository's settings.yaml. ``rig`` is the rig file; by default rig.yaml
    beside ``path`` if there is one, else none (the rig sections of ``path``, or the built-in simulated
    rig). With a rig file, its sections (rig, bpod, wiring, data, network, devices) join the experiment's
    (task, contexts, imaging, online, sim): each section comes from one file, and one written in the
    other file is refused. ``overrides`` (nested mappings, or dotted keys like
    ``{"bpod.emulator_speed": 10}``) replace values of either file, e.g. from command-line options, and
    are validated together with them. Problems name the file when there are two.
    """
    source = Path(path) if path is not None else DEFAULT_SETTINGS_PATH
    raw = read_settings_file(source)
    rig_path = find_rig_file(source, rig)
    rig_raw: dict[str, Any] = {}
    if rig_path is not None:
        rig_raw = read_settings_file(rig_path)
        check_placement(raw, source, rig_raw, rig_path)  # so the two hold different keys
        raw = {**rig_raw, **raw}
    if overrides:
        raw = _merge(raw, _expand_dotted(overrides))
    try:
        settings = parse_settings(raw, source)
    except SettingsError as exc:
        if rig_path is None:
            raise
        keys = rig_file_keys(rig_raw)
        raise SettingsError([f"{rig_path if _problem_section(line) in keys else source}: {line}"
                             for line in exc.problems], source) from None
    logger.debug("settings loaded from %s (rig file: %s)", source, rig_path or "none")
    return settings


class _Dumper(yaml.SafeDumper):
    """Writes short lists and small flat mappings on one line, so a dump reads like the hand-written file."""


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(_is_scalar(v) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[Any, Any]) -> yaml.Node:
    flow = 0 < len(data) <= 3 and all(_is_scalar(v) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def dump_settings(settings: Settings) -> str:
    """The settings as YAML that ``load_settings`` reads back to an equal object (as one file)."""
    return _dump(settings.model_dump(mode="json"))


def dump_settings_files(settings: Settings) -> tuple[str, str]:
    """The settings as (settings.yaml, rig.yaml): the experiment's sections and the rig box's, which
    ``load_settings`` reads back, side by side, to an equal object (the session snapshot)."""
    experiment, rig = split_sections(settings.model_dump(mode="json"))
    return _dump(experiment), _dump(rig)


def _last_leaf(node: yaml.Node) -> yaml.Node:
    """The last scalar (or flow collection) of a node: where its text ends, before any comment that
    follows it (a block collection's own end mark lies after those comments)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    return node


def _find_key(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return key_node, value_node
    return None


def _block(key: str, value: Any, indent: int) -> list[str]:
    text = _dump({key: value})
    return [" " * indent + line + "\n" for line in text.splitlines()]


def replace_settings_section(path: Path, section: str, key: str, value: Any) -> str:
    """The text of the settings file ``path`` with ``section.key`` replaced by ``value`` (or added), every
    other line, comments included, kept as written. The section must be written in block style."""
    text = _read_text(path)
    read_settings_file(path)  # the strict checks first: a broken file is named, not rewritten
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    root = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    found = _find_key(root, section) if root is not None else None
    if found is None:
        return "".join(lines) + "\n" + "".join(_block(section, {key: value}, 0))
    section_key, section_node = found
    if not isinstance(section_node, yaml.MappingNode) or section_node.flow_style or not section_node.value:
        raise SettingsError([f"{path}:{section_key.start_mark.line + 1}: {section}: write it as a block "
                             f"mapping (one key per line) so that {section}.{key} can be rewritten"], path)
    indent = section_node.value[0][0].start_mark.column
    entry = _find_key(section_node, key)
    if entry is None:
        end = _last_leaf(section_node).end_mark.line
        return "".join(lines[: end + 1] + _block(key, value, indent) + lines[end + 1:])
    start, end = entry[0].start_mark.line, _last_leaf(entry[1]).end_mark.line
    return "".join(lines[:start] + _block(key, value, indent) + lines[end + 1:])


def write_settings_text(path: Path, text: str) -> None:
    """Replace a settings file atomically: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
