"""A synthetic labelled stream for demos and load: feature events and their delayed labels.

Rows come from a data set bundled with scikit-learn (a little multiplicative noise keeps them
distinct); each event's true label is the row's. After `drift_at` events the world changes:
each label is flipped with probability `drift_flip`, so a model's accuracy drops towards one
half while its inputs stay the same (concept drift, what the monitor's error-stream detectors
are for). Pure: the caller decides when each record is sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    index: int
    event_id: str
    event_time: int  # epoch ms
    value: bytes  # a FeatureEvent
    label: Any  # the true label (after any drift): a class, or a number for a regressor
    label_delay_ms: int | None  # None: this event never gets a label

    def label_value(self) -> bytes:
        label_time = self.event_time + (self.label_delay_ms or 0)
        body = {"event_id": self.event_id, "label": self.label, "label_time": label_time}
        return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class StreamSpec:
    features: Sequence[str]
    rows: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    prefix: str = "evt"
    seed: int = 0
    drift_at: int | None = None
    drift_flip: float = 0.5
    label_fraction: float = 1.0
    label_delay_ms: tuple[int, int] = (1_000, 60_000)
    noise: float = 0.02


def stream(spec: StreamSpec, start_ms: int, interval_ms: float) -> Iterator[SyntheticEvent]:
    """Events `interval_ms` apart in event time from `start_ms`, forever (the caller stops)."""
    if spec.rows.shape[1] != len(spec.features):
        width = spec.rows.shape[1]
        raise ValueError(f"rows have {width} columns for {len(spec.features)} features")
    rng = np.random.default_rng(spec.seed)
    low, high = spec.label_delay_ms
    index = 0
    while True:
        pick = int(rng.integers(0, len(spec.rows)))
        row = spec.rows[pick] * rng.normal(1.0, spec.noise, spec.rows.shape[1])
        label = int(spec.labels[pick])
        if spec.drift_at is not None and index >= spec.drift_at and rng.random() < spec.drift_flip:
            label = 1 - label if label in (0, 1) else label
        event_id = f"{spec.prefix}-{index}"
        event_time = start_ms + int(index * interval_ms)
        body = {"event_id": event_id, "event_time": event_time,
                "features": dict(zip(spec.features, row.tolist(), strict=True))}  # fmt: skip
        labelled = rng.random() < spec.label_fraction
        delay = int(rng.integers(low, high + 1)) if labelled else None
        yield SyntheticEvent(index, event_id, event_time, json.dumps(body).encode(), label, delay)
        index += 1


def json_value(value: Any) -> Any:  # noqa: ANN401 - a table cell in, a JSON value out
    """A table cell as an event carries it: NaN and pandas' NA as null, numpy scalars as Python
    values, anything JSON cannot hold as its string."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str | bool | int | float):
        return value
    try:
        if value != value:  # noqa: PLR0124 - pandas.NA, NaT
            return None
    except (TypeError, ValueError):
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """A user's table replayed row by row: features, the label after its delay."""

    features: Sequence[str]
    prefix: str = "evt"
    seed: int = 0
    label_fraction: float = 1.0
    label_delay_ms: tuple[int, int] = (1_000, 60_000)


def replay(
    rows: Iterable[tuple[Any, ...]],
    spec: ReplaySpec,
    start_ms: int,
    interval_ms: float,
) -> Iterator[SyntheticEvent]:
    """One event per row `(event_id or None, label or None, *features)`, in order."""
    rng = np.random.default_rng(spec.seed)
    low, high = spec.label_delay_ms
    for index, (given_id, label, *values) in enumerate(rows):
        event_id = f"{spec.prefix}-{index}" if given_id is None else str(json_value(given_id))
        event_time = start_ms + int(index * interval_ms)
        features = {f: json_value(v) for f, v in zip(spec.features, values, strict=True)}
        body = {"event_id": event_id, "event_time": event_time, "features": features}
        truth = json_value(label)
        labelled = truth is not None and rng.random() < spec.label_fraction
        delay = int(rng.integers(low, high + 1)) if labelled else None
        value = json.dumps(body, allow_nan=False).encode()
        yield SyntheticEvent(index, event_id, event_time, value, truth, delay)
