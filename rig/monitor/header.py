"""What the monitor's header says about the running session, readable across a room: subject, rig,
protocol, context and block, stage, elapsed time, trials, water given and weight, and how near the
session is to its end criteria (session.end_trials, end_minutes, end_water_ul)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rig.monitor.model import BehaviourModel

NEAR = 0.9
"""A criterion counts as near from this fraction of it."""
PROTOCOL = "directional licking"

Level = Literal["running", "near", "met"]


@dataclass(frozen=True)
class HeaderInfo:
    subject: str
    rig: str
    protocol: str
    context: str
    block: str | None
    stage: str
    elapsed_s: float | None
    trials: int
    water_ul: float
    weight_g: float | None
    level: Level
    criteria: tuple[str, ...]
    """The end criteria with their progress ("trials 280/300"), the ones near or met first."""
    ended: bool = False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def elapsed_s(status: Mapping[str, Any], now: datetime) -> float | None:
    """Wall-clock time since the session started (status "started", host time), None if not known."""
    started = status.get("started")
    if not isinstance(started, str):
        return None
    try:
        return max(0.0, (now - datetime.fromisoformat(started)).total_seconds())
    except ValueError:
        return None


def header_info(model: BehaviourModel, limits: Any, now: datetime | None = None) -> HeaderInfo:
    """The header of `model`'s session; `limits` is the settings' session section (end_trials, ...)."""
    status = model.status
    last = model.last_row
    now = datetime.now() if now is None else now
    trials = status.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool):
        trials = last.trial if last else 0
    water = _number(status.get("water_ul"))
    if water is None:  # an older session, or only trials.jsonl so far: the rewards of the trials seen
        water = sum(row.reward_ul for row in model.trials)
    elapsed = elapsed_s(status, model.ended_at or now)  # stops at the session's end
    block = status.get("block_label") or (last.block_label if last else None)
    progress: list[tuple[float, str]] = []
    for value, target, label, unit in (
        (float(trials), limits.end_trials, "trials", ""),
        (elapsed / 60 if elapsed is not None else None, limits.end_minutes, "minutes", " min"),
        (water, limits.end_water_ul, "water", " uL"),
    ):
        if target is not None and value is not None:
            progress.append((value / target, f"{label} {value:.0f}/{target:g}{unit}"))
    progress.sort(key=lambda p: -p[0])
    top = progress[0][0] if progress else 0.0
    level: Level = "met" if top >= 1.0 else "near" if top >= NEAR else "running"
    return HeaderInfo(
        subject=str(status.get("subject") or "–"), rig=str(status.get("rig") or ""), protocol=PROTOCOL,
        context=str(status.get("context") or (last.context if last else "–")),
        block=str(block) if block else None,
        stage=str(status.get("stage") or (last.stage.get("name", "–") if last else "–")),
        elapsed_s=elapsed, trials=trials, water_ul=water, weight_g=_number(status.get("weight_g")),
        level=level, criteria=tuple(text for _, text in progress), ended=model.ended_at is not None,
    )


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
