"""What every bench script prints: a readable table, and with --json one JSON object as the last line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a value that was measured)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def print_report(
    title: str, rows: Sequence[tuple[str, str]], figures: Mapping[str, Any], as_json: bool
) -> None:
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
    if as_json:
        print(json.dumps(dict(figures)))
