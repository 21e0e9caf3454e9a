"""Performance estimated before the labels arrive: confidence-based (CBPE), as NannyML does it.

At registration the model's probabilities on the reference data are calibrated against its
labels (isotonic regression). Live, each prediction's chance of being right is read off that
calibration from its probabilities alone, and a window's estimated accuracy is the mean of those
chances; for a binary classifier the estimated F1 comes from the expected true positives, false
positives and false negatives. It holds while P(y | x) stays what it was at registration: under
covariate shift (the features move, the relation does not) the estimate follows the accuracy;
concept drift (the relation changes) is invisible to it, which is what the labels are for.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

BINARY = "binary"  # the positive class's probability, calibrated
CONFIDENCE = "confidence"  # the predicted class's probability -> the chance it is right


@dataclass(frozen=True, slots=True)
class Calibration:
    """A monotone map from a probability to a calibrated one (isotonic, piecewise linear)."""

    kind: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "x": list(self.x), "y": list(self.y), "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        kind = data.get("kind")
        x, y = data.get("x"), data.get("y")
        if kind not in {BINARY, CONFIDENCE} or not isinstance(x, list) or not isinstance(y, list):
            raise ValueError("calibration needs kind (binary|confidence), x and y")
        if len(x) != len(y) or not x:
            raise ValueError("calibration x and y must be non-empty and of one length")
        return cls(kind, tuple(map(float, x)), tuple(map(float, y)), int(data.get("rows", 0)))

    def __call__(self, p: float) -> float:
        # np.interp on one number costs more than the whole prediction's handling.
        x, y = self.x, self.y
        if p <= x[0]:
            return y[0]
        if p >= x[-1]:
            return y[-1]
        j = bisect.bisect_right(x, p)
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (p - x0) / (x1 - x0)


def fit_calibration(
    probabilities: npt.NDArray[np.float64], truth: Sequence[int]
) -> Calibration | None:
    """`probabilities`: one row per labelled reference event in the model's class order;
    `truth`: the index of each row's true class (-1: a class the model does not know).
    None when there is nothing to calibrate on (no rows, or one outcome only)."""
    from sklearn.isotonic import IsotonicRegression  # noqa: PLC0415

    proba = np.asarray(probabilities, dtype=np.float64)
    actual = np.asarray(truth, dtype=np.int64)
    if proba.ndim != 2 or proba.shape[0] == 0 or proba.shape[0] != actual.size:
        return None
    if proba.shape[1] == 2:
        kind, x, target = BINARY, proba[:, 1], (actual == 1).astype(np.float64)
    else:
        kind, x = CONFIDENCE, proba.max(axis=1)
        target = (proba.argmax(axis=1) == actual).astype(np.float64)
    if target.min() == target.max():
        return None
    if not _isotonic_helps(x, target):
        # Already calibrated (a well-specified logistic regression is): isotonic steps would
        # only add their own noise to every estimate.
        return Calibration(kind, (0.0, 1.0), (0.0, 1.0), int(x.size))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, target)
    return Calibration(
        kind,
        tuple(float(v) for v in iso.X_thresholds_),
        tuple(float(v) for v in iso.y_thresholds_),
        int(x.size),
    )


def _isotonic_helps(x: npt.NDArray[np.float64], target: npt.NDArray[np.float64]) -> bool:
    """Two-fold: does isotonic calibration fitted on one half lower the other half's Brier
    score below the raw probabilities' own? (Alternate rows: either half spans the data.)"""
    from sklearn.isotonic import IsotonicRegression  # noqa: PLC0415

    if x.size < 200:
        return True  # too few to tell: calibrate, as CBPE does
    raw = iso = 0.0
    for fit, held in (
        (slice(0, None, 2), slice(1, None, 2)),
        (slice(1, None, 2), slice(0, None, 2)),
    ):
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        model.fit(x[fit], target[fit])
        iso += float(((model.predict(x[held]) - target[held]) ** 2).sum())
        raw += float(((x[held] - target[held]) ** 2).sum())
    return iso < raw


@dataclass(frozen=True, slots=True)
class Expected:
    """One prediction's expected outcome: the chance it is right and, for a binary classifier,
    its expected share of a true positive, false positive and false negative."""

    correct: float
    tp: float = 0.0
    fp: float = 0.0
    fn: float = 0.0


def expected(calibration: Calibration, probabilities: Sequence[float]) -> Expected | None:
    """From a prediction's probabilities (model class order); None when they do not fit."""
    if not probabilities or any(not math.isfinite(p) for p in probabilities):
        return None
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    if calibration.kind == CONFIDENCE:
        return Expected(calibration(probabilities[best]))
    if len(probabilities) != 2:
        return None
    p = calibration(probabilities[1])
    if best == 1:
        return Expected(p, tp=p, fp=1.0 - p)
    return Expected(1.0 - p, fn=p)


class EstimatedPerformance:
    """Estimated accuracy (and binary F1) over a version's last `window` predictions.

    Sums are kept running, and summed afresh once a window so round-off cannot gather."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[Expected] = deque(maxlen=window)
        self.predictions = 0
        self.below = False
        self._sums = [0.0, 0.0, 0.0, 0.0]  # correct, tp, fp, fn

    def add(self, value: Expected) -> None:
        sums = self._sums
        if len(self.recent) == self.window:
            old = self.recent[0]
            sums[0] -= old.correct
            sums[1] -= old.tp
            sums[2] -= old.fp
            sums[3] -= old.fn
        self.recent.append(value)
        self.predictions += 1
        if self.predictions % self.window == 0:
            self._sums = [
                math.fsum(e.correct for e in self.recent), math.fsum(e.tp for e in self.recent),
                math.fsum(e.fp for e in self.recent), math.fsum(e.fn for e in self.recent),
            ]  # fmt: skip
            return
        sums[0] += value.correct
        sums[1] += value.tp
        sums[2] += value.fp
        sums[3] += value.fn

    @property
    def size(self) -> int:
        return len(self.recent)

    def accuracy(self) -> float | None:
        return self._sums[0] / len(self.recent) if self.recent else None

    def f1(self) -> float | None:
        _, tp, fp, fn = self._sums
        denominator = 2 * tp + fp + fn
        return None if denominator <= 1e-12 else 2 * tp / denominator


class EstimateCheck:
    """Realized beside estimated accuracy over the same joined outcomes (the last `window`
    whose prediction carried an estimate): their gap shows whether the estimate can be trusted
    now (a growing gap is what concept drift looks like)."""

    def __init__(self, window: int) -> None:
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)

    def add(self, estimate: float, correct: bool) -> None:
        self.recent.append((estimate, correct))

    def snapshot(self) -> tuple[float, float] | None:
        """(estimated, realized) over the window; None before any joined estimate."""
        if not self.recent:
            return None
        size = len(self.recent)
        estimated = math.fsum(e for e, _ in self.recent) / size
        realized = sum(c for _, c in self.recent) / size
        return estimated, realized
