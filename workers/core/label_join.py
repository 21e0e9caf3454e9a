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
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, Final, NamedTuple

import msgspec

# A class, or the number a regressor predicts / its true value.
Label = str | int | bool | float

_JOINED: Final = 1
_EXPIRED: Final = 2
# A predictions partition a join has not heard from yet.
_UNHEARD: Final = -2
# A predictions partition that re-keyed nothing here for this long (wall clock) no longer holds
# the prediction side's clock: as Kafka Streams' max.task.idle.ms, by time and not by how far
# behind it is, since a backlog's partitions drift apart in event time without bound.
SOURCE_IDLE_MS: Final = 60_000


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


class Unfit(NamedTuple):
    event_id: str
    model_name: str
    model_version: int
    label: Label
    reason: str


UNFIT_KEPT: Final = 16

# Why a label met its prediction and could not be joined to it, and what fixes it.
UNFIT_FIXES: Final = {
    "not_a_number": "a regressor's label is a JSON number (not a string, null or a boolean), "
    "finite and within 1e150",
    "wrong_type": "write each label as the model's classes are written in its Predictions' "
    '"label": integer classes as JSON integers (1, not "1"), string classes as strings, '
    "booleans as true/false, and only classes the model knows",
    "fractional": "an integer-class model's label is a whole number (1 or 1.0, not 1.5)",
}


