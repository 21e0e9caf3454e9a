"""Concept drift on the stream of outcomes (river detectors) and data drift on features."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from river import drift
from river.drift import binary


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    make: Callable[[], list[Any]]
    # Most detectors watch the error rate (1 = wrong); FHDDM watches accuracy drop (1 = right).
    feeds_errors: bool
    description: str


def _page_hinkley_pair() -> list[Any]:
    # PageHinkley on error bits is a CUSUM: with drift term delta it is close to the optimal
    # detector for an error-rate rise of 2*delta. One tuned for small rises (0.2 -> 0.3) and one
    # for large ones (-> 0.4), either firing, beat every single river detector measured here
    # (bench/drift_quality.py); alpha=1 keeps the reference mean from fading.
    return [
        drift.PageHinkley(min_instances=30, delta=0.05, threshold=16, alpha=1.0, mode="up"),
        drift.PageHinkley(min_instances=30, delta=0.1, threshold=9, alpha=1.0, mode="up"),
    ]


DETECTORS: dict[str, DetectorSpec] = {
    "page_hinkley_pair": DetectorSpec(
        _page_hinkley_pair,
        feeds_errors=True,
        description="PageHinkley(0.05, 16) or PageHinkley(0.1, 9), mode=up, on error bits",
    ),
    "adwin": DetectorSpec(lambda: [drift.ADWIN()], feeds_errors=True, description="ADWIN()"),
    "adwin_fast": DetectorSpec(
        lambda: [drift.ADWIN(clock=1)], feeds_errors=True, description="ADWIN(clock=1)"
    ),
    "hddm_w": DetectorSpec(lambda: [binary.HDDMW()], feeds_errors=True, description="HDDMW()"),
    "hddm_a": DetectorSpec(lambda: [binary.HDDMA()], feeds_errors=True, description="HDDMA()"),
    "fhddm": DetectorSpec(
        lambda: [binary.FHDDM()], feeds_errors=False, description="FHDDM() on correct bits"
    ),
    "ddm": DetectorSpec(lambda: [binary.DDM()], feeds_errors=True, description="DDM()"),
}
DEFAULT_DETECTOR = "page_hinkley_pair"


class ConceptDrift:
    """One river detector fed with an outcome stream; `update` says whether it fired."""

    def __init__(self, name: str = DEFAULT_DETECTOR) -> None:
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
        self.name = name
        spec = DETECTORS[name]
        self._detectors = spec.make()
        self._feeds_errors = spec.feeds_errors

    def update(self, *, correct: bool) -> bool:
        x = int(correct != self._feeds_errors)
        fired = False
        for detector in self._detectors:
            detector.update(x)
            fired = fired or bool(detector.drift_detected)
        return fired


@dataclass(frozen=True, slots=True)
class MovedFeature:
    name: str
    train_mean: float
    live_mean: float
    shift_sigma: float  # (live - train) / training std
    z: float


class FeatureDrift:
    """Compare each feature's mean over the last `window` events with its training mean.

    The statistic is z = (live mean - training mean) / (training std / sqrt(window)); a feature
    has moved when |z| exceeds `z_threshold`. With window 200 and threshold 5, a 0.5 sigma shift
    of one feature is flagged about 140 events after it starts, and the chance of a false flag
    per check is below 1e-6.
    """

    def __init__(
        self,
        names: Sequence[str],
        train_mean: Sequence[float],
        train_std: Sequence[float],
        window: int = 200,
        z_threshold: float = 5.0,
    ) -> None:
        self.names = tuple(names)
        self.window = window
        self.z_threshold = z_threshold
        self.mean: npt.NDArray[np.float64] = np.asarray(train_mean, dtype=np.float64)
        std = np.asarray(train_std, dtype=np.float64)
        # A constant training feature has no scale: any movement of it is reported by value.
        self.std = np.where(std > 0, std, np.inf)
        self._rows = np.zeros((window, len(self.names)), dtype=np.float64)
        self._sum = np.zeros(len(self.names), dtype=np.float64)
        self.seen = 0

    def update(self, row: Sequence[float]) -> list[MovedFeature]:
        """Add one event's features (manifest order); return the features that moved."""
        slot = self.seen % self.window
        values = np.asarray(row, dtype=np.float64)
        self._sum += values - self._rows[slot]
        self._rows[slot] = values
        self.seen += 1
        if self.seen < self.window:
            return []
        live = self._sum / self.window
        z = (live - self.mean) / (self.std / np.sqrt(self.window))
        moved = np.flatnonzero(np.abs(z) > self.z_threshold)
        return [
            MovedFeature(
                name=self.names[j],
                train_mean=float(self.mean[j]),
                live_mean=float(live[j]),
                shift_sigma=float((live[j] - self.mean[j]) / self.std[j]),
                z=float(z[j]),
            )
            for j in moved.tolist()
        ]

    def restart_window(self) -> None:
        """Forget the live window (after an alert, so the next verdict is on fresh events)."""
        self._rows[:] = 0.0
        self._sum[:] = 0.0
        self.seen = 0
