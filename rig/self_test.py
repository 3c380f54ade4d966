"""`rig check-hardware`: the rig box's self-test, one pass/fail line per check.

It connects the Bpod (one sentence when it is missing, not a Bpod, or on unsupported firmware), lists its
UART modules, and checks each wiring line on the connected device: every role's line exists; each lick
sensor reports a touch when asked (the experimenter touches it; on the emulator a simulated touch on the
wired line); each valve opens and closes (the Bpod's state record, and on the emulator its output record);
each configured loopback cable carries an output to its input. Devices register their own checks with
`register_check` (pole motor homing, a sound played), so they plug in without changing this module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from hardware.bpod.client import BpodClient, BpodError
from hardware.bpod.emulator import OutputRecord, World
from hardware.bpod.hardware_description import input_channel_names, output_channel_names
from hardware.bpod.module_info import module_names
from hardware.pole_motor import PoleMotorError
from hardware.zaber.emulator import Device, ZaberEmulatorServer
from hardware.zaber.pole import ZaberPoleMotor
from protocols.directional_licking import CUE_SOUNDS
from protocols.settings import WiringSettings
from protocols.state_machine import EXIT, StateMachine, input_event
from rig.bench import EMULATOR_PORT, BenchBpod, open_bench_bpod
from rig.errors import UserError
from rig.settings import Settings
from rig.sound import open_hifi_sound

log = logging.getLogger(__name__)

VALVE_TEST_S = 0.05
SOUND_TEST_S = 0.3
"""How long each sound is played (s)."""
"""How long each valve is opened (s): a click, a drop."""
EMULATOR_CHECK_SPEED = 20.0
"""The emulator runs the self-test this many times faster than real time."""
TOUCH_CYCLES = 500
"""A simulated touch lasts 50 ms (Bpod cycles of 100 us)."""


@dataclass(frozen=True)
class CheckResult:
    """One line of the self-test."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


Touch = Callable[[str, str], None]
"""Makes (or asks for) a touch on a lick sensor: (role, Bpod input line)."""


@dataclass
class Bench:
    """What a check is given: the settings, the connected Bpod, how to touch a sensor, and on the emulator
    its world (lines and output record; None on a real Bpod)."""

    settings: Settings
    client: BpodClient
    touch: Touch
    world: World | None = None
    hifi_port: str | None = None
    """The emulated HiFi's USB pty on the emulator (a real rig: sound.usb_port)."""
    missing: set[str] = field(default_factory=set)
    """Wiring roles whose line the connected Bpod does not have (their checks fail without running)."""


Check = Callable[[Bench], list[CheckResult]]
CHECKS: dict[str, Check] = {}
"""The registered checks by name, run in order of registration."""


def register_check(name: str) -> Callable[[Check], Check]:
    """Register a device's check (``@register_check("pole motor")``); it returns one or more results."""
    def add(check: Check) -> Check:
        CHECKS[name] = check
        return check
    return add


# ------------------------------------------------------------------ checks of the Bpod and its wiring


@register_check("modules")
def check_modules(bench: Bench) -> list[CheckResult]:
    """The UART modules the Bpod reports, one line per serial port, by their channel names (listed, never
    failed: a module the task needs is checked by its own device check)."""
    modules = bench.client.modules
    names = module_names(modules)
    results = []
    for i, module in enumerate(modules, start=1):
        if module is None:
            results.append(CheckResult(f"module Serial{i}", True, "none attached"))
        else:
            results.append(CheckResult(f"module Serial{i}", True,
                                       f"{names[i - 1]} ({module.name}, firmware {module.firmware})"))
    return results


@register_check("wiring")
def check_wiring(bench: Bench) -> list[CheckResult]:
    """Every role's line exists on the connected Bpod, in the right direction."""
    hw = bench.client.hardware
    assert hw is not None
    inputs, outputs = input_channel_names(hw), output_channel_names(hw)
    results = []
    for role in WiringSettings.model_fields:
        line = getattr(bench.settings.wiring, role)
        if line is None:  # an optional role this box does not wire (e.g. trial_bitcode)
            continue
        is_input = WiringSettings.kind(role) == "input"
        valid = inputs if is_input else outputs
        if line in valid:
            results.append(CheckResult(f"wiring.{role}", True, f"{line} present"))
        else:
            bench.missing.add(role)
            what = "input" if is_input else "output"
            results.append(CheckResult(f"wiring.{role}", False,
                                       f"the connected Bpod has no {what} {line} (machine type "
                                       f"{hw.machine_type}); check bpod.model and the wiring"))
    return results


def _wired(bench: Bench, roles: tuple[str, ...], results: list[CheckResult]) -> Iterator[tuple[str, str]]:
    """(role, line) of the roles whose line the Bpod has; the others get a failed line in ``results``."""
    for role in roles:
        line: str = getattr(bench.settings.wiring, role)
        if role in bench.missing:
            results.append(CheckResult(role, False, f"not tested: the Bpod has no line {line}"))
        else:
            yield role, line