def unfit(prediction: PendingPrediction, label: Label | None) -> str | None:
    """Why `label` cannot be joined to `prediction` (a key of UNFIT_FIXES), or None."""
    predicted = prediction.label
    if prediction.regression:
        return None if is_number(label) else "not_a_number"
    kind, given = type(predicted), type(label)
    if given is kind:
        return None
    if kind is int and given is float:
        return None if label.is_integer() else "fractional"  # type: ignore[union-attr]
    return "wrong_type"


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
    # Labels that met their prediction and do not fit it (see UNFIT_FIXES): not joined, the
    # prediction waits on for a label that fits.
    invalid_labels_not_a_number: int = 0
    invalid_labels_wrong_type: int = 0
    invalid_labels_fractional: int = 0

    def __setstate__(self, state: Any) -> None:  # noqa: ANN401 - what pickle hands over
        """Counters checkpointed before one existed start it at 0."""
        slots = state[1] if isinstance(state, tuple) else state
        for f in fields(JoinCounters):
            object.__setattr__(self, f.name, slots.get(f.name, 0))

    def unfit(self) -> int:
        return (self.invalid_labels_not_a_number + self.invalid_labels_wrong_type
                + self.invalid_labels_fractional)  # fmt: skip


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
    # The same for predictions re-keyed here from other predictions partitions (written by
    # another producer's partitioner): they come a round trip behind this partition's own,
    # and a backlog's partitions are read at different speeds, so the prediction side's
    # clock is the slowest of them and this partition's own. A join of a topic of
    # `prediction_partitions` starts with every other partition as a source not heard from
    # yet (held at the first prediction's time), as it cannot know which will send. A source
    # (or this partition's own predictions) silent for SOURCE_IDLE_MS of wall clock no longer
    # counts (a producer switched to murmur2, a few records written by hand, or none ever),
    # and once none is left the one clock of scorestream's own predictions is back.
    prediction_sources: dict[int, int] = field(default_factory=dict)
    prediction_partitions: int = 1
    partition: int = 0  # this join's, which re-keys nothing to itself
    # While there are sources: this partition's own clock, and the slowest source's.
    own_clock: int = _UNHEARD
    slowest_source: int = _UNHEARD
    # When each source (-1: this partition's own) last sent, by the caller's wall clock; not
    # kept across a restart, where every source is given SOURCE_IDLE_MS afresh.
    source_heard: dict[int, int] = field(default_factory=dict)
    idle_check_at: int = 0
    # The join stage passes on what leaves unjoined: with `emitting`, each prediction that
    # expires or is evicted and each label that does is kept in `emitted` until drained.
    emitting: bool = False
    emitted: list[Unjoined] = field(default_factory=list)
    # The first unfit labels since the caller last took them, for its log.
    unfit_seen: list[Unfit] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.prediction_partitions > 1 and not self.prediction_sources:
            others = (q for q in range(self.prediction_partitions) if q != self.partition)
            self.prediction_sources = dict.fromkeys(others, _UNHEARD)

    def __setstate__(self, state: Any) -> None:  # noqa: ANN401 - what pickle hands over
        """Checkpoints written before a field existed get it on load (the expiry indexes built
        from the buffers)."""
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in slots.items():
            object.__setattr__(self, name, value)
        defaults: dict[str, Callable[[], Any]] = {
            "forwarded": dict, "forwarded_predictions": dict, "source_clocks": dict,
            "prediction_sources": dict, "unfit_seen": list, "emitted": list,
            "emitting": lambda: False, "prediction_partitions": lambda: 1,
            "partition": lambda: 0, "own_clock": lambda: _UNHEARD,
            "slowest_source": lambda: _UNHEARD,
        }  # fmt: skip
        for name, make in defaults.items():
            if not hasattr(self, name):
                object.__setattr__(self, name, make())
        self.source_heard, self.idle_check_at = {}, 0
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

    def add_prediction(
        self,
        event_id: str,
        prediction: PendingPrediction,
        source: int | None = None,
        now_ms: int = 0,
    ) -> Outcome | None:
        """`source`: the predictions partition a re-keyed prediction was first read from
        (None: read on this partition); `now_ms`: the caller's wall clock."""
        t = prediction.event_time
        if source is None and not self.prediction_sources:
            # scorestream's own predictions, all on their partition: one clock, as ever.
            if t > self.prediction_clock:
                self.prediction_clock = t
                self._advance(min(self.prediction_clock, self.label_clock))
        elif source is not None:
            self._prediction_from(source, t, now_ms)
        else:
            self._own_prediction(t, now_ms)
        if event_id in self.predictions or event_id in self.settled:
            self.counters.duplicate_predictions += 1
            return None
        waiting = self.labels.pop(event_id, None)
        if waiting is not None:
            self.label_expiry.left(waiting[1], self._label_time)
            if (reason := unfit(prediction, waiting[0])) is None:
                return self._join(event_id, prediction, *waiting)
            self._unfit(event_id, prediction, waiting[0], reason)
        if len(self.predictions) >= self.max_pending:
            evicted_id, evicted = self.predictions.popitem(last=False)
            self.prediction_expiry.left(evicted.event_time, self._prediction_time)
            self.counters.evicted_predictions += 1
            if self.emitting:
                self.emitted.append(Unjoined(evicted_id, evicted, None, None))
        self.predictions[event_id] = prediction
        self.prediction_expiry.add(event_id, prediction.event_time)
        return None

    def _own_prediction(self, t: int, now_ms: int) -> None:
        self.source_heard[-1] = now_ms
        self.own_clock = max(self.own_clock, t)
        slowest = self.slowest_source
        if slowest == _UNHEARD or now_ms >= self.idle_check_at:
            self._sources_changed(t, now_ms)
        elif min(self.own_clock, slowest) > self.prediction_clock:
            self.prediction_clock = min(self.own_clock, slowest)
            self._advance(min(self.prediction_clock, self.label_clock))

    def _prediction_from(self, source: int, event_time: int, now_ms: int) -> None:
        clocks = self.prediction_sources
        if not clocks:
            self.own_clock = self.prediction_clock  # this partition's own, so far
            self.source_heard[-1] = now_ms
        self.source_heard[source] = now_ms
        if event_time > clocks.get(source, _UNHEARD):
            clocks[source] = event_time
            self._sources_changed(event_time, now_ms)
        elif now_ms >= self.idle_check_at:
            self._sources_changed(event_time, now_ms)

    def tick(self, now_ms: int) -> bool:
        """Called now and then without a record: a source silent for SOURCE_IDLE_MS stops
        holding the clock even when nothing more arrives (the end of a bounded stream).
        True when that moved the clock (something may have expired)."""
        clocks = self.prediction_sources
        if not clocks or now_ms < self.idle_check_at or _UNHEARD in clocks.values():
            return False
        before = self.prediction_clock
        self._sources_changed(before, now_ms)
        return self.prediction_clock != before

    def _sources_changed(self, event_time: int, now_ms: int) -> None:
        clocks, heard = self.prediction_sources, self.source_heard
        if _UNHEARD in clocks.values() or self.own_clock == _UNHEARD:
            # The first prediction: those not heard from are held at its time.
            for q, c in clocks.items():
                if c == _UNHEARD:
                    clocks[q] = event_time
            if self.own_clock == _UNHEARD:
                self.own_clock = event_time
        own_live = True
        if now_ms >= self.idle_check_at:
            self.idle_check_at = now_ms + SOURCE_IDLE_MS // 4
            idle = now_ms - SOURCE_IDLE_MS
            # Not heard from since this join was made or restored: heard from now.
            for q in (-1, *clocks):
                heard.setdefault(q, now_ms)
            clocks = {q: c for q, c in clocks.items() if heard[q] >= idle}
            self.prediction_sources = clocks
            own_live = heard[-1] >= idle
        if not clocks:
            self.slowest_source, clock = _UNHEARD, self.own_clock
        else:
            self.slowest_source = clock = min(clocks.values())
            if own_live:
                clock = min(clock, self.own_clock)
        if clock > self.prediction_clock:
            self.prediction_clock = clock
            self._advance(min(self.prediction_clock, self.label_clock))

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
        prediction = self.predictions.get(event_id)
        if prediction is not None:
            if (reason := unfit(prediction, label)) is not None:
                self._unfit(event_id, prediction, label, reason)
                return None
            del self.predictions[event_id]
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

    def _unfit(
        self, event_id: str, prediction: PendingPrediction, label: Label, reason: str
    ) -> None:
        name = f"invalid_labels_{reason}"
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        if len(self.unfit_seen) < UNFIT_KEPT:
            self.unfit_seen.append(Unfit(event_id, prediction.model_name,
                                         prediction.model_version, label, reason))  # fmt: skip

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
