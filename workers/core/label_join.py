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
front (eviction), and finding a plain dict's first entry scans every slot deleted before it
until the next resize. On a busy stream that made each record cost as much as the whole buffer;
OrderedDict finds its front in constant time. Expiry goes by time, not by arrival order (one
entry stamped far in the future must not hold back everything that arrived after it): each side
also files its entries by time in an `ExpiryIndex`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final

import msgspec

# A class, or the number a regressor predicts / its true value.
Label = str | int | bool | float

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
    # A regressor's prediction (a number, no probabilities): joined to an error, not a hit.
    regression: bool = False
    # The chance it is right, estimated from its probabilities (CBPE); None without one.
    expected: float | None = None
    # What the join stage passes on in its Outcome records (None in a one-process monitor).
    score: float | None = None
    features: dict[str, Any] | None = None


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
    regression: bool = False
    expected: float | None = None
    label_time: int | None = None
    score: float | None = None
    features: dict[str, Any] | None = None

    @property
    def actual_class(self) -> Label:
        """The label as a class of the prediction's kind: an integral float for an integer
        class is that class (Jackson, pandas float columns and json.dumps(1.0) write 1 so)."""
        a = self.actual
        if type(self.predicted) is int and type(a) is float and a.is_integer():
            return int(a)
        return a

    @property
    def correct(self) -> bool:
        """True is not 1 and "1" is not 1: the types must agree."""
        a = self.actual_class
        return type(self.predicted) is type(a) and self.predicted == a

    @property
    def error(self) -> float | None:
        """actual - predicted for a regressor; None when either is no number (a bad label)."""
        if not self.regression or not is_number(self.actual) or not is_number(self.predicted):
            return None
        return float(self.actual) - float(self.predicted)


@dataclass(frozen=True, slots=True)
class Unjoined:
    """A prediction that expired (or was evicted) without its label, or a label that did
    without its prediction (`prediction` None)."""

    event_id: str
    prediction: PendingPrediction | None
    label: Label | None
    label_time: int | None


# Larger than any regressor's target; squares of errors between such numbers still sum over
# any window without overflowing a float (a 400-digit integer, or 1e308, would).
MAX_NUMBER = 1e150