@register_check("lick sensors")
def check_lick_sensors(bench: Bench) -> list[CheckResult]:
    """Each lick sensor reports a touch within checks.touch_timeout_s of being asked."""
    timeout = bench.settings.checks.touch_timeout_s
    results: list[CheckResult] = []
    for role, line in _wired(bench, WiringSettings.INPUT_ROLES, results):
        machine = StateMachine()
        machine.add_state("WaitTouch", timeout, {input_event(line): "Touched", "Tup": EXIT})
        machine.add_state("Touched", 0.001, {"Tup": EXIT})
        bench.client.start_trial(machine.validate().to_dict())
        bench.client.wait_for_state({"WaitTouch"}, timeout_s=5)
        bench.touch(role, line)
        result = bench.client.wait_for_trial(timeout_s=timeout + 10)
        if result.visited("Touched"):
            results.append(CheckResult(role, True, f"{line} reported a touch "
                                       f"{result.visits('Touched')[0].start_s * 1000:.0f} ms after asking"))
        else:
            results.append(CheckResult(role, False, f"{line} reported no touch within {timeout:g} s"))
    return results


@contextmanager
def _output_record(world: World | None, line: str) -> Iterator[list[OutputRecord]]:
    """The emulator's output changes of ``line`` while the block runs (stays empty on a real Bpod)."""
    seen: list[OutputRecord] = []

    def keep(record: OutputRecord) -> None:
        if record.channel == line:
            seen.append(record)

    if world is not None:
        world.add_output_listener(keep)
    try:
        yield seen
    finally:
        if world is not None:
            world.remove_output_listener(keep)


@register_check("valves")
def check_valves(bench: Bench) -> list[CheckResult]:
    """Each valve opens for VALVE_TEST_S and closes: on the Bpod's state record, and on the emulator's
    output record (a real valve also clicks: listen)."""
    results: list[CheckResult] = []
    for role, line in _wired(bench, WiringSettings.VALVE_ROLES, results):
        machine = StateMachine()
        machine.add_state("Open", VALVE_TEST_S, {"Tup": "Closed"}, {line: 1})
        machine.add_state("Closed", 0.01, {"Tup": EXIT})
        with _output_record(bench.world, line) as changes:
            trial = bench.client.run_trial(machine.validate().to_dict(), timeout_s=10)
        opened = trial.visits("Open")
        held = opened[0].end_s - opened[0].start_s if opened else 0.0
        if not opened or abs(held - VALVE_TEST_S) > 2 * trial.cycle_s:
            results.append(CheckResult(role, False, f"{line}: the Bpod did not hold it open for "
                                       f"{VALVE_TEST_S * 1000:g} ms (held {held * 1000:.1f} ms)"))
        elif bench.world is None:
            results.append(CheckResult(role, True, f"{line} opened {held * 1000:.0f} ms by the Bpod's "
                                       "record; listen for the click"))
        elif [c.value for c in changes] == [1, 0]:
            results.append(CheckResult(role, True, f"{line} opened and closed ({held * 1000:.0f} ms)"))
        else:
            results.append(CheckResult(role, False, f"{line}: the output record shows {len(changes)} "
                                       "changes, not open then closed"))
    return results


@register_check("loopbacks")
def check_loopbacks(bench: Bench) -> list[CheckResult]:
    """Each configured cable: driving its output high raises its input."""
    results = []
    for cable in bench.settings.checks.loopbacks:
        machine = StateMachine()
        machine.add_state("Drive", 1.0, {input_event(cable.input): "Seen", "Tup": EXIT}, {cable.output: 1})
        machine.add_state("Seen", 0.001, {"Tup": EXIT})
        trial = bench.client.run_trial(machine.validate().to_dict(), timeout_s=15)
        name = f"loopback {cable.output}->{cable.input}"
        results.append(CheckResult(name, True, "the input saw the output") if trial.visited("Seen")
                       else CheckResult(name, False, f"{cable.input} did not go high within 1 s of "
                                        f"{cable.output}: check the cable"))
    return results


# ------------------------------------------------------------------ running them


def emulated_cables(world: World, settings: Settings) -> None:
    """The emulator's loopback cables: each configured output drives its input, as the cable would."""
    wired = {cable.output: cable.input for cable in settings.checks.loopbacks}

    def carry(record: OutputRecord) -> None:
        if record.channel in wired:
            world.set_input(wired[record.channel], 1 if record.value else 0)

    world.add_output_listener(carry)


def simulated_touch(world: World) -> Touch:
    """A touch on the emulator: the wired input line goes high for 50 ms, as a tongue would make it."""
    def touch(role: str, line: str) -> None:
        world.pulse_input(line, TOUCH_CYCLES)
    return touch


