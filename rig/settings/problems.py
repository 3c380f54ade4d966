"""Problem lines for bad settings: pydantic's ValidationError -> one line per problem.

Each line names the key path, the bad value and what is allowed (``task.timing.delay = -1: must be greater
than 0``), so a user can fix the file without reading a traceback. Validators that find several problems at
once raise ``_Problems`` so that each gets its own line at its own key path.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, RootModel, ValidationError

from online.wire import did_you_mean
from rig.errors import UserError

_NO_VALUE: Any = object()
"""Marks a problem that has no value to show (an unknown or missing key)."""

Problem = tuple[tuple[str | int, ...], Any, str]
"""(key path below the validated model, bad value or _NO_VALUE, message) of one problem."""


# --------------------------------------------------------------------------------------------------------
# Problems found by cross-field validators


class _Problems(ValueError):
    """Several problems found by one validator, each at its own key path below the validated model.

    Pydantic keeps the exception object in the error's context, so the converter can expand it into one
    line per problem instead of one vague line for the whole section.
    """

    def __init__(self, items: Sequence[Problem]) -> None:
        self.items = list(items)
        super().__init__("; ".join(format_problem(path, message, value) for path, value, message in items))


class _ProblemList:
    """Collects (path, value, message) triples and raises them together."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: tuple[str | int, ...], message: str, value: Any = _NO_VALUE) -> None:
        self.items.append((path, value, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise _Problems(self.items)




class SettingsError(UserError):
    """The settings cannot be used; ``problems`` holds one line per problem, ``str()`` joins them."""

    def __init__(self, problems: Sequence[str], source: Path | None = None) -> None:
        self._problems = list(problems)
        self.source = source
        super().__init__("\n".join(self._problems))

    @property
    def problems(self) -> list[str]:
        return list(self._problems)

    @classmethod
    def from_validation_error(
        cls, error: ValidationError, root: type[BaseModel], source: Path | None = None
    ) -> SettingsError:
        """Translate pydantic's errors (validated against the model ``root``) into problem lines."""
        lines: list[str] = []
        for err in error.errors(include_url=False):
            for line in _describe_error(err, root):
                if line not in lines:
                    lines.append(line)
        return cls(lines, source)


def format_problem(path: Sequence[str | int], message: str, value: Any = _NO_VALUE) -> str:
    """``a.b[2].c = value: message``, or ``a.b: message`` when there is no value to show."""
    where = _format_path(path)
    if value is _NO_VALUE:
        return f"{where}: {message}"
    return f"{where} = {_format_value(value)}: {message}"


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _format_value(value: Any, limit: int = 80) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str | Path):
        text = repr(str(value))
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, sort_keys=False).strip()
            text = text.removesuffix("...").strip()
        except yaml.YAMLError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] so the walker sees the underlying type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        elif isinstance(tp, type) and issubclass(tp, RootModel):
            tp = tp.model_fields["root"].annotation
        else:
            return tp


def _type_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The declared type at a key path, or None when the path leaves the model (for did-you-mean)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return None
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _unwrap(tp)


_SIMPLE_MESSAGES = {
    "missing": "required key is missing",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "path_type": "must be a path",
    "none_required": "must be null",
}


_NUMBER_TEXT = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$")
"""A number written as text (quoted in YAML): the message then says to drop the quotes."""


def _describe_error(err: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    """One pydantic error -> problem line(s)."""
    kind: str = err["type"]
    loc: tuple[str | int, ...] = tuple(err["loc"])
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input", _NO_VALUE)

    if kind in ("value_error", "assertion_error") and isinstance(ctx.get("error"), _Problems):
        problems: _Problems = ctx["error"]
        return [format_problem(loc + rel, message, val) for rel, val, message in problems.items]
    if kind == "extra_forbidden":
        parent = _type_at(root, loc[:-1])
        key = str(loc[-1])
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            valid = list(parent.model_fields)
            hint = did_you_mean(key, valid)
            message = (
                f"unknown key ({hint})"
                if hint
                else f"unknown key (valid keys: {', '.join(valid)})"
            )
        else:
            message = "unknown key"
        return [format_problem(loc, message)]
    if kind == "missing":
        return [format_problem(loc, _SIMPLE_MESSAGES[kind])]
    if kind in _SIMPLE_MESSAGES:
        message = _SIMPLE_MESSAGES[kind]
        if kind in ("int_type", "float_type") and isinstance(value, bool):
            message += ", not true/false"
        elif kind in ("int_type", "float_type") and isinstance(value, str) and _NUMBER_TEXT.match(value):
            message += f", not text (write {value.strip()} without quotes)"
    elif kind == "greater_than":
        message = f"must be greater than {_number(ctx['gt'])}"
    elif kind == "greater_than_equal":
        message = f"must be at least {_number(ctx['ge'])}"
    elif kind == "less_than":
        message = f"must be less than {_number(ctx['lt'])}"
    elif kind == "less_than_equal":
        message = f"must be at most {_number(ctx['le'])}"
    elif kind == "literal_error":
        declared = _type_at(root, loc)
        choices = get_args(declared) if get_origin(declared) is Literal else ()
        if choices:
            message = "must be one of " + ", ".join(str(c) for c in choices)
        else:
            message = f"must be one of {ctx.get('expected', '?')}"
    elif kind == "too_short":
        message = f"must have at least {ctx['min_length']} item{'s' if ctx['min_length'] != 1 else ''}"
    elif kind == "too_long":
        message = f"must have at most {ctx['max_length']} items"
    elif kind == "string_too_short":
        message = (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx['min_length']} characters"
        )
    elif kind == "string_too_long":
        message = f"must be at most {ctx['max_length']} characters"
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        message = str(ctx["error"])
    else:
        msg = str(err.get("msg", kind))
        message = msg[:1].lower() + msg[1:]
    if isinstance(value, Mapping) and kind not in ("value_error", "assertion_error"):
        value = _NO_VALUE  # a whole section as the "value" only hides the message
    return [format_problem(loc, message, value)]