def is_number(value: object) -> bool:
    """A finite number within +-MAX_NUMBER (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return -MAX_NUMBER <= value <= MAX_NUMBER  # False for nan and inf too


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


# Entries are filed in buckets of 2**10 = 1,024 ms of event time.
_BUCKET_SHIFT: Final = 10
TimeOf = Callable[[str], int | None]


@dataclass(slots=True)
class ExpiryIndex:
    """Keys filed by time, so that they expire in time order whatever order they arrived in.

    Whole buckets before the horizon expire at once; the bucket the horizon falls in is sorted by
    time when expiry first reaches into it (linear when it arrived in order) and then consumed
    from the front, so a key expires exactly when the horizon passes its time. Keys that leave
    early (joined, evicted) are dropped lazily: a bucket is compacted once it holds more than
    twice as many keys as are still live in it, so the index costs about 8-16 bytes a key.
    `time_of(key)` answers the key's time while it is pending, else None.
    """

    buckets: dict[int, list[str]] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)
    heap: list[int] = field(default_factory=list)
    sorted_bucket: int = -1  # the bucket sorted and partly consumed, up to `cursor`
    cursor: int = 0

    def add(self, key: str, time_ms: int) -> None:
        bucket = time_ms >> _BUCKET_SHIFT
        keys = self.buckets.get(bucket)
        if keys is None:
            self.buckets[bucket] = [key]
            self.live[bucket] = 1
            heapq.heappush(self.heap, bucket)
            return
        keys.append(key)
        self.live[bucket] += 1
        if bucket == self.sorted_bucket:
            self.sorted_bucket = -1  # sorted again when expiry next reaches into it

    def left(self, time_ms: int, time_of: TimeOf) -> None:
        """A key of this time left before expiring (joined or evicted)."""
        bucket = time_ms >> _BUCKET_SHIFT
        live = self.live.get(bucket)
        if live is None:
            return
        self.live[bucket] = live - 1
        if len(self.buckets[bucket]) > 2 * live + 32:
            self._compact(bucket, time_of)

    def expire(self, horizon: int, time_of: TimeOf, expire: Callable[[str], None]) -> None:
        """Call `expire(key)` for every pending key whose time is before `horizon`."""
        heap, buckets = self.heap, self.buckets
        while heap:
            bucket = heap[0]
            if (bucket + 1) << _BUCKET_SHIFT <= horizon:  # the whole bucket is due
                start = self.cursor if bucket == self.sorted_bucket else 0
                for key in islice(buckets[bucket], start, None):
                    if self._holds(key, bucket, time_of):
                        expire(key)
                heapq.heappop(heap)
                del buckets[bucket], self.live[bucket]
                if bucket == self.sorted_bucket:
                    self.sorted_bucket = -1
                continue
            if bucket << _BUCKET_SHIFT < horizon:
                self._expire_part(bucket, horizon, time_of, expire)
            return

    def _expire_part(
        self, bucket: int, horizon: int, time_of: TimeOf, expire: Callable[[str], None]
    ) -> None:
        if bucket != self.sorted_bucket:
            self._compact(bucket, time_of)
            self.buckets[bucket].sort(key=lambda k: time_of(k) or 0)
            self.sorted_bucket, self.cursor = bucket, 0
        keys, index = self.buckets[bucket], self.cursor
        while index < len(keys):
            key = keys[index]
            time_ms = time_of(key)
            if time_ms is not None and time_ms >> _BUCKET_SHIFT == bucket:
                if time_ms >= horizon:
                    break
                expire(key)
                self.live[bucket] -= 1
            index += 1
        self.cursor = index

    def _compact(self, bucket: int, time_of: TimeOf) -> None:
        start = self.cursor if bucket == self.sorted_bucket else 0
        self.buckets[bucket] = [
            k for k in islice(self.buckets[bucket], start, None) if self._holds(k, bucket, time_of)
        ]
        if bucket == self.sorted_bucket:
            self.cursor = 0

    @staticmethod
    def _holds(key: str, bucket: int, time_of: TimeOf) -> bool:
        """Still pending, and filed here (a key settled and seen again is filed anew)."""
        time_ms = time_of(key)
        return time_ms is not None and time_ms >> _BUCKET_SHIFT == bucket

    def __len__(self) -> int:
        return sum(self.live.values())


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
    prediction_expiry: ExpiryIndex = field(default_factory=ExpiryIndex)
    label_expiry: ExpiryIndex = field(default_factory=ExpiryIndex)
    # Labels reach the join re-keyed through the monitor's repartition topic: per source
    # partition of the labels topic, the highest source offset joined here. A label forwarded
    # again (its forwarder restarted from a checkpoint) is recognised and not counted twice.
    forwarded: dict[int, int] = field(default_factory=dict)
    # The same for predictions that were not on their event_id's murmur2 partition (written
    # by another producer) and were re-keyed onto the repartition topic: per predictions
    # partition, the highest source offset taken here.
    forwarded_predictions: dict[int, int] = field(default_factory=dict)
    # Per source partition, the newest label_time it brought. The re-keyed stream merges the
    # sources as they happen to be read, one far ahead of another: the label side's clock is
    # the slowest source's, so a source read ahead never expires what another still brings (a
    # source that stops bringing labels holds expiry back, as a labels topic without new
    # labels always has).
    source_clocks: dict[int, int] = field(default_factory=dict)
    # The join stage passes on what leaves unjoined: with `emitting`, each prediction that
    # expires or is evicted and each label that does is kept in `emitted` until drained.
    emitting: bool = False
    emitted: list[Unjoined] = field(default_factory=list)

    def __setstate__(self, state: Any) -> None:  # noqa: ANN401 - what pickle hands over
        """Checkpoints written before a field existed get it on load (the expiry indexes built
        from the buffers)."""
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in slots.items():
            object.__setattr__(self, name, value)
        if not hasattr(self, "forwarded"):
            self.forwarded = {}
        if not hasattr(self, "forwarded_predictions"):
            self.forwarded_predictions = {}
        if not hasattr(self, "source_clocks"):
            self.source_clocks = {}
        if not hasattr(self, "emitting"):
            self.emitting, self.emitted = False, []
        if not hasattr(self, "prediction_expiry"):
            self.prediction_expiry = ExpiryIndex()
            for event_id, pending in self.predictions.items():
                self.prediction_expiry.add(event_id, pending.event_time)
        if not hasattr(self, "label_expiry"):
            self.label_expiry = ExpiryIndex()
            for event_id, (_, label_time) in self.labels.items():
                self.label_expiry.add(event_id, label_time)

    def first_forwarding(
        self, source_partition: int, source_offset: int, *, prediction: bool = False
    ) -> bool:
        """True the first time this label (or re-keyed prediction), by its place in the topic
        it was first read from, comes through."""
        seen = self.forwarded_predictions if prediction else self.forwarded
        if source_offset <= seen.get(source_partition, -1):
            return False
        seen[source_partition] = source_offset
        return True

    def _prediction_time(self, event_id: str) -> int | None:
        pending = self.predictions.get(event_id)
        return None if pending is None else pending.event_time

    def _label_time(self, event_id: str) -> int | None:
        waiting = self.labels.get(event_id)
        return None if waiting is None else waiting[1]

    def add_prediction(self, event_id: str, prediction: PendingPrediction) -> Outcome | None:
        if prediction.event_time > self.prediction_clock:
            self.prediction_clock = prediction.event_time
            self._advance(min(self.prediction_clock, self.label_clock))
        if event_id in self.predictions or event_id in self.settled:
            self.counters.duplicate_predictions += 1
            return None
        waiting = self.labels.pop(event_id, None)
        if waiting is not None:
            self.label_expiry.left(waiting[1], self._label_time)
            return self._join(event_id, prediction, *waiting)
        if len(self.predictions) >= self.max_pending:
            evicted_id, evicted = self.predictions.popitem(last=False)
            self.prediction_expiry.left(evicted.event_time, self._prediction_time)
            self.counters.evicted_predictions += 1
            if self.emitting:
                self.emitted.append(Unjoined(evicted_id, evicted, None, None))
        self.predictions[event_id] = prediction
        self.prediction_expiry.add(event_id, prediction.event_time)
        return None

    def add_label(
        self, event_id: str, label: Label, label_time: int, source: int | None = None
    ) -> Outcome | None:
        """`source`: the labels partition a re-keyed label was first read from."""
        clock = label_time
        if source is not None:
            clocks = self.source_clocks
            if label_time > clocks.get(source, -1):
                clocks[source] = label_time
            clock = min(clocks.values())
        if clock > self.label_clock:
            self.label_clock = clock
            self._advance(min(self.prediction_clock, self.label_clock))
        prediction = self.predictions.pop(event_id, None)
        if prediction is not None:
            self.prediction_expiry.left(prediction.event_time, self._prediction_time)
            return self._join(event_id, prediction, label, label_time)
        state = self.settled.get(event_id)
        if state == _EXPIRED:
            self.counters.late_labels += 1
            return None
        if state == _JOINED or event_id in self.labels:
            self.counters.duplicate_labels += 1
            return None
        if len(self.labels) >= self.max_pending:
            evicted_id, (evicted_label, evicted_time) = self.labels.popitem(last=False)
            self.label_expiry.left(evicted_time, self._label_time)
            self.counters.evicted_labels += 1
            if self.emitting:
                self.emitted.append(Unjoined(evicted_id, None, evicted_label, evicted_time))
        self.labels[event_id] = (label, label_time)
        self.label_expiry.add(event_id, label_time)
        return None

    def advance(self, watermark: int) -> None:
        """Move both sides' event time forward to `watermark` and expire what is due."""
        self.prediction_clock = max(self.prediction_clock, watermark)
        self.label_clock = max(self.label_clock, watermark)
        self._advance(watermark)

    def _join(
        self, event_id: str, prediction: PendingPrediction, label: Label, label_time: int
    ) -> Outcome:
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
            regression=prediction.regression,
            expected=prediction.expected,
            label_time=label_time,
            score=prediction.score,
            features=prediction.features,
        )

    def _settle(self, event_id: str, state: int) -> None:
        if len(self.settled) >= self.max_pending:
            self.settled.popitem(last=False)
        self.settled[event_id] = state

    def _advance(self, time_ms: int) -> None:
        if time_ms <= self.watermark:
            return
        self.watermark = time_ms
        self.prediction_expiry.expire(
            time_ms - self.label_ttl_ms, self._prediction_time, self._expire_prediction
        )
        self.label_expiry.expire(
            time_ms - self.orphan_label_ttl_ms, self._label_time, self._expire_label
        )

    def _expire_prediction(self, event_id: str) -> None:
        prediction = self.predictions.pop(event_id)
        self.counters.expired_without_label += 1
        self._settle(event_id, _EXPIRED)
        if self.emitting:
            self.emitted.append(Unjoined(event_id, prediction, None, None))

    def _expire_label(self, event_id: str) -> None:
        label, label_time = self.labels.pop(event_id)
        self.counters.orphan_labels += 1
        if self.emitting:
            self.emitted.append(Unjoined(event_id, None, label, label_time))
