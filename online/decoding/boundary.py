"""The classifier on a CD: the decision boundary between the two sides' projections, and the decode of
one trial with its confidence."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

Side = Literal["left", "right"]
"""A lick direction (= the trial type of a correct trial)."""



def decision_boundary(mu_right: float, var_right: float, mu_left: float, var_left: float) -> float:
    """DB = (muR/varR + muL/varL) / (1/varR + 1/varL): the inverse-variance-weighted mean of the class means
    (closer to the tighter class). Zero variances are floored so the formula stays finite."""
    floor = 1e-12 * max(1.0, (mu_right - mu_left) ** 2)
    var_right, var_left = max(var_right, floor), max(var_left, floor)
    return (mu_right / var_right + mu_left / var_left) / (1.0 / var_right + 1.0 / var_left)


class Decode(NamedTuple):
    """A single-trial decode: the side, the probability it is right (see `Boundary.confidence`), the
    projection on the CD."""

    side: Side
    confidence: float
    projection: float


@dataclass(frozen=True)
class Boundary:
    """Class statistics of the training trials' projections and the decision boundary between them."""

    mu_right: float
    mu_left: float
    var_right: float
    var_left: float
    value: float

    @classmethod
    def fit(cls, right: np.ndarray, left: np.ndarray) -> Boundary:
        """From the projections of training trials (at least two per side: variances are sample variances,
        ddof=1, like MATLAB's std)."""
        right, left = np.asarray(right, dtype=float), np.asarray(left, dtype=float)
        if right.size < 2 or left.size < 2:
            raise ValueError(f"a boundary needs at least 2 trials per side, got {right.size} right, "
                             f"{left.size} left")
        mu_r, mu_l = float(right.mean()), float(left.mean())
        var_r, var_l = float(right.var(ddof=1)), float(left.var(ddof=1))
        return cls(mu_r, mu_l, var_r, var_l, decision_boundary(mu_r, var_r, mu_l, var_l))

    @property
    def pooled_sd(self) -> float:
        return math.sqrt(max(0.5 * (self.var_right + self.var_left), 1e-300))

    def side(self, projection: float) -> Side:
        """Right above the boundary, left at or below it (the paper counts a tie as wrong for both)."""
        return "right" if projection > self.value else "left"

    def confidence(self, projection: float) -> float:
        """Probability that the decoded side is the true one, in [0.5, 1): the logistic posterior of two
        Gaussian classes with the pooled variance s^2 = (varR + varL) / 2, centred on DB:
        log-odds(right) = (muR - muL) / s^2 * (p - DB). 0.5 on the boundary, rising monotonically with the
        distance |p - DB| (in units of s, the slope is the class separation d' = (muR - muL) / s).
        Calibrated when the training projections are Gaussian with similar spreads."""
        s2 = self.pooled_sd**2
        log_odds = abs(self.mu_right - self.mu_left) / s2 * abs(projection - self.value)
        return 1.0 / (1.0 + math.exp(-min(log_odds, 700.0)))

    def decode(self, projection: float) -> Decode:
        return Decode(self.side(projection), self.confidence(projection), float(projection))

    def to_dict(self) -> dict[str, float]:
        return {"mu_right": self.mu_right, "mu_left": self.mu_left, "var_right": self.var_right,
                "var_left": self.var_left, "value": self.value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Boundary:
        return cls(*(float(data[k]) for k in ("mu_right", "mu_left", "var_right", "var_left", "value")))
