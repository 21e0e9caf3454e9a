"""Join predictions with their ground-truth labels, in either arrival order (pure, event time).

A prediction waits up to `label_ttl_ms` of event time for its label; a label that arrives first
waits up to `orphan_label_ttl_ms` for its prediction. Time is the watermark: the smaller of the
largest prediction `event_time` and the largest `label_time` seen, so a side that is read ahead
of the other (two topics are consumed at their own pace) cannot expire what the slower side is
about to deliver, and replays and restarts expire exactly what a live run would. Until both
sides have been seen nothing expires. Both buffers hold at most `max_pending` entries, the
oldest evicted first. Settled event ids (joined or expired) are remembered, up to `max_pending`
of them, so a duplicate never counts twice and a label for an expired prediction counts as late.

The three buffers are OrderedDicts, not dicts: both remove from the middle (a join) and from the
front (expiry, eviction), and finding a plain dict's first entry scans every slot deleted before
it until the next resize. On a busy stream that made each record cost as much as the whole
buffer; OrderedDict finds its front in constant time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import msgspec

Label = str | int | bool

_JOINED: Final = 1
_EXPIRED: Final = 2


class PendingPrediction(msgspec.Struct, frozen=True, gc=False):
    """One prediction waiting for its label (a Struct: untracked by the cycle collector and
    smaller than a slotted dataclass; up to a million of these are held)."""

    model_name: str
    model_version: int
    label: Label
    event_time: int
    # For binary classifiers, the positive class written as in `probabilities` (the second of
    # the model's two classes); None otherwise.
    positive: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A joined prediction and label."""

    event_id: str
    model_name: str
    model_version: int
    predicted: Label
    actual: Label
    event_time: int
    positive: str | None

    @property
    def correct(self) -> bool:
        return type(self.predicted) is type(self.actual) and self.predicted == self.actual


@dataclass(slots=True)
class JoinCounters:
    joined: int = 0
    expired_without_label: int = 0
    orphan_labels: int = 0
    late_labels: int = 0
    evicted_predictions: int = 0
    evicted_labels: int = 0
    duplicate_predictions: int = 0
    duplicate_labels: int = 0


@dataclass(slots=True)
class LabelJoin:
    label_ttl_ms: int
    orphan_label_ttl_ms: int
    max_pending: int
    watermark: int = -1
    prediction_clock: int = -1
    label_clock: int = -1
    counters: JoinCounters = field(default_factory=JoinCounters)
    # Insertion-ordered: arrival order is (close to) event-time order, so the front is the
    # oldest and expiry and eviction both pop from there.
    predictions: OrderedDict[str, PendingPrediction] = field(default_factory=OrderedDict)
    labels: OrderedDict[str, tuple[Label, int]] = field(default_factory=OrderedDict)
    settled: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def add_prediction(self, event_id: str, prediction: PendingPrediction) -> Outcome | None:
        if prediction.event_time > self.prediction_clock:
            self.prediction_clock = prediction.event_time
            self._advance(min(self.prediction_clock, self.label_clock))
        if event_id in self.predictions or event_id in self.settled:
            self.counters.duplicate_predictions += 1
            return None
        waiting = self.labels.pop(event_id, None)
        if waiting is not None:
            return self._join(event_id, prediction, waiting[0])
        if len(self.predictions) >= self.max_pending:
            self.predictions.popitem(last=False)
            self.counters.evicted_predictions += 1
        self.predictions[event_id] = prediction
        return None

    def add_label(self, event_id: str, label: Label, label_time: int) -> Outcome | None:
        if label_time > self.label_clock:
            self.label_clock = label_time
            self._advance(min(self.prediction_clock, self.label_clock))
        prediction = self.predictions.pop(event_id, None)
        if prediction is not None:
            return self._join(event_id, prediction, label)
        state = self.settled.get(event_id)
        if state == _EXPIRED:
            self.counters.late_labels += 1
            return None
        if state == _JOINED or event_id in self.labels:
            self.counters.duplicate_labels += 1
            return None
        if len(self.labels) >= self.max_pending:
            self.labels.popitem(last=False)
            self.counters.evicted_labels += 1
        self.labels[event_id] = (label, label_time)
        return None

    def advance(self, watermark: int) -> None:
        """Move both sides' event time forward to `watermark` and expire what is due."""
        self.prediction_clock = max(self.prediction_clock, watermark)
        self.label_clock = max(self.label_clock, watermark)
        self._advance(watermark)

    def _join(self, event_id: str, prediction: PendingPrediction, label: Label) -> Outcome:
        self.counters.joined += 1
        self._settle(event_id, _JOINED)
        return Outcome(
            event_id=event_id,
            model_name=prediction.model_name,
            model_version=prediction.model_version,
            predicted=prediction.label,
            actual=label,
            event_time=prediction.event_time,
            positive=prediction.positive,
        )

    def _settle(self, event_id: str, state: int) -> None:
        if len(self.settled) >= self.max_pending:
            self.settled.popitem(last=False)
        self.settled[event_id] = state

    def _advance(self, time_ms: int) -> None:
        if time_ms <= self.watermark:
            return
        self.watermark = time_ms
        horizon = time_ms - self.label_ttl_ms
        predictions = self.predictions
        while predictions:
            event_id = next(iter(predictions))
            if predictions[event_id].event_time >= horizon:
                break
            del predictions[event_id]
            self.counters.expired_without_label += 1
            self._settle(event_id, _EXPIRED)
        horizon = time_ms - self.orphan_label_ttl_ms
        labels = self.labels
        while labels:
            event_id = next(iter(labels))
            if labels[event_id][1] >= horizon:
                break
            del labels[event_id]
            self.counters.orphan_labels += 1
