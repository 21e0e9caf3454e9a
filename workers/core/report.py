"""What `scorestream report` draws, computed from the topics' records (pure).

Each prediction is joined to its label by event_id (the first of each wins, as in the monitor)
and placed at its event time. With the monitor's TTLs given, a pair is joined only where the
monitor would have joined it: the label came at most `label_ttl_ms` after the prediction's event
time, and at most `orphan_label_ttl_ms` before it (a label's time is its `label_time`, else its
record's timestamp). Outside them it counts as `labels_outside_ttl`. Then accuracy is rolled
over the last `window` outcomes of its model version in event-time order. Alerts are placed at
the time the monitor raised them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from workers.core.alerts import Alert


class ReportError(Exception):
    """The report cannot be drawn; the message names the fix."""


@dataclass(frozen=True, slots=True)
class AccuracyPoint:
    time_ms: int
    accuracy: float
    outcomes: int  # outcomes of this version so far


@dataclass(frozen=True, slots=True)
class ReportAlert:
    alert: str
    severity: str
    version: str
    time_ms: int
    joined: int


@dataclass(slots=True)
class ReportData:
    window: int
    series: dict[str, list[AccuracyPoint]] = field(default_factory=dict)  # "name vN" -> points
    alerts: list[ReportAlert] = field(default_factory=list)
    drift_at_ms: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    # (event time ms, "name vN", correct), in event-time order.
    outcomes: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def start_ms(self) -> int | None:
        times = [p.time_ms for points in self.series.values() for p in points]
        times += [a.time_ms for a in self.alerts]
        return min(times) if times else None


class _Prediction(msgspec.Struct):
    event_id: str
    model_name: str
    model_version: int
    label: str | int | float | bool
    event_time: int | None = None
    scored_at: int | None = None


class _Label(msgspec.Struct):
    event_id: str
    label: str | int | float | bool
    label_time: int | None = None


def _decode_all(
    records: Iterable[bytes | None], kind: type[msgspec.Struct]
) -> tuple[list[Any], int]:
    decoder = msgspec.json.Decoder(kind)
    good, bad = [], 0
    for raw in records:
        try:
            good.append(decoder.decode(raw or b""))
        except msgspec.DecodeError:
            bad += 1
    return good, bad


def _decode_labels(
    records: Iterable[bytes | None], timestamps: Sequence[int] | None
) -> tuple[list[tuple[_Label, int | None]], int]:
    """Each decodable label with its time (its own label_time, else its record's timestamp)."""
    decoder = msgspec.json.Decoder(_Label)
    good: list[tuple[_Label, int | None]] = []
    bad = 0
    for index, raw in enumerate(records):
        try:
            label = decoder.decode(raw or b"")
        except msgspec.DecodeError:
            bad += 1
            continue
        stamp = timestamps[index] if timestamps is not None else None
        good.append((label, label.label_time if label.label_time is not None else stamp))
    return good, bad


def _within_ttl(
    prediction_ms: int, label_ms: int | None, label_ttl_ms: int | None, orphan_ttl_ms: int | None
) -> bool:
    if label_ms is None:
        return True
    late_by = label_ms - prediction_ms
    if label_ttl_ms is not None and late_by > label_ttl_ms:
        return False  # the monitor expired the prediction first
    return orphan_ttl_ms is None or -late_by <= orphan_ttl_ms  # else the label expired first


def build_report(  # noqa: PLR0913 - the records and the monitor's settings they were joined by
    predictions: Iterable[bytes | None],
    labels: Iterable[bytes | None],
    alerts: Iterable[bytes | None],
    window: int,
    drift_at_ms: int | None = None,
    *,
    label_timestamps: Sequence[int] | None = None,
    label_ttl_ms: int | None = None,
    orphan_label_ttl_ms: int | None = None,
) -> ReportData:
    """`label_timestamps`: each label record's timestamp, in the order of `labels`."""
    if window < 1:
        raise ValueError("window must be at least 1")
    preds, bad_predictions = _decode_all(predictions, _Prediction)
    raised, _ = _decode_all(alerts, Alert)
    labs, bad_labels = _decode_labels(labels, label_timestamps)
    first_prediction: dict[str, _Prediction] = {}
    for p in preds:
        first_prediction.setdefault(p.event_id, p)
    first_label: dict[str, tuple[_Label, int | None]] = {}
    for label, label_ms in labs:
        first_label.setdefault(label.event_id, (label, label_ms))

    outcomes: list[tuple[int, str, bool]] = []
    outside_ttl = 0
    for event_id, p in first_prediction.items():
        found = first_label.get(event_id)
        if found is None:
            continue
        label, label_ms = found
        time_ms = p.event_time if p.event_time is not None else (p.scored_at or 0)
        if not _within_ttl(time_ms, label_ms, label_ttl_ms, orphan_label_ttl_ms):
            outside_ttl += 1
            continue
        version = f"{p.model_name} v{p.model_version}"
        outcomes.append((time_ms, version, str(p.label) == str(label.label)))
    outcomes.sort(key=lambda o: o[0])

    data = ReportData(window=window, drift_at_ms=drift_at_ms, outcomes=outcomes)
    windows: dict[str, deque[bool]] = {}
    hits: dict[str, int] = {}
    seen: dict[str, int] = {}
    for time_ms, version, correct in outcomes:
        recent = windows.setdefault(version, deque())
        recent.append(correct)
        hits[version] = hits.get(version, 0) + correct
        if len(recent) > window:
            hits[version] -= recent.popleft()
        seen[version] = seen.get(version, 0) + 1
        point = AccuracyPoint(time_ms, hits[version] / len(recent), seen[version])
        data.series.setdefault(version, []).append(point)
    data.alerts = sorted(
        (ReportAlert(a.alert, a.severity, f"{a.model_name} v{a.model_version}", a.at, a.joined)
         for a in raised),
        key=lambda a: a.time_ms,
    )  # fmt: skip
    data.counts = {
        "predictions": len(first_prediction),
        "duplicate_predictions": len(preds) - len(first_prediction),
        "labels": len(first_label),
        "joined": len(outcomes),
        "correct": sum(o[2] for o in outcomes),
        "labels_outside_ttl": outside_ttl,
        "predictions_without_label": len(first_prediction) - len(outcomes) - outside_ttl,
        "labels_without_prediction": len(first_label.keys() - first_prediction.keys()),
        "undecodable_predictions": bad_predictions,
        "undecodable_labels": bad_labels,
        "alerts": len(data.alerts),
    }
    return data


def accuracy_around_drift(data: ReportData) -> dict[str, float | None]:
    """Share of correct outcomes with an event time before and from the drift point on."""
    if data.drift_at_ms is None:
        return {}
    before = [c for t, _, c in data.outcomes if t < data.drift_at_ms]
    after = [c for t, _, c in data.outcomes if t >= data.drift_at_ms]
    return {
        "before": sum(before) / len(before) if before else None,
        "after": sum(after) / len(after) if after else None,
    }
