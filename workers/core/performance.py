"""Rolling performance of one model version over its joined outcomes (pure, integer counts).

Counts are kept as integers and ratios computed from them, so the numbers equal an offline
recomputation over the same outcomes exactly, not approximately.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from workers.core.label_join import Outcome


@dataclass(frozen=True, slots=True)
class Snapshot:
    joined: int
    window_size: int  # outcomes in the count window now (<= window)
    window_accuracy: float | None
    precision: float | None  # binary classifiers only
    recall: float | None
    f1: float | None
    reference_accuracy: float | None  # accuracy of this version's first `window` outcomes
    time_window_accuracy: dict[int, float]  # window start (epoch ms) -> accuracy


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(slots=True)
class RollingPerformance:
    window: int
    time_window_ms: int = 60_000
    time_windows_kept: int = 60
    joined: int = 0
    # (correct, predicted positive, actually positive) for the last `window` outcomes.
    recent: deque[tuple[bool, bool, bool]] = field(default_factory=deque)
    correct: int = 0
    true_pos: int = 0
    pred_pos: int = 0
    actual_pos: int = 0
    binary: bool = True
    reference_correct: int = 0
    # Tumbling event-time windows: start -> [outcomes, correct].
    by_time: dict[int, list[int]] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        correct = outcome.correct
        positive = outcome.positive
        if positive is None:
            self.binary = False
        pred_pos = positive is not None and str(outcome.predicted) == positive
        actual_pos = positive is not None and str(outcome.actual_class) == positive
        self.joined += 1
        if self.joined <= self.window:
            self.reference_correct += correct
        self.recent.append((correct, pred_pos, actual_pos))
        self.correct += correct
        self.true_pos += pred_pos and actual_pos
        self.pred_pos += pred_pos
        self.actual_pos += actual_pos
        if len(self.recent) > self.window:
            old_correct, old_pred, old_actual = self.recent.popleft()
            self.correct -= old_correct
            self.true_pos += -(old_pred and old_actual)
            self.pred_pos -= old_pred
            self.actual_pos -= old_actual
        start = outcome.event_time - outcome.event_time % self.time_window_ms
        bucket = self.by_time.get(start)
        if bucket is None:
            bucket = self.by_time[start] = [0, 0]
            while len(self.by_time) > self.time_windows_kept:
                del self.by_time[min(self.by_time)]
        bucket[0] += 1
        bucket[1] += correct

    def snapshot(self, *, time_windows: bool = True) -> Snapshot:
        """The numbers now; without `time_windows` (per outcome, on the hot path) it is cheap."""
        n = len(self.recent)
        precision = recall = f1 = None
        if self.binary and n:
            precision = _ratio(self.true_pos, self.pred_pos)
            recall = _ratio(self.true_pos, self.actual_pos)
            f1 = _ratio(2 * self.true_pos, self.pred_pos + self.actual_pos)
        return Snapshot(
            joined=self.joined,
            window_size=n,
            window_accuracy=_ratio(self.correct, n),
            precision=precision,
            recall=recall,
            f1=f1,
            reference_accuracy=_ratio(self.reference_correct, min(self.joined, self.window)),
            time_window_accuracy={
                start: correct / total for start, (total, correct) in sorted(self.by_time.items())
            }
            if time_windows
            else {},
        )


@dataclass(frozen=True, slots=True)
class ErrorSnapshot:
    joined: int
    window_size: int
    window_mae: float | None
    window_rmse: float | None
    window_mean_error: float | None  # mean of actual - predicted: the sign says which way
    reference_mae: float | None  # MAE of this version's first `window` outcomes


@dataclass(slots=True)
class RollingError:
    """A regressor's rolling MAE, RMSE and mean error over its last `window` outcomes.

    The reported numbers are exact sums (math.fsum) over the window, so they equal an offline
    recomputation to the last bit of a correctly rounded mean. The running sum used by the
    cheap per-outcome test is re-added exactly once per window so it cannot drift.
    """

    window: int
    joined: int = 0
    recent: deque[float] = field(default_factory=deque)  # errors, actual - predicted
    abs_sum: float = 0.0
    reference: list[float] = field(default_factory=list)
    reference_mae: float | None = None
    _since_exact: int = 0

    def add(self, error: float) -> None:
        self.joined += 1
        if self.reference_mae is None:
            self.reference.append(abs(error))
            if len(self.reference) == self.window:
                self.reference_mae = math.fsum(self.reference) / self.window
                self.reference = []
        self.recent.append(error)
        self.abs_sum += abs(error)
        if len(self.recent) > self.window:
            self.abs_sum -= abs(self.recent.popleft())
        self._since_exact += 1
        if self._since_exact >= self.window:
            self.abs_sum = math.fsum(abs(e) for e in self.recent)
            self._since_exact = 0

    def window_mae_fast(self) -> float | None:
        return self.abs_sum / len(self.recent) if self.recent else None

    def snapshot(self) -> ErrorSnapshot:
        n = len(self.recent)
        if not n:
            return ErrorSnapshot(self.joined, 0, None, None, None, self.reference_mae)
        return ErrorSnapshot(
            joined=self.joined,
            window_size=n,
            window_mae=math.fsum(abs(e) for e in self.recent) / n,
            window_rmse=math.sqrt(math.fsum(e * e for e in self.recent) / n),
            window_mean_error=math.fsum(self.recent) / n,
            reference_mae=self.reference_mae,
        )
