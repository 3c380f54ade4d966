"""The trial number as a bitcode on an output line at trial start, for ephys and imaging systems that
record the line and need to know which Bpod trial they saw.

After the imaging trigger: a start pulse of `start_s`, then for each bit, least significant first, a low gap
of `gap_s` and a slot of `bit_s` in which the line is high for a 1. Every 1 is a rising edge, so a reader
that sees edges only decodes it as well as one that samples the level. The states are taken out of the
pre-sample baseline, so the sample onset does not move. `decode_trial_bitcode` is the reader's side.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocols.settings import TrialBitcodeSettings
from protocols.state_machine import StateMachine

BITCODE_START = "TrialBitcodeStart"


def bit_states(bits: int) -> list[tuple[str, str]]:
    """(gap state, bit state) of each bit, least significant first."""
    return [(f"TrialBitcodeGap{i}", f"TrialBitcodeBit{i}") for i in range(1, bits + 1)]


def encode(number: int, bits: int) -> list[int]:
    """The bits of `number`, least significant first; a number that does not fit is refused."""
    if not 0 <= number < 2**bits:
        raise ValueError(f"trial number {number} does not fit in a {bits}-bit trial bitcode")
    return [(number >> i) & 1 for i in range(bits)]


def add_bitcode_states(sm: StateMachine, number: int, code: TrialBitcodeSettings, line_on: dict[str, int],
                       then: str) -> None:
    """Add the states that send `number` (entered at `BITCODE_START`), going to `then` at the end."""
    states = bit_states(code.bits)
    sm.add_state(BITCODE_START, code.start_s, {"Tup": states[0][0]}, line_on)
    for i, (bit, (gap_state, bit_state)) in enumerate(zip(encode(number, code.bits), states, strict=True)):
        after = states[i + 1][0] if i + 1 < len(states) else then
        sm.add_state(gap_state, code.gap_s, {"Tup": bit_state})
        sm.add_state(bit_state, code.bit_s, {"Tup": after}, line_on if bit else {})


def decode_trial_bitcode(changes: Sequence[tuple[float, int]], code: TrialBitcodeSettings) -> int:
    """The trial number from the line's recorded changes (time in seconds, level; any clock), read from
    the first rising edge on: each bit is the level in the middle of its slot."""
    start = next((t for t, level in changes if level), None)
    if start is None:
        raise ValueError("no start pulse: the line never went high")

    def level_at(time_s: float) -> int:
        level = 0
        for t, value in changes:
            if t > time_s:
                break
            level = 1 if value else 0
        return level

    number = 0
    for i in range(code.bits):
        middle = start + code.start_s + (i + 1) * code.gap_s + i * code.bit_s + code.bit_s / 2
        number |= level_at(middle) << i
    return number
