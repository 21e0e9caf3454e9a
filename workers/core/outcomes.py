"""The two-stage monitor's pure parts: Outcome records, a join partition and an aggregate one.

The join stage turns predictions and labels into Outcome records (one per joined pair, expired
prediction or orphan label) on the outcomes topic, keyed by model version (an orphan, which
has no version, by its event_id); the aggregate stage reads them back and keeps each version's
rolling metrics, concept drift and alerts. Each stage's state is kept per partition of what it
consumes, so a partition's state can be stored in Kafka and resumed by another instance.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from typing import Any

import msgspec

from workers.core.alerts import Alert
from workers.core.events import EpochMillis, EventId
from workers.core.label_join import (
    JoinCounters,
    LabelJoin,
    Outcome,
    Unjoined,
    is_number,
)
from workers.core.monitor import (
    BAD_RECORD,
    LABEL_DECODER,
    LabelValue,
    Misplaced,
    MonitorConfig,
    MonitorState,
    misplaced,
    pending_prediction,
    time_of,
)

JOINED, EXPIRED, ORPHAN = "joined", "expired", "orphan"


class OutcomeRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """The Outcome message (schemas/outcome.schema.json); absent fields are left out."""

    kind: str
    event_id: str
    at: int
    model_name: str | None = None
    model_version: int | None = None
    predicted: LabelValue | None = None
    score: float | None = None
    actual: LabelValue | None = None
    correct: bool | None = None
    error: float | None = None
    event_time: int | None = None
    label_time: int | None = None
    features: dict[str, Any] | None = None

    @property
    def key(self) -> bytes:
        """A version's outcomes share a partition (its metrics are one instance's); an
        orphan, which names no version, spreads by its event_id."""
        if self.model_name is None or self.model_version is None:
            return self.event_id.encode()
        return f"{self.model_name}/{self.model_version}".encode()


OUTCOME_ENCODER = msgspec.json.Encoder()
OUTCOME_DECODER = msgspec.json.Decoder(OutcomeRecord)


class StagePredictionIn(msgspec.Struct, gc=False):
    """What the join stage reads of a Prediction."""

    event_id: EventId
    model_name: str
    model_version: int
    label: LabelValue
    event_time: EpochMillis
    score: float | None = None
    probabilities: dict[str, float] | None = None
    features: dict[str, Any] | None = None


STAGE_PREDICTION_DECODER = msgspec.json.Decoder(StagePredictionIn)


def joined_record(outcome: Outcome, now_ms: int) -> OutcomeRecord:
    record = OutcomeRecord(
        JOINED, outcome.event_id, now_ms, outcome.model_name, outcome.model_version,
        outcome.predicted, outcome.score, outcome.actual, event_time=outcome.event_time,
        label_time=outcome.label_time, features=outcome.features,
    )  # fmt: skip
    if outcome.regression:
        record.error = outcome.error
    else:
        record.correct = outcome.correct
    return record


def unjoined_record(left: Unjoined, now_ms: int) -> OutcomeRecord:
    p = left.prediction
    if p is None:
        return OutcomeRecord(ORPHAN, left.event_id, now_ms, actual=left.label,
                             label_time=left.label_time)  # fmt: skip
    return OutcomeRecord(
        EXPIRED, left.event_id, now_ms, p.model_name, p.model_version, p.label, p.score,
        event_time=p.event_time, features=p.features,
    )  # fmt: skip


@dataclass(slots=True)
class JoinPartition:
    """One partition's join buffers, the counters of what it read, and how far it read
    (next offset per topic): stored together, they resume anywhere as they were."""

    join: LabelJoin
    max_time_ahead_ms: int
    offsets: dict[str, int] = field(default_factory=dict)
    invalid_predictions: int = 0
    invalid_labels: int = 0
    times_clamped: int = 0
    forward_replays: int = 0
    misplaced_predictions: int = 0

    @classmethod
    def new(cls, config: MonitorConfig, partition: int = 0) -> JoinPartition:
        join = LabelJoin(config.label_ttl_ms, config.orphan_label_ttl_ms,
                         config.pending_per_partition, emitting=True,
                         prediction_partitions=config.partitions,
                         partition=partition)  # fmt: skip
        return cls(join, config.max_time_ahead_ms)

    def _bounded(self, time_ms: int, timestamp_ms: int) -> int:
        if timestamp_ms > 0 and time_ms > timestamp_ms + self.max_time_ahead_ms:
            self.times_clamped += 1
            return timestamp_ms
        return time_ms

    def on_prediction(
        self, value: bytes | None, timestamp_ms: int, now_ms: int, place: tuple[int, int] = (0, 1)
    ) -> list[OutcomeRecord] | Misplaced:
        """A prediction read at `place` (partition, the predictions topic's partition count):
        joined here, or, not on its event_id's partition, to be re-keyed."""
        try:
            p = STAGE_PREDICTION_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_predictions += 1
            return []
        away = misplaced(p.event_id, *place)
        if away is not None:
            self.misplaced_predictions += 1
            return away
        return self._take_prediction(p, timestamp_ms, now_ms)

    def on_forwarded_prediction(
        self, value: bytes | None, timestamp_ms: int, source: tuple[int, int], now_ms: int
    ) -> list[OutcomeRecord]:
        """A prediction re-keyed onto this partition; `source` its place in the predictions
        topic: forwarded again after a restart, it is skipped."""
        if not self.join.first_forwarding(*source, prediction=True):
            self.forward_replays += 1
            return []
        try:
            p = STAGE_PREDICTION_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_predictions += 1
            return []
        return self._take_prediction(p, timestamp_ms, now_ms, source[0])

    def _take_prediction(
        self, p: StagePredictionIn, timestamp_ms: int, now_ms: int, source: int | None = None
    ) -> list[OutcomeRecord]:
        event_time = time_of(p.event_time, timestamp_ms, now_ms, self._bounded)
        pending = pending_prediction(p, event_time, score=p.score, features=p.features)
        joined = self.join.add_prediction(p.event_id, pending, source, now_ms)
        return self._records(joined, now_ms)

    def on_label(
        self, value: bytes | None, timestamp_ms: int, source: tuple[int, int], now_ms: int
    ) -> list[OutcomeRecord]:
        """A label re-keyed onto this partition; `source` its (partition, offset) in the
        labels topic: forwarded again after a restart, it is skipped, not counted twice."""
        if not self.join.first_forwarding(*source):
            self.forward_replays += 1
            return []
        try:
            label = LABEL_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_labels += 1
            return []
        label_time = time_of(label.label_time, timestamp_ms, now_ms, self._bounded)
        outcome = self.join.add_label(label.event_id, label.label, label_time, source[0])
        return self._records(outcome, now_ms)

    def tick(self, now_ms: int) -> list[OutcomeRecord] | None:
        """What expired once an idle source stopped holding the clock (None: nothing
        changed)."""
        return self._records(None, now_ms) if self.join.tick(now_ms) else None

    def _records(self, outcome: Outcome | None, now_ms: int) -> list[OutcomeRecord]:
        records = [unjoined_record(left, now_ms) for left in self.join.emitted]
        self.join.emitted.clear()
        if outcome is not None:
            if outcome.regression and outcome.error is None:
                # A label that is no number for a regressor's prediction: counted here.
                self.invalid_labels += 1
            else:
                records.append(joined_record(outcome, now_ms))
        return records

    def counters(self) -> dict[str, int]:
        out = {f.name: getattr(self.join.counters, f.name) for f in fields(JoinCounters)}
        out["pending_predictions"] = len(self.join.predictions)
        out["pending_labels"] = len(self.join.labels)
        out["invalid_predictions"] = self.invalid_predictions
        out["invalid_labels"] = self.invalid_labels + self.join.counters.unfit()
        out["times_clamped"] = self.times_clamped
        out["forward_replays"] = self.forward_replays
        out["misplaced_predictions"] = self.misplaced_predictions
        return out


@dataclass(slots=True)
class LeadChecks:
    """What the aggregate stage checks on every prediction and FeatureEvent before any label
    (prediction drift, estimated accuracy, data drift). One instance does it: the holder of
    outcomes partition 0, in whose snapshot this lives, with how far it read each of those
    topics' partitions."""

    state: MonitorState
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(slots=True)
class AggregatePartition:
    """The versions whose outcomes land on one partition of the outcomes topic: their rolling
    metrics, detectors and alert states, the stage's counters, and how far it read."""

    state: MonitorState
    offsets: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # At-least-once, a join partition resumed from its last checkpoint sends again what it
    # sent since: the latest outcomes by what they decided about (the prediction or an orphan
    # label) and event_id, so a repeat is counted, not used.
    recent: OrderedDict[str, None] | None = None
    recent_limit: int = 0
    lead: LeadChecks | None = None

    @classmethod
    def new(cls, config: MonitorConfig, dedupe: int = 0) -> AggregatePartition:
        return cls(MonitorState(config), recent=OrderedDict() if dedupe else None,
                   recent_limit=dedupe)  # fmt: skip

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def on_record(self, value: bytes | None, now_ms: int) -> list[Alert]:
        try:
            record = OUTCOME_DECODER.decode(value or b"")
        except BAD_RECORD:
            self._count("invalid_outcomes")
            return []
        if self.recent is not None:
            # What the record decided about: the prediction (joined or expired, whichever a
            # replay decides) or, for an orphan, the label alone.
            side = "label" if record.kind == ORPHAN else "prediction"
            seen = f"{side}:{record.event_id}"
            if seen in self.recent:
                self._count("duplicate_outcomes")
                return []
            self.recent[seen] = None
            if len(self.recent) > self.recent_limit:
                self.recent.popitem(last=False)
        if record.kind == ORPHAN:
            self._count("orphan_labels")
            return []
        if record.kind == EXPIRED:
            self._count("expired_without_label")
            return []
        outcome = _outcome(record)
        if outcome is None:
            self._count("invalid_outcomes")
            return []
        self._count("joined")
        if not outcome.regression and record.score is not None:
            chance = self.state.expected_correct(
                outcome.model_name, outcome.model_version, outcome.predicted, record.score
            )
            if chance is not None:
                outcome = replace(outcome, expected=chance)
        return self.state.on_outcome(outcome, now_ms)


def _outcome(record: OutcomeRecord) -> Outcome | None:
    """The joined pair a record describes; None when it lacks what the metrics need."""
    if (
        record.kind != JOINED
        or record.model_name is None
        or record.model_version is None
        or record.predicted is None
        or record.actual is None
    ):
        return None
    regression = record.error is not None
    if regression and not (is_number(record.predicted) and is_number(record.actual)):
        return None
    if not regression and record.correct is None:
        return None
    return Outcome(
        record.event_id, record.model_name, record.model_version, record.predicted,
        record.actual, record.event_time or 0, None, regression, label_time=record.label_time,
    )  # fmt: skip


def sum_counters(parts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total