def ask_for_touch(timeout_s: float) -> Touch:
    """A touch on a real rig: the experimenter is asked to touch the sensor."""
    def ask(role: str, line: str) -> None:
        sys.stderr.write(f"touch the {role.replace('_', ' ')} sensor ({line}) within {timeout_s:g} s\n")
        sys.stderr.flush()
    return ask


@register_check("pole motor")
def check_pole_motor(bench: Bench) -> list[CheckResult]:
    """The pole stage connects, homes if it has no reference, and reaches each position by the midpoint
    (on the simulated rig: the emulated stage, faster than real time). Nothing to check without one."""
    pole = bench.settings.pole_motor
    if pole.port is None:
        return []
    with ExitStack() as stack:
        stage = (stack.enter_context(ZaberEmulatorServer(Device(pole.device, axes=pole.axis),
                                                         speed=EMULATOR_CHECK_SPEED))
                 if pole.port == EMULATOR_PORT else None)
        try:
            motor = stack.enter_context(ZaberPoleMotor.open_on(pole.port, pole, stage, EMULATOR_CHECK_SPEED))
        except PoleMotorError as exc:
            return [CheckResult("pole motor", False, str(exc))]
        port = stage.port if stage is not None else pole.port
        results = [CheckResult("pole motor", True, f"{port}: connected, referenced")]
        for position in ("anterior", "posterior"):
            try:
                move = motor.move_to(position)
            except PoleMotorError as exc:
                results.append(CheckResult(f"pole motor {position}", False, str(exc)))
                continue
            path = " -> ".join(f"{name} {where}" for name, where in move.reached)
            results.append(CheckResult(f"pole motor {position}", move.target_position is not None,
                                       f"{path} in {move.travel_s:.2f} s (stage clock)"))
        return results


@register_check("sound")
def check_sound(bench: Bench) -> list[CheckResult]:
    """With the HiFi module: it is among the Bpod's modules, its waveforms load over its own USB port, and
    each sound, played from a state, is acknowledged by the module (its `<module>_1` event): listen."""
    sound_settings = bench.settings.sound
    if sound_settings.device != "hifi":
        return []
    usb_port = bench.hifi_port if bench.world is not None else sound_settings.usb_port
    with ExitStack() as stack:
        try:
            sound = open_hifi_sound(sound_settings, bench.client.modules, usb_port, stack)
        except UserError as exc:
            return [CheckResult("sound", False, str(exc))]
        results = [CheckResult("sound", True, f"{sound_settings.module} on {usb_port}: waveforms loaded")]
        ack = f"{sound_settings.module}_1"
        for name in CUE_SOUNDS:
            machine = StateMachine()
            machine.add_state("Play", SOUND_TEST_S, {"Tup": "Silence"}, dict(sound.play_action(name)))
            machine.add_state("Silence", 0.01, {"Tup": EXIT}, dict(sound.stop_action()))
            trial = bench.client.run_trial(machine.validate().to_dict(), timeout_s=10)
            played = trial.visits("Play")
            acks = trial.event_times(ack)
            if played and acks:
                delay_ms = (acks[0] - played[0].start_s) * 1000
                results.append(CheckResult(f"sound {name}", True, f"played, {ack} {delay_ms:.1f} ms after"))
            else:
                results.append(CheckResult(f"sound {name}", False, f"no {ack} from the module after playing"))
        return results


def run_checks(settings: Settings, bpod: BenchBpod, touch: Touch | None = None) -> list[CheckResult]:
    """Every registered check against a connected Bpod; a check that raises is a failed line."""
    hw = bpod.client.hardware
    assert hw is not None
    if touch is None:
        touch = (simulated_touch(bpod.world) if bpod.world is not None
                 else ask_for_touch(settings.checks.touch_timeout_s))
    bench = Bench(settings, bpod.client, touch, bpod.world, hifi_port=bpod.hifi_port)
    results = [CheckResult("bpod", True, f"{bpod.client.port}: firmware {hw.firmware_major}."
                           f"{hw.firmware_minor}, machine type {hw.machine_type}")]
    for name, check in CHECKS.items():
        try:
            results += check(bench)
        except (BpodError, OSError) as exc:
            results.append(CheckResult(name, False, str(exc)))
    return results


def self_test(settings: Settings) -> list[CheckResult]:
    """Connect the Bpod of the settings (the emulator, with its cables, on the simulated rig) and run
    every check; a Bpod that cannot be connected is one failed line."""
    try:
        with open_bench_bpod(settings, speed=EMULATOR_CHECK_SPEED) as bpod:
            if bpod.world is not None:
                emulated_cables(bpod.world, settings)
            return run_checks(settings, bpod)
    except BpodError as exc:
        return [CheckResult("bpod", False, str(exc))]


def report(results: list[CheckResult]) -> dict[str, object]:
    """The results as one JSON object."""
    return {"passed": all(r.passed for r in results), "checks": [asdict(r) for r in results]}
