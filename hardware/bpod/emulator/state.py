"""The firmware's variables as plain data: what `StateMachine.ino` keeps in its globals.

The command handlers (`commands.py`), the output writers (`outputs.py`) and the cycle
(`cycle.py`) are functions that take a `FirmwareState` and change it, as the firmware's
functions change its globals; `Firmware` (`engine.py`) owns one and drives the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardware.bpod.emulator.machine import LoadedMachine
from hardware.bpod.emulator.modules import BpodTime
from hardware.bpod.emulator.timers import GlobalTimers
from hardware.bpod.emulator.world import World
from hardware.bpod.hardware_description import HardwareDescription

NO_EVENT = 255  # an empty soft-code slot


@dataclass(slots=True)
class FirmwareState:
    """Every variable the firmware's loop, interrupt and command handlers read or write."""

    hw: HardwareDescription
    world: World
    # Fixed by the board (the firmware's setup() and its event-code layout, spec 1.4)
    v23: bool
    n_inputs: int
    max_events: int
    n_modules: int
    n_flex: int
    sampled: list[int]  # inputs read from pins each cycle (BNC, Wire, Port)
    flex_inputs: list[int]
    edge_channels: list[tuple[int, int, int]]  # (input, rising-edge event code, raw level meaning High)
    serial_letters: str
    gt_start_pos: int
    gt_end_pos: int
    counter_pos: int
    condition_pos: int
    tup_pos: int
    payload_sizes: dict[int, int]  # op code -> fixed payload bytes (`commands.payload_sizes`)
    faithful_quirks: bool = False  # reproduce firmware bugs the emulator otherwise smooths over
    # The serial buffers (host side of USB and the APP port)
    main_in: bytearray = field(default_factory=bytearray)
    app_in: bytearray = field(default_factory=bytearray)
    main_out: bytearray = field(default_factory=bytearray)
    app_out: bytearray = field(default_factory=bytearray)
    analog_out: bytearray = field(default_factory=bytearray)  # r2+: the FlexIO port (PC2)
    # Connection and configuration
    cycle: int = 0  # last processed engine cycle
    connected: bool = False
    clock_zero: int = 0  # engine cycle at the last session-clock reset
    trial_counter: int = 0
    allocation: list[int] = field(default_factory=list)
    input_enabled: list[int] = field(default_factory=list)
    logic_high: list[int] = field(default_factory=list)
    input_state: list[int] = field(default_factory=list)  # raw levels, then timer lines
    last_input_state: list[int] = field(default_factory=list)
    input_override: list[bool] = field(default_factory=list)
    output_hw: list[str] = field(default_factory=list)  # the sync channel becomes 'Y'
    output_override: list[int] = field(default_factory=list)
    flex_types: list[int] = field(default_factory=list)  # 4 = tri-state (off) until `Q`
    sync_channel: int = 255
    sync_mode: int = 0
    sync_on: bool = False
    sync_index: int | None = None
    sync_original: str = ""
    sync_state: int = 0
    sync_timer: int = 0
    get_module_info: bool = False
    module_cycles: int = 0
    module_of_output: dict[int, int] = field(default_factory=dict)  # output index -> 0-based UART port
    serial_messages: list[dict[int, bytes]] = field(default_factory=list)  # per port; absent i = byte i
    relay_mode: list[bool] = field(default_factory=list)  # `J`: idle module bytes go to the host
    # State machine transfer
    machine: LoadedMachine = field(default_factory=LoadedMachine)
    queued: LoadedMachine | None = None  # smaReady2Load
    sma_pending: bool = False
    sma_nbytes: int = 0
    sma_confirmed: bool = False
    sma_ok: bool = False
    new_sma_started: bool = False
    run_asap: bool = False
    use_back_signal: bool = False
    start_flag: bool = False
    run_flag: bool = False
    # Trial
    running: bool = False
    first_loop: bool = False
    matrix_finished: bool = False
    in_trial: bool = False
    current_state: int = 0
    previous_state: int = 0
    state_start_time: int = 0
    meaningful_tup: bool = False
    current_time: int = 0
    n_cycles_completed: int = 0
    events: list[int] = field(default_factory=list)  # CurrentEvent; entries raised at state entry carry over
    soft_x: int = NO_EVENT
    soft_z: int = NO_EVENT
    counter_counts: list[int] = field(default_factory=list)
    counter_handled: list[bool] = field(default_factory=list)
    timers: GlobalTimers = field(default_factory=lambda: GlobalTimers(0, 0, 0))

    @classmethod
    def power_on(cls, hw: HardwareDescription, world: World, payload_sizes: dict[int, int]) -> FirmwareState:
        """The variables as the firmware's setup() leaves them."""
        n_in, n_out = len(hw.inputs), len(hw.outputs)
        first_non_serial = next(i for i, c in enumerate(hw.inputs) if c not in "UXZ")
        gt_start_pos = hw.max_serial_events + 2 * (n_in - first_non_serial)
        gt_end_pos = gt_start_pos + hw.n_global_timers
        counter_pos = gt_end_pos + hw.n_global_timers
        condition_pos = counter_pos + hw.n_global_counters
        v23 = hw.firmware_major >= 23
        n_serial = len(hw.serial_channels)
        initial = [1 if (c in "BW" and hw.machine_type > 1) else 0 for c in hw.inputs]
        return cls(
            hw=hw, world=world, v23=v23, n_inputs=n_in,
            max_events=10 if hw.machine_type <= 2 else 100,
            n_modules=hw.inputs.count("U"), n_flex=hw.inputs.count("F"),
            sampled=[i for i, c in enumerate(hw.inputs) if c in "BWP"],
            flex_inputs=[i for i, c in enumerate(hw.inputs) if c == "F"],
            edge_channels=[(i, hw.max_serial_events + 2 * k, world.logic_high[i])
                           for k, i in enumerate(range(first_non_serial, n_in))],
            serial_letters=hw.serial_channels,
            gt_start_pos=gt_start_pos, gt_end_pos=gt_end_pos, counter_pos=counter_pos,
            condition_pos=condition_pos, tup_pos=condition_pos + hw.n_conditions,
            payload_sizes=payload_sizes,
            allocation=[0] * n_serial if v23 else [10] + [0] * (n_serial - 1),
            input_enabled=[1 if c in "BWDF" else 0 for c in hw.inputs],  # ports need `E`
            logic_high=world.logic_high,
            input_state=initial + [0] * hw.n_global_timers,
            last_input_state=initial + [0] * hw.n_global_timers,
            input_override=[False] * n_in,
            output_hw=list(hw.outputs),
            output_override=[0] * n_out,
            flex_types=[4] * hw.inputs.count("F"),
            module_of_output={i: k for k, i in enumerate(i for i, c in enumerate(hw.outputs) if c == "U")},
            serial_messages=[{} for _ in range(hw.inputs.count("U"))],
            relay_mode=[False] * hw.inputs.count("U"),
            counter_counts=[0] * hw.n_global_counters,
            counter_handled=[False] * hw.n_global_counters,
            timers=GlobalTimers(hw.n_global_timers, gt_start_pos, gt_end_pos),
        )

    @property
    def now(self) -> BpodTime:
        """This cycle on both clocks, as modules are told it."""
        return BpodTime(self.cycle, self.session_us)

    @property
    def session_us(self) -> int:
        """The session clock the host sees (`6` and `*` reset it), in microseconds."""
        return (self.cycle - self.clock_zero) * self.hw.cycle_us
