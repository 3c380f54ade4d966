"""Valve calibration: open each reward valve N times at several open times, weigh the water, fit volume per
drop against open time, and write the curve (with its date) into the rig file.

The drops are delivered by the Bpod itself, one state machine per batch (a valve and an open time), so the
open times are the device's, as in a session; on the simulated rig they run on the emulator. The curve is
written as the fitted volume at each measured open time: `ValveCurve` interpolates between points and
needs both columns increasing, which a straight fit gives and noisy weighings need not.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import yaml

from hardware.bpod.client import BpodClient
from hardware.settings import ValveCalibration, ValveCurve, ValvePoint
from protocols.settings import WiringSettings
from protocols.state_machine import EXIT, StateMachine
from rig.errors import UserError
from rig.settings.files import replace_settings_section, write_settings_text

log = logging.getLogger(__name__)

Side = Literal["left", "right"]
SIDES: tuple[Side, ...] = ("left", "right")
MAX_DROPS_PER_MACHINE = 100
"""Drops per state machine (two states each; a Bpod holds 255 states): more drops run as several."""
GRAMS_TO_UL = 1000.0
"""Water: 1 g is 1000 uL."""


@dataclass(frozen=True)
class Batch:
    """One valve opened ``drops`` times for ``duration_s`` each."""

    side: Side
    duration_s: float
    drops: int


@dataclass(frozen=True)
class Measurement:
    """A batch and the total weight of the water it delivered."""

    batch: Batch
    grams: float

    @property
    def volume_ul(self) -> float:
        """Volume per drop (uL)."""
        return self.grams * GRAMS_TO_UL / self.batch.drops


def plan_batches(sides: Sequence[Side], durations_s: Sequence[float], drops: int) -> list[Batch]:
    """Every side at every open time, shortest first."""
    return [Batch(side, duration, drops) for side in sides for duration in sorted(durations_s)]


def drop_machine(line: str, duration_s: float, drops: int, interval_s: float) -> StateMachine:
    """``drops`` openings of the valve on ``line``, ``interval_s`` apart: Open1, Close1, Open2, ..."""
    machine = StateMachine()
    for i in range(1, drops + 1):
        machine.add_state(f"Open{i}", duration_s, {"Tup": f"Close{i}"}, {line: 1})
        machine.add_state(f"Close{i}", interval_s, {"Tup": f"Open{i + 1}" if i < drops else EXIT})
    return machine.validate()


def deliver(client: BpodClient, wiring: WiringSettings, batch: Batch, interval_s: float) -> None:
    """Run the batch on the Bpod; the device's record must show every opening at its time."""
    line = getattr(wiring, f"{batch.side}_valve")
    left = batch.drops
    while left > 0:
        n = min(left, MAX_DROPS_PER_MACHINE)
        timeout = n * (batch.duration_s + interval_s) + 10  # real time: a bound at any emulator speed
        result = client.run_trial(drop_machine(line, batch.duration_s, n, interval_s).to_dict(), timeout)
        opened = [visit for i in range(1, n + 1) for visit in result.visits(f"Open{i}")]
        short = [v for v in opened if v.end_s - v.start_s < batch.duration_s - 2 * result.cycle_s]
        if len(opened) != n or short:
            raise UserError(f"the Bpod opened the {batch.side} valve ({line}) {len(opened)} of {n} times "
                            f"for {batch.duration_s:g} s ({len(short)} shorter); the batch is not usable")
        left -= n
    log.info("%s valve (%s): %d drops of %g s", batch.side, line, batch.drops, batch.duration_s)


# ------------------------------------------------------------------ weights


def _number(text: object, where: str, what: str) -> float:
    if isinstance(text, bool):
        raise UserError(f"{where}: {what} {text!r} is not a number")
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{where}: {what} {text!r} is not a number") from None
    if not value > 0:
        raise UserError(f"{where}: {what} {text!r} must be greater than 0")
    return value


def _weight_rows(path: Path) -> list[tuple[str, dict[str, object]]]:
    """(where, row) of a CSV (header valve,duration_s,grams) or YAML (a list of such mappings) file."""
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _read_yaml_list(path)
        return [(f"{path}: entry {i + 1}", row) for i, row in enumerate(data)]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the weights file ({exc.strerror})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"valve", "duration_s", "grams"} - set(reader.fieldnames or ())
    if missing:
        raise UserError(f"{path}: the first line must name the columns valve,duration_s,grams "
                        f"(missing: {', '.join(sorted(missing))})")
    return [(f"{path}:{reader.line_num}", dict(row)) for row in reader]


