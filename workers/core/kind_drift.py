"""Data drift for features of every kind: numbers with gaps, categories, missing rates.

The checks follow the numeric mean test's design (a window of the last `window` events, one
verdict per event, a false-flag chance per check of about 6e-7, like |z| > 5):
- a numeric feature: the mean of its present values against the training mean;
- every feature: its missing rate against the training table's (a binomial z-test);
- a categorical feature: its frequencies against the training frequencies (a chi-square test
  over the listed categories, one bucket for the rest, and one for values the training data
  never held, reported as `unseen`).
The reference is the `feature_summary` that `register` and `train --data` write.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from scipy.stats import chi2

from workers.core.feature_spec import FeatureSpec

# The two-sided tail of |z| > 5: the false-flag chance of one check of the numeric mean test.
FALSE_FLAG: Final = 5.733e-7
_OTHER: Final = "\x00other"
_UNSEEN: Final = "\x00unseen"


@dataclass(frozen=True, slots=True)
class DriftedFeature:
    name: str
    check: str  # "mean", "missing_rate" or "frequencies"
    stats: dict[str, Any]


class _Numeric:
    def __init__(self, mean: float, std: float, window: int) -> None:
        self.mean = mean
        # A constant training feature has no scale: any other value is drift, compared
        # exactly (a count of values that differ, no sums to gather round-off).
        self.constant = std == 0
        self.std = std if std > 0 else math.inf
        self.values: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.off = 0

    def add(self, value: float | None) -> None:
        if value is None:
            return
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.total -= old
            self.off -= old != self.mean
        self.values.append(value)
        self.total += value
        self.off += value != self.mean

    def check(self, z_threshold: float, window: int) -> dict[str, Any] | None:
        n = len(self.values)
        if n < window // 2:
            return None
        if self.constant:
            if not self.off:
                return None
            return {"train_mean": self.mean, "live_mean": self.total / n,
                    "values_not_constant": self.off}  # fmt: skip
        live = self.total / n
        z = (live - self.mean) / (self.std / math.sqrt(n))
        if abs(z) <= z_threshold:
            return None
        shift = round((live - self.mean) / self.std, 4)
        return {"train_mean": self.mean, "live_mean": live, "shift_sigma": shift,
                "z": round(z, 2)}  # fmt: skip


class _Categorical:
    def __init__(self, frequencies: Sequence[Any], other: float, count: int, window: int) -> None:
        floor = 0.5 / max(count, 1)  # a share the training data could have missed
        self.known = dict(frequencies)
        self.expected = {**self.known, _OTHER: other}
        # Values never seen in training: impossible when the list is complete, else "other".
        self.expected[_UNSEEN] = floor
        total = sum(self.expected.values())
        self.expected = {k: max(v, floor) / total for k, v in self.expected.items()}
        self.complete = other == 0.0
        self.values: deque[str | Any] = deque(maxlen=window)
        self.counts: dict[Any, int] = {}
        self.threshold = float(chi2.isf(FALSE_FLAG, len(self.expected) - 1))

    def bucket(self, value: Any) -> Any:  # noqa: ANN401
        if value in self.known:
            return value
        return _UNSEEN if self.complete else _OTHER

    def add(self, value: Any) -> None:  # noqa: ANN401
        if value is None:
            return
        key = self.bucket(value)
        if len(self.values) == self.values.maxlen:
            old = self.values[0]
            self.counts[old] -= 1
        self.values.append(key)
        self.counts[key] = self.counts.get(key, 0) + 1

    def check(self, window: int) -> dict[str, Any] | None:
        n = len(self.values)
        if n < window // 2:
            return None
        statistic = sum(
            (self.counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in self.expected.items()
        )
        if statistic <= self.threshold:
            return None
        distance = 0.5 * sum(abs(self.counts.get(k, 0) / n - p) for k, p in self.expected.items())
        moved = sorted(
            ((k, self.counts.get(k, 0) / n - p) for k, p in self.expected.items()),
            key=lambda item: -abs(item[1]),
        )[:3]
        return {
            "chi2": round(statistic, 2),
            "threshold": round(self.threshold, 2),
            "total_variation": round(distance, 4),
            "unseen_share": self.counts.get(_UNSEEN, 0) / n,
            "most_changed": {_name(k): round(d, 4) for k, d in moved},
        }


def _name(key: Any) -> str:  # noqa: ANN401
    return (
        {_OTHER: "(other)", _UNSEEN: "(unseen)"}.get(key, str(key))
        if isinstance(key, str)
        else str(key)
    )


class _Missing:
    def __init__(self, rate: float, count: int, window: int) -> None:
        self.rate = min(max(rate, 0.5 / max(count, 1)), 1 - 0.5 / max(count, 1))
        self.flags: deque[bool] = deque(maxlen=window)
        self.missing = 0

    def add(self, value: Any) -> None:  # noqa: ANN401
        if len(self.flags) == self.flags.maxlen:
            self.missing -= self.flags[0]
        gap = value is None
        self.flags.append(gap)
        self.missing += gap

    def check(self, z_threshold: float, window: int) -> dict[str, Any] | None:
        n = len(self.flags)
        if n < window:
            return None
        z = (self.missing - n * self.rate) / math.sqrt(n * self.rate * (1 - self.rate))
        if abs(z) <= z_threshold:
            return None
        return {"train_missing_rate": self.rate, "live_missing_rate": self.missing / n,
                "z": round(z, 2)}  # fmt: skip


class KindDrift:
    """Per-kind data-drift checks over the last `window` events of a model's features."""

    def __init__(
        self,
        specs: Sequence[FeatureSpec],
        summary: Mapping[str, Mapping[str, Any]],
        window: int = 200,
        z_threshold: float = 5.0,
    ) -> None:
        self.names = tuple(spec.name for spec in specs)
        self.window = window
        self.z_threshold = z_threshold
        self.seen = 0
        self.checks: list[tuple[str, Any, _Missing]] = []
        for spec in specs:
            ref = summary[spec.name]
            count = int(ref.get("count", 0)) or 1
            missing = _Missing(float(ref.get("missing_rate", 0.0)), count, window)
            values: Any
            if spec.numeric:
                values = _Numeric(float(ref.get("mean", 0.0)), float(ref.get("std", 0.0)), window)
            else:
                values = _Categorical(
                    ref.get("frequencies", []), float(ref.get("other", 0.0)), count, window
                )
            self.checks.append((spec.name, values, missing))

    def update(self, row: Sequence[Any]) -> list[DriftedFeature]:
        """Add one event's features (manifest order); return what moved."""
        self.seen += 1
        drifted = []
        for (name, values, missing), value in zip(self.checks, row, strict=True):
            values.add(value)
            missing.add(value)
            if self.seen < self.window:
                continue
            found = (
                values.check(self.z_threshold, self.window)
                if isinstance(values, _Numeric)
                else values.check(self.window)
            )
            if found is not None:
                drifted.append(DriftedFeature(name, "mean" if isinstance(values, _Numeric)
                                              else "frequencies", found))  # fmt: skip
            gap = missing.check(self.z_threshold, self.window)
            if gap is not None:
                drifted.append(DriftedFeature(name, "missing_rate", gap))
        return drifted

    def restart_window(self) -> None:
        """Forget the live window (after an alert, so the next verdict is on fresh events)."""
        self.seen = 0
        for _, values, missing in self.checks:
            values.values.clear()
            if isinstance(values, _Numeric):
                values.total = 0.0
                values.off = 0
            else:
                values.counts.clear()
            missing.flags.clear()
            missing.missing = 0
