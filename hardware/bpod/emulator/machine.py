"""A loaded state machine in the form the firmware's loop reads it (`loadStateMatrix`).

The firmware keeps dense matrices whose rows default to "stay in this state"; here each row is
a dict of the entries that were sent, and a lookup falls back to the same default. Rows of
states the machine does not have (a target beyond nS that is not exit or `>back`) read as zeros,
as the firmware's never-loaded rows do: every event there leads to state 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardware.bpod.codec import StateMachineBody


def _rows(pairs_per_state: list[list[tuple[int, int]]]) -> list[dict[int, int]]:
    return [dict(pairs) for pairs in pairs_per_state]


@dataclass
class LoadedMachine:
    """Everything `loadStateMatrix` fills in, indexed as the firmware indexes it."""

    n_states: int = 0
    n_timers: int = 0
    n_counters: int = 0
    n_conditions: int = 0
    tup_targets: list[int] = field(default_factory=list)
    state_timers: list[int] = field(default_factory=list)
    inputs: list[dict[int, int]] = field(default_factory=list)  # event code -> target (codes < GT start)
    outputs: list[dict[int, int]] = field(default_factory=list)  # output index -> value
    timer_starts: list[dict[int, int]] = field(default_factory=list)
    timer_ends: list[dict[int, int]] = field(default_factory=list)
    counters: list[dict[int, int]] = field(default_factory=list)
    conditions: list[dict[int, int]] = field(default_factory=list)
    counter_resets: list[int] = field(default_factory=list)
    timers_trigger: list[int] = field(default_factory=list)
    timers_cancel: list[int] = field(default_factory=list)
    timer_channels: list[int] = field(default_factory=list)
    timer_on_values: list[int] = field(default_factory=list)
    timer_off_values: list[int] = field(default_factory=list)
    timer_loop_modes: list[int] = field(default_factory=list)
    timer_send_events: list[int] = field(default_factory=list)
    timer_onset_triggers: list[int] = field(default_factory=list)
    timer_durations: list[int] = field(default_factory=list)
    timer_onset_delays: list[int] = field(default_factory=list)
    timer_loop_intervals: list[int] = field(default_factory=list)
    counter_events: list[int] = field(default_factory=list)
    counter_thresholds: list[int] = field(default_factory=list)
    condition_channels: list[int] = field(default_factory=list)
    condition_values: list[int] = field(default_factory=list)
    serial_message_ops: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)  # v23 `L` ops

    @classmethod
    def from_body(cls, body: StateMachineBody) -> LoadedMachine:
        return cls(
            n_states=body.n_states, n_timers=body.n_global_timers, n_counters=body.n_global_counters,
            n_conditions=body.n_conditions, tup_targets=list(body.tup_targets),
            state_timers=list(body.state_timers), inputs=_rows(body.input_matrix),
            outputs=_rows(body.output_matrix), timer_starts=_rows(body.timer_start_matrix),
            timer_ends=_rows(body.timer_end_matrix), counters=_rows(body.counter_matrix),
            conditions=_rows(body.condition_matrix), counter_resets=list(body.counter_resets),
            timers_trigger=list(body.timers_trigger), timers_cancel=list(body.timers_cancel),
            timer_channels=list(body.timer_channels), timer_on_values=list(body.timer_on_values),
            timer_off_values=list(body.timer_off_values), timer_loop_modes=list(body.timer_loop_modes),
            timer_send_events=list(body.timer_send_events),
            timer_onset_triggers=list(body.timer_onset_triggers), timer_durations=list(body.timer_durations),
            timer_onset_delays=list(body.timer_onset_delays),
            timer_loop_intervals=list(body.timer_loop_intervals), counter_events=list(body.counter_events),
            counter_thresholds=list(body.counter_thresholds),
            condition_channels=list(body.condition_channels), condition_values=list(body.condition_values),
            serial_message_ops=list(body.serial_message_ops),
        )

    def has(self, state: int) -> bool:
        return 0 <= state < self.n_states

    def target(self, rows: list[dict[int, int]], state: int, column: int) -> int:
        """Matrix lookup with the firmware's defaults (stay; zeros outside the machine)."""
        if state < self.n_states:
            return rows[state].get(column, state)
        return 0

    def tup_target(self, state: int) -> int:
        return self.tup_targets[state] if state < self.n_states else 0

    def state_timer(self, state: int) -> int:
        return self.state_timers[state] if state < self.n_states else 0

    def output_row(self, state: int) -> dict[int, int]:
        return self.outputs[state] if state < self.n_states else {}

    def trigger_mask(self, state: int) -> int:
        return self.timers_trigger[state] if state < self.n_states else 0

    def cancel_mask(self, state: int) -> int:
        return self.timers_cancel[state] if state < self.n_states else 0

    def counter_reset(self, state: int) -> int:
        return self.counter_resets[state] if state < self.n_states else 0