def _read_yaml_list(path: Path) -> list[dict[str, object]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the weights file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise UserError(f"{path}: must be a list of {{valve, duration_s, grams}} entries")
    return data


def read_weights(path: Path, batches: Sequence[Batch]) -> list[Measurement]:
    """The measured weight of every batch, from a weights file; a problem is one sentence naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    grams: dict[tuple[str, float], float] = {}
    for where, row in _weight_rows(path):
        valve = str(row.get("valve", "")).strip()
        if valve not in SIDES:
            raise UserError(f"{where}: valve {valve!r} must be left or right")
        duration = _number(row.get("duration_s"), where, "duration_s")
        key = (valve, round(duration, 6))
        if key in grams:
            raise UserError(f"{where}: a second weight for the {valve} valve at {duration:g} s")
        grams[key] = _number(row.get("grams"), where, "grams")
    measurements = []
    for batch in batches:
        key = (batch.side, round(batch.duration_s, 6))
        if key not in grams:
            raise UserError(f"{path}: no weight for the {batch.side} valve at {batch.duration_s:g} s "
                            f"({batch.drops} drops)")
        measurements.append(Measurement(batch, grams.pop(key)))
    if grams:
        (side, duration), _ = next(iter(grams.items()))
        raise UserError(f"{path}: a weight for the {side} valve at {duration:g} s, which was not delivered")
    return measurements


def ask_weights(batches: Sequence[Batch], stdin: TextIO, stdout: TextIO) -> list[Measurement]:
    """Ask for each batch's total weight, again until the answer is a positive number."""
    measurements = []
    for batch in batches:
        while True:
            stdout.write(f"{batch.side} valve, {batch.drops} drops of {batch.duration_s:g} s: total grams? ")
            stdout.flush()
            answer = stdin.readline()
            if not answer:
                raise UserError("no weight given (end of input); nothing was written")
            try:
                measurements.append(Measurement(batch, _number(answer.strip(), "weight", "grams")))
                break
            except UserError as exc:
                stdout.write(f"{exc}\n")
    return measurements


# ------------------------------------------------------------------ fit


@dataclass(frozen=True)
class ValveFit:
    """Volume per drop = slope x open time + intercept, least squares over one valve's measurements."""

    side: Side
    slope_ul_per_s: float
    intercept_ul: float
    measurements: tuple[Measurement, ...]

    def volume_ul(self, duration_s: float) -> float:
        return self.slope_ul_per_s * duration_s + self.intercept_ul

    def curve(self) -> ValveCurve:
        """The fitted volume at each measured open time, as the rig file stores it."""
        durations = sorted({m.batch.duration_s for m in self.measurements})
        return ValveCurve([ValvePoint(valve_time_s=t, volume_ul=round(self.volume_ul(t), 4))
                           for t in durations])


def fit_valve(side: Side, measurements: Sequence[Measurement]) -> ValveFit:
    """A straight line through one valve's drops; refused (one sentence) when it cannot be a curve."""
    mine = tuple(m for m in measurements if m.batch.side == side)
    durations = np.array([m.batch.duration_s for m in mine])
    volumes = np.array([m.volume_ul for m in mine])
    if len(set(durations.tolist())) < 2:
        raise UserError(f"the {side} valve needs weights at 2 or more open times to fit a curve")
    slope, intercept = np.polyfit(durations, volumes, 1)
    fit = ValveFit(side, float(slope), float(intercept), mine)
    shortest = float(durations.min())
    if slope <= 0 or fit.volume_ul(shortest) <= 0:
        raise UserError(f"the {side} valve's weights do not give more water for longer openings "
                        f"(fit: {fit.volume_ul(shortest):.3g} uL at {shortest:g} s, slope {slope:.3g} uL/s); "
                        "check the weights and the valve")
    return fit


def format_fit(fit: ValveFit) -> str:
    """The points and the fit, for the terminal."""
    lines = [f"{fit.side} valve: volume per drop = {fit.slope_ul_per_s:.4g} uL/s x open time "
             f"{fit.intercept_ul:+.4g} uL"]
    for m in fit.measurements:
        lines.append(f"  {m.batch.duration_s:7.4f} s  {m.batch.drops:4d} drops  {m.grams:8.4f} g  "
                     f"measured {m.volume_ul:7.3f} uL/drop  fit {fit.volume_ul(m.batch.duration_s):7.3f}")
    return "\n".join(lines)


def write_figure(fits: Sequence[ValveFit], path: Path, title: str) -> None:
    """Measured points and fitted lines, volume per drop against open time (PNG, beside the rig file)."""
    from matplotlib.figure import Figure  # drawn to a file (Agg), no window and no pyplot state

    t_max = max(m.batch.duration_s for f in fits for m in f.measurements) * 1.1
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.subplots()
    colours = {"left": "tab:blue", "right": "tab:red"}
    for fit in fits:
        colour = colours[fit.side]
        ax.plot([0, t_max], [fit.volume_ul(0), fit.volume_ul(t_max)], color=colour,
                label=f"{fit.side}: {fit.slope_ul_per_s:.4g} uL/s x t {fit.intercept_ul:+.3g} uL")
        ax.plot([m.batch.duration_s for m in fit.measurements], [m.volume_ul for m in fit.measurements],
                "o", color=colour)
    ax.set(xlabel="open time (s)", ylabel="uL per drop", title=title, xlim=(0, t_max))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


# ------------------------------------------------------------------ the rig file and its age


def updated_calibration(old: ValveCalibration, fits: Sequence[ValveFit], today: date) -> ValveCalibration:
    """The calibration with the fitted valves' curves and today's date (other valves as they were)."""
    return old.model_copy(update={**{fit.side: fit.curve() for fit in fits}, "measured_on": today})


def write_calibration(rig_file: Path, calibration: ValveCalibration) -> None:
    """Rewrite bpod.valve_calibration in the rig file, atomically; its other lines stay as written."""
    value = calibration.model_dump(mode="python")
    value["left"], value["right"] = (calibration.left.model_dump(), calibration.right.model_dump())
    text = replace_settings_section(rig_file, "bpod", "valve_calibration", value)
    write_settings_text(rig_file, text)


def calibration_warning(calibration: ValveCalibration, today: date, simulated: bool) -> str | None:
    """A sentence when the calibration is older than its max_age_days (or, on a real Bpod, undated)."""
    if calibration.measured_on is None:
        return None if simulated else ("the valve calibration has no date (bpod.valve_calibration."
                                       "measured_on): calibrate the valves with `rig calibrate-valves`")
    age = (today - calibration.measured_on).days
    if age > calibration.max_age_days:
        return (f"the valve calibration is {age} days old (measured {calibration.measured_on.isoformat()}, "
                f"max_age_days {calibration.max_age_days}): recalibrate with `rig calibrate-valves`")
    return None


# ------------------------------------------------------------------ the whole procedure


@dataclass(frozen=True)
class CalibrationRun:
    """What `rig calibrate-valves` asks for."""

    rig_file: Path
    sides: tuple[Side, ...] = SIDES
    durations_s: tuple[float, ...] = (0.015, 0.03, 0.06)
    drops: int = 100
    interval_s: float = 0.2
    weights: Path | None = None
    """A weights file; None asks on stdin."""

    def check_weights(self) -> None:
        """Refuse a bad weights file before any valve runs (one sentence naming the file and line)."""
        if self.weights is not None:
            read_weights(self.weights, plan_batches(self.sides, self.durations_s, self.drops))


def calibrate_valves(client: BpodClient, wiring: WiringSettings, old: ValveCalibration, run: CalibrationRun,
                     stdin: TextIO, stdout: TextIO,
                     today: date | None = None) -> tuple[ValveCalibration, Path]:
    """Deliver every batch, take the weights, fit, show, and write the curves into the rig file; returns
    the new calibration and the figure's path (next to the rig file)."""
    batches = plan_batches(run.sides, run.durations_s, run.drops)
    for batch in batches:
        stdout.write(f"{batch.side} valve: {batch.drops} drops of {batch.duration_s:g} s ... ")
        stdout.flush()
        deliver(client, wiring, batch, run.interval_s)
        stdout.write("done\n")
    if run.weights is not None:
        measurements = read_weights(run.weights, batches)
    else:
        measurements = ask_weights(batches, stdin, stdout)
    fits = [fit_valve(side, measurements) for side in run.sides]
    for fit in fits:
        stdout.write(format_fit(fit) + "\n")
    today = today or date.today()
    calibration = updated_calibration(old, fits, today)
    write_calibration(run.rig_file, calibration)
    figure = run.rig_file.with_name(f"{run.rig_file.stem}_valves_{today.isoformat()}.png")
    write_figure(fits, figure, f"{run.rig_file.name}: valve calibration {today.isoformat()}")
    stdout.write(f"calibration written to {run.rig_file} (bpod.valve_calibration); figure: {figure}\n")
    return calibration, figure
