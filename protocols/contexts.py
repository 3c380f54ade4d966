"""Task contexts: which cue a trial presents and which lick it asks for.

A trial's type is the side the mouse must lick (`left` / `right`). The context turns that side into a
cue: the tactile context presents a pole at a posterior or anterior position, the auditory context a
high (10 kHz) or low (2 kHz) tone. Under the normal contingency posterior pole / high tone ask for a
right lick and anterior pole / low tone for a left lick; the reversed contingency swaps the sides.
Switching context changes only this mapping, never the licking actions, which is what lets the rig
ask whether the same lick is prepared by the same cortical pattern in each context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

from online.wire import did_you_mean

Side = Literal["left", "right"]
Modality = Literal["tactile", "auditory"]
Contingency = Literal["normal", "reversed"]


class ContextEntry(Protocol):
    """A context as settings declare it (`protocols.settings.ContextSettings`, which imports this module)."""

    @property
    def modality(self) -> Modality: ...

    @property
    def contingency(self) -> Contingency: ...

Cue = Literal["pole_posterior", "pole_anterior", "tone_high", "tone_low"]

SIDES: tuple[Side, Side] = ("left", "right")

# Normal contingency (the paper's context 1): posterior pole / high tone -> lick right.
_NORMAL_CUE: dict[Modality, dict[Side, Cue]] = {
    "tactile": {"right": "pole_posterior", "left": "pole_anterior"},
    "auditory": {"right": "tone_high", "left": "tone_low"},
}

CUE_OUTPUT_ROLE: dict[Cue, str] = {
    "pole_posterior": "pole",  # the Bpod raises the pole; the motor sets its position between trials
    "pole_anterior": "pole",
    "tone_high": "sample_tone_high",
    "tone_low": "sample_tone_low",
}
"""The wiring role (see `protocols.settings.WiringSettings`) that is switched on to present each cue."""


class UnknownContextError(ValueError):
    """A context name that the settings do not define."""


def other_side(side: Side) -> Side:
    return "right" if side == "left" else "left"


def check_side(side: object) -> Side:
    """Return `side` if it is 'left' or 'right'; anything else is a mistake worth naming."""
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return side  # type: ignore[return-value]


@dataclass(frozen=True)
class Context:
    """A named cue-to-lick mapping, e.g. `tactile-reversed` = tactile modality, reversed contingency."""

    name: str
    modality: Modality
    contingency: Contingency

    def __post_init__(self) -> None:
        for field_name, value, allowed in (("modality", self.modality, get_args(Modality)),
                                           ("contingency", self.contingency, get_args(Contingency))):
            if value not in allowed:
                raise ValueError(f"context {self.name!r}: {field_name} must be one of "
                                 f"{', '.join(allowed)}, got {value!r}")

    def cue_for(self, side: Side) -> Cue:
        """The cue that asks for a lick on `side` in this context."""
        check_side(side)
        cued_side = side if self.contingency == "normal" else other_side(side)
        return _NORMAL_CUE[self.modality][cued_side]

    def rewarded_side(self, cue: Cue) -> Side:
        """The side a lick is rewarded on after `cue` (the inverse of `cue_for`)."""
        for side in SIDES:
            if self.cue_for(side) == cue:
                return side
        valid = ", ".join(_NORMAL_CUE[self.modality].values())
        raise ValueError(f"context {self.name!r} ({self.modality}) has no cue {cue!r}; its cues: {valid}")

    def cue_output_role(self, side: Side) -> str:
        """The wiring role switched on during the sample epoch of a `side` trial."""
        return CUE_OUTPUT_ROLE[self.cue_for(side)]

    @classmethod
    def from_settings(cls, name: str, contexts: Mapping[str, ContextEntry]) -> Context:
        """The context `name` of `settings.contexts`."""
        if name not in contexts:
            raise UnknownContextError(unknown_context_message(name, contexts))
        entry = contexts[name]
        return cls(name=name, modality=entry.modality, contingency=entry.contingency)


def contexts_from_settings(contexts: Mapping[str, ContextEntry]) -> dict[str, Context]:
    """Every context of `settings.contexts`, by name."""
    return {name: Context.from_settings(name, contexts) for name in contexts}


def context_named(name: str, contexts: Mapping[str, Context]) -> Context:
    """Look a context up by name; an unknown name is answered with the valid ones."""
    try:
        return contexts[name]
    except KeyError:
        raise UnknownContextError(unknown_context_message(name, contexts)) from None


def unknown_context_message(name: str, valid: Iterable[str]) -> str:
    names = list(valid)
    hint = did_you_mean(str(name), names)
    hint = f"{hint} " if hint else ""
    return f"unknown context {name!r} ({hint}contexts: {', '.join(names) or 'none defined'})"
