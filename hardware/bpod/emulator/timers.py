"""Global timers, as the firmware runs them (`triggerGlobalTimer`, the timer block of the cycle
and the cancel block of `setStateOutputs`).

Times are in trial cycles (the firmware's CurrentTime). Looping timers re-arm at their end
after the loop interval; loop mode 1 repeats until cancelled or the trial ends, n > 1 runs n
times. A one-shot timer always reports its start and end; a looping one only if send_events.
The rules that switch a timer on or off take `set_channel` (`outputs.set_global_timer_channel`
bound to the firmware state): the firmware's `setGlobalTimerChannel`, which drives its line.
"""

from __future__ import annotations

from collections.abc import Callable

from hardware.bpod.emulator.machine import LoadedMachine

SetChannel = Callable[[int, int], None]  # (timer, 1 on / 0 off)


class GlobalTimers:
    """The timer arrays of the firmware and the rules that change them."""

    def __init__(self, n_max: int, start_code: int, end_code: int) -> None:
        self.n_max = n_max
        self.start_code = start_code  # event code of timer 0's start; end codes follow n_max later
        self.end_code = end_code
        self.n_used = n_max  # the firmware starts with every timer "used" until a machine is loaded
        self.durations = [0] * n_max
        self.delays = [0] * n_max
        self.intervals = [0] * n_max
        self.loop_modes = [0] * n_max
        self.send_events = [0] * n_max
        self.onset_triggers = [0] * n_max
        self.uses_loop_counter = [False] * n_max
        self.triggered = [False] * n_max
        self.active = [False] * n_max
        self.start = [0] * n_max
        self.end = [0] * n_max
        self.loop_count = [0] * n_max

    def load(self, m: LoadedMachine) -> None:
        self.n_used = min(m.n_timers, self.n_max)
        for i in range(self.n_used):
            self.durations[i] = m.timer_durations[i]
            self.delays[i] = m.timer_onset_delays[i]
            self.intervals[i] = m.timer_loop_intervals[i]
            self.loop_modes[i] = m.timer_loop_modes[i]
            self.send_events[i] = m.timer_send_events[i]
            self.onset_triggers[i] = m.timer_onset_triggers[i]
            self.uses_loop_counter[i] = m.timer_loop_modes[i] > 1

    def reset(self) -> None:
        """Trial end (`resetOutputs`): every timer disarmed, loop counts cleared."""
        for i in range(self.n_max):
            self.triggered[i] = False
            self.active[i] = False
            self.loop_count[i] = 0

    def trigger(self, i: int, now: int, events: list[int], set_channel: SetChannel) -> None:
        """`triggerGlobalTimer`: arm; with no onset delay turn on at once (start event always)."""
        self.triggered[i] = True
        self.start[i] = now
        if self.delays[i] > 0:
            self.start[i] += self.delays[i]
        elif not self.active[i]:
            self.active[i] = True
            set_channel(i, 1)
            self._fire_onset_triggers(i, now, events, set_channel)
            events.append(self.start_code + i)
        self.end[i] = self.start[i] + self.durations[i]
        if self.uses_loop_counter[i]:
            self.loop_count[i] = 1

    def trigger_mask(self, mask: int, now: int, events: list[int], set_channel: SetChannel) -> None:
        for i in range(self.n_used):
            if mask >> i & 1:
                self.trigger(i, now, events, set_channel)

    def cancel_mask(self, mask: int, events: list[int], set_channel: SetChannel) -> None:
        """State-entry cancel: a running timer stops and always reports its end; an armed one
        (still in its onset delay) is just disarmed."""
        for i in range(self.n_used):
            if mask >> i & 1:
                if self.active[i]:
                    self.triggered[i] = False
                    self.active[i] = False
                    set_channel(i, 0)
                    events.append(self.end_code + i)
                elif self.triggered[i]:
                    self.triggered[i] = False

    def detect(self, now: int, events: list[int], set_channel: SetChannel) -> None:
        """The cycle's timer block: per timer, its end if active and due, else its start if armed
        and due (start events go before onset-triggered timers' own starts)."""
        for i in range(self.n_used):
            if self.active[i]:
                if now >= self.end[i]:
                    set_channel(i, 0)
                    self.triggered[i] = False
                    self.active[i] = False
                    if self.loop_modes[i] > 0:
                        if self.loop_count[i] < self.loop_modes[i]:
                            self.triggered[i] = True
                            self.start[i] = now + self.intervals[i]
                            self.end[i] = self.start[i] + self.durations[i]
                            if self.send_events[i]:
                                events.append(self.end_code + i)
                            if self.uses_loop_counter[i]:
                                self.loop_count[i] += 1
                        elif self.send_events[i]:
                            events.append(self.end_code + i)
                    else:
                        events.append(self.end_code + i)
            elif self.triggered[i] and now >= self.start[i]:
                self.active[i] = True
                if not self.loop_modes[i] or self.send_events[i]:
                    events.append(self.start_code + i)
                self._fire_onset_triggers(i, now, events, set_channel)
                set_channel(i, 1)

    def next_due(self) -> int | None:
        """Earliest trial cycle at which a timer starts or ends."""
        due = None
        for i in range(self.n_used):
            if self.active[i]:
                t = self.end[i]
            elif self.triggered[i]:
                t = self.start[i]
            else:
                continue
            if due is None or t < due:
                due = t
        return due

    def _fire_onset_triggers(self, i: int, now: int, events: list[int], set_channel: SetChannel) -> None:
        mask = self.onset_triggers[i]
        if mask:
            for j in range(self.n_used):
                if j != i and mask >> j & 1:
                    self.trigger(j, now, events, set_channel)
