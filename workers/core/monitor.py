"""The monitor's whole state and how each record changes it (pure: time is passed in).

Join buffers are kept per partition: predictions are keyed by event_id with the Java clients'
partitioner (murmur2) and labels, whatever partitioner their producers used, are re-keyed the
same way through the monitor's repartition topic (as many partitions as predictions), so an
event's prediction and label share a partition number, and a partition's buffers can be
checkpointed and handed over on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from workers.core.alerts import (
    PREDICTION_DRIFT,
    Alert,
    AlertRules,
    ErrorAlerts,
    FeatureAlerts,
    VersionAlerts,
    estimate_alert,
)
from workers.core.calibrated_drift import ReferenceDrift, UnivariateDrift
from workers.core.drift import (
    DEFAULT_DETECTOR,
    DEFAULT_ERROR_DETECTOR,
    ConceptDrift,
    ErrorDrift,
    FeatureDrift,
)
from workers.core.estimation import (
    CONFIDENCE,
    Calibration,
    EstimateCheck,
    EstimatedPerformance,
    expected,
)
from workers.core.events import EpochMillis, EventId
from workers.core.kind_drift import KindDrift
from workers.core.label_join import (
    JoinCounters,
    LabelJoin,
    Outcome,
    PendingPrediction,
    is_number,
)
from workers.core.partitioning import partition_of
from workers.core.performance import RollingError, RollingPerformance

# A class, or a regressor's predicted / true value.
LabelValue = str | int | bool | float


class PredictionIn(msgspec.Struct, gc=False):
    """What the monitor reads of a Prediction (other fields are ignored)."""

    event_id: EventId
    model_name: str
    model_version: int
    label: LabelValue
    event_time: EpochMillis
    probabilities: dict[str, float] | None = None


class LabelIn(msgspec.Struct, gc=False):
    event_id: EventId
    label: LabelValue
    label_time: EpochMillis | None = None


class LabelKey(msgspec.Struct, gc=False):
    """What a label is re-keyed by (the rest is checked when it is joined)."""

    event_id: EventId


PREDICTION_DECODER = msgspec.json.Decoder(PredictionIn)
BAD_RECORD = (msgspec.DecodeError, ValueError, RecursionError)
LABEL_DECODER = msgspec.json.Decoder(LabelIn)
LABEL_KEY_DECODER = msgspec.json.Decoder(LabelKey)


class Misplaced(NamedTuple):
    """A prediction read from another partition than its event_id's murmur2 one (written by
    another producer's partitioner): re-keyed by `key` onto the repartition topic, it is
    checked and joined where its label goes, and not here."""

    key: bytes


def misplaced(event_id: str, partition: int, partitions: int) -> Misplaced | None:
    if partitions <= 1 or partition_of(event_id, partitions) == partition:
        return None
    return Misplaced(event_id.encode())


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    window: int = 1000
    label_ttl_ms: int = 3_600_000
    orphan_label_ttl_ms: int = 600_000
    # Most predictions (and, apart, labels) waiting in this monitor, over all its partitions.
    max_pending: int = 1_000_000
    time_window_ms: int = 60_000
    detector: str = DEFAULT_DETECTOR
    error_detector: str = DEFAULT_ERROR_DETECTOR
    rules: AlertRules = field(default_factory=AlertRules)
    # How many partitions the join buffers are spread over (the predictions topic's count).
    partitions: int = 1
    # An event_time (label_time) further than this ahead of its record's timestamp is taken
    # to be the timestamp: one event stamped in microseconds, or in 2100, must not move the
    # join's clock (and everything's expiry) into the future.
    max_time_ahead_ms: int = 3_600_000
    # A label larger is invalid: it bounds a pending label's memory and keeps its re-keyed
    # copy (with its header) under any broker's message size limit (1 MiB by default).
    max_label_bytes: int = 65_536
    # Data and prediction drift: events in the window of means, missing rates and category
    # frequencies, and in that of numeric distributions and the multivariate check.
    feature_window: int = 200
    shape_window: int = 500

    @property
    def pending_per_partition(self) -> int:
        return max(1, -(-self.max_pending // self.partitions))


@dataclass(slots=True)
class VersionState:
    performance: RollingPerformance
    drift: ConceptDrift
    alerts: VersionAlerts


@dataclass(slots=True)
class RegressorState:
    errors: RollingError
    drift: ErrorDrift
    alerts: ErrorAlerts


@dataclass(frozen=True, slots=True)
class VersionReference:
    """What a version's predictions are compared with, from its drift reference."""

    calibration: Calibration | None
    score_kind: str | None  # positive_probability, predicted_value or predicted_class
    scores: Sequence[Any] | npt.NDArray[np.float64] | None
    # A binary classifier's positive class as its probabilities name it (its second class).
    positive: str | None = None


class ReferenceLookup:
    """Finds a model version's reference. This one knows none: it is what a checkpoint
    restores (a lookup reads the model folder, which is no state), until the worker hands
    its live one back."""

    def find(self, model_name: str, model_version: int) -> VersionReference | None:  # noqa: ARG002
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReferenceLookup, ())


@dataclass(slots=True)
class PredictionChecks:
    """A version's checks on its predictions alone, before any label: the drift of its scores
    against its scores on the reference, and its accuracy estimated from probabilities."""

    drift: UnivariateDrift | None
    score_kind: str | None
    alerts: FeatureAlerts
    calibration: Calibration | None
    estimate: EstimatedPerformance
    # Realized beside estimated accuracy over the same joined outcomes.
    check: EstimateCheck
    positive: str | None = None


@dataclass(slots=True)
class MonitorState:
    config: MonitorConfig
    joins: dict[int, LabelJoin] = field(default_factory=dict)
    versions: dict[tuple[str, int], VersionState] = field(default_factory=dict)
    regressors: dict[tuple[str, int], RegressorState] = field(default_factory=dict)
    invalid_predictions: int = 0
    invalid_labels: int = 0
    feature_drift: FeatureDrift | KindDrift | ReferenceDrift | None = None
    feature_alerts: FeatureAlerts | None = None
    alerts_raised: dict[str, int] = field(default_factory=dict)
    times_clamped: int = 0
    forward_replays: int = 0
    misplaced_predictions: int = 0
    references: ReferenceLookup = field(default_factory=ReferenceLookup)
    # None: a version without a reference (looked up once).
    prediction_checks: dict[tuple[str, int], PredictionChecks | None] = field(default_factory=dict)

    def join_for(self, partition: int) -> LabelJoin:
        join = self.joins.get(partition)
        if join is None:
            c = self.config
            # The bound is per monitor; split over the partitions it may hold.
            join = self.joins[partition] = LabelJoin(
                c.label_ttl_ms,
                c.orphan_label_ttl_ms,
                c.pending_per_partition,
                prediction_partitions=c.partitions,
                partition=partition,
            )
        return join

    def adopt(self, partition: int, join: LabelJoin) -> None:
        """A partition's restored buffers, bounded as this monitor's settings say now."""
        join.max_pending = self.config.pending_per_partition
        self.joins[partition] = join

    def _bounded(self, time_ms: int, timestamp_ms: int) -> int:
        """`time_ms`, or the record's timestamp when the former is too far ahead of it."""
        if timestamp_ms > 0 and time_ms > timestamp_ms + self.config.max_time_ahead_ms:
            self.times_clamped += 1
            return timestamp_ms
        return time_ms

    def on_prediction(
        self, partition: int, value: bytes | None, now_ms: int, timestamp_ms: int = 0
    ) -> list[Alert] | Misplaced:
        """A prediction read from the predictions topic: checked and joined here, or, read
        from another partition than its event_id's, to be re-keyed (see `Misplaced`)."""
        try:
            p = PREDICTION_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_predictions += 1
            return []
        partitions = self.config.partitions
        # Inline: this runs once per prediction.
        if partitions > 1 and partition_of(p.event_id, partitions) != partition:
            self.misplaced_predictions += 1
            return Misplaced(p.event_id.encode())
        return self._take_prediction(partition, p, now_ms, timestamp_ms)

    def _take_prediction(
        self,
        partition: int,
        p: PredictionIn,
        now_ms: int,
        timestamp_ms: int,
        source: int | None = None,
    ) -> list[Alert]:
        event_time = time_of(p.event_time, timestamp_ms, now_ms, self._bounded)
        alerts: list[Alert] = []
        chance = None
        checks = self._checks_for(p.model_name, p.model_version)
        if checks is not None:
            chance = self._on_checked_prediction(checks, p, now_ms, alerts)
            self._count(alerts)
        pending = pending_prediction(p, event_time, chance)
        outcome = self.join_for(partition).add_prediction(p.event_id, pending, source, now_ms)
        if outcome is not None:
            alerts += self.on_outcome(outcome, now_ms)
        return alerts

    def _checks_for(self, model_name: str, model_version: int) -> PredictionChecks | None:
        key = (model_name, model_version)
        if key in self.prediction_checks:
            return self.prediction_checks[key]
        reference = self.references.find(model_name, model_version)
        checks = None
        if reference is not None:
            c = self.config
            drift = None
            if reference.scores is not None and reference.score_kind is not None:
                numeric = reference.score_kind != "predicted_class"
                drift = UnivariateDrift(
                    ["prediction"], [numeric], [reference.scores],
                    window=c.feature_window, shape_window=c.shape_window,
                )  # fmt: skip
            checks = PredictionChecks(
                drift, reference.score_kind, FeatureAlerts(model_name, model_version),
                reference.calibration, EstimatedPerformance(c.window), EstimateCheck(c.window),
                reference.positive,
            )  # fmt: skip
        self.prediction_checks[key] = checks
        return checks

    def _on_checked_prediction(
        self, checks: PredictionChecks, p: PredictionIn, now_ms: int, alerts: list[Alert]
    ) -> float | None:
        """Prediction drift and the estimate; the prediction's chance of being right."""
        key = (p.model_name, p.model_version)
        rules = self.config.rules
        probabilities = None if p.probabilities is None else list(p.probabilities.values())
        if checks.drift is not None:
            found = checks.drift.update((_score(checks.score_kind, p.label, probabilities),))
            if found:
                alerts += checks.alerts.on_moved(
                    rules, found, checks.drift.seen, self._joined(key), now_ms,
                    detector=PREDICTION_DRIFT,
                )  # fmt: skip
        if checks.calibration is None or probabilities is None:
            return None
        chance = expected(checks.calibration, probabilities)
        if chance is None:
            return None
        checks.estimate.add(chance)
        alert = estimate_alert(
            checks.estimate, rules, model_name=p.model_name, model_version=p.model_version,
            joined=self._joined(key), now_ms=now_ms,
        )  # fmt: skip
        if alert is not None:
            alerts.append(alert)
        return chance.correct

    def check_prediction(self, value: bytes | None, now_ms: int) -> list[Alert]:
        """Prediction drift and the estimate alone, without joining (the aggregate stage's
        share of a prediction: the join stage joins it)."""
        try:
            p = PREDICTION_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_predictions += 1
            return []
        alerts: list[Alert] = []
        checks = self._checks_for(p.model_name, p.model_version)
        if checks is not None:
            self._on_checked_prediction(checks, p, now_ms, alerts)
            self._count(alerts)
        return alerts

    def expected_correct(
        self, model_name: str, model_version: int, predicted: LabelValue, score: float | None
    ) -> float | None:
        """A joined prediction's estimated chance of being right, from its score (the
        probability of its class) alone: what the aggregate stage has of it."""
        checks = self._checks_for(model_name, model_version)
        if checks is None or checks.calibration is None or score is None:
            return None
        if checks.calibration.kind == CONFIDENCE:
            chance = expected(checks.calibration, [score])
        else:
            positive = getattr(checks, "positive", None)
            if positive is None:
                return None
            p = score if str(predicted) == positive else 1.0 - score
            chance = expected(checks.calibration, [1.0 - p, p])
        return None if chance is None else chance.correct

    def _joined(self, key: tuple[str, int]) -> int:
        state = self.versions.get(key)
        if state is not None:
            return state.performance.joined
        regressor = self.regressors.get(key)
        return 0 if regressor is None else regressor.errors.joined

    def label_key(self, value: bytes | None) -> bytes | None:
        """The event_id a label is re-keyed by, or None for a label that is no Label (counted
        here, where it is first read)."""
        key = label_key(value, self.config.max_label_bytes)
        if key is None:
            self.invalid_labels += 1
        return key

    def on_forwarded(  # noqa: PLR0913 - a record and where it was first read
        self,
        partition: int,
        value: bytes | None,
        timestamp_ms: int,
        source: tuple[int, int],
        now_ms: int,
        *,
        prediction: bool = False,
    ) -> list[Alert]:
        """A label (or a re-keyed prediction) from the repartition topic; `source` is its
        (partition, offset) in the topic it was first read from. Forwarded again after a
        restart, it is skipped, not counted twice."""
        if not self.join_for(partition).first_forwarding(*source, prediction=prediction):
            self.forward_replays += 1
            return []
        if not prediction:
            return self.on_label(partition, value, timestamp_ms, now_ms, source=source[0])
        try:
            p = PREDICTION_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_predictions += 1
            return []
        return self._take_prediction(partition, p, now_ms, timestamp_ms, source[0])

    def on_label(
        self,
        partition: int,
        value: bytes | None,
        timestamp_ms: int,
        now_ms: int,
        source: int | None = None,
    ) -> list[Alert]:
        try:
            label = LABEL_DECODER.decode(value or b"")
        except BAD_RECORD:
            self.invalid_labels += 1
            return []
        label_time = time_of(label.label_time, timestamp_ms, now_ms, self._bounded)
        outcome = self.join_for(partition).add_label(
            label.event_id, label.label, label_time, source
        )
        return [] if outcome is None else self.on_outcome(outcome, now_ms)

    def _on_regression_outcome(self, outcome: Outcome, now_ms: int) -> list[Alert]:
        error = outcome.error
        if error is None:  # a label that is no number, for a regressor's prediction
            self.invalid_labels += 1
            return []
        key = (outcome.model_name, outcome.model_version)
        state = self.regressors.get(key)
        if state is None:
            c = self.config
            state = self.regressors[key] = RegressorState(
                RollingError(c.window),
                ErrorDrift(c.error_detector),
                ErrorAlerts(outcome.model_name, outcome.model_version),
            )
        errors = state.errors
        errors.add(error)
        drifted = state.drift.update(abs_error=abs(error))
        if not state.alerts.may_fire(
            self.config.rules,
            drifted=drifted,
            window_size=len(errors.recent),
            window_mae=errors.window_mae_fast(),
            reference_mae=errors.reference_mae,
        ):
            return []
        alerts = state.alerts.on_outcome(
            self.config.rules,
            errors.snapshot(),
            drifted=drifted,
            detector=self.config.error_detector,
            now_ms=now_ms,
        )
        self._count(alerts)
        return alerts

    def on_outcome(self, outcome: Outcome, now_ms: int) -> list[Alert]:
        if outcome.regression:
            return self._on_regression_outcome(outcome, now_ms)
        key = (outcome.model_name, outcome.model_version)
        state = self.versions.get(key)
        if state is None:
            c = self.config
            state = self.versions[key] = VersionState(
                RollingPerformance(c.window, c.time_window_ms),
                ConceptDrift(c.detector),
                VersionAlerts(outcome.model_name, outcome.model_version),
            )
        performance = state.performance
        performance.add(outcome)
        if outcome.expected is not None:
            checks = self.prediction_checks.get(key)
            if checks is not None:
                checks.check.add(outcome.expected, outcome.correct)
        drifted = state.drift.update(correct=outcome.correct)
        if not state.alerts.may_fire(
            self.config.rules,
            drifted=drifted,
            window_size=len(performance.recent),
            window_correct=performance.correct,
        ):
            return []
        alerts = state.alerts.on_outcome(
            self.config.rules,
            state.performance.snapshot(time_windows=False),
            drifted=drifted,
            detector=self.config.detector,
            now_ms=now_ms,
        )
        self._count(alerts)
        return alerts

    def on_features(self, row: tuple[Any, ...], now_ms: int) -> list[Alert]:
        """A FeatureEvent's features (manifest order) through the data-drift checks."""
        if self.feature_drift is None or self.feature_alerts is None:
            return []
        moved = self.feature_drift.update(row)
        if not moved:  # the usual case: nothing to count or raise for this event
            return []
        joined = sum(
            s.performance.joined
            for (name, _), s in self.versions.items()
            if name == self.feature_alerts.model_name
        ) + sum(
            s.errors.joined
            for (name, _), s in self.regressors.items()
            if name == self.feature_alerts.model_name
        )
        alerts = self.feature_alerts.on_moved(
            self.config.rules,
            moved,
            self.feature_drift.seen,
            joined,
            now_ms,
        )
        self._count(alerts)
        return alerts

    def _count(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.alerts_raised[alert.alert] = self.alerts_raised.get(alert.alert, 0) + 1

    def counters(self) -> dict[str, int]:
        total = JoinCounters()
        for join in self.joins.values():
            for f in fields(JoinCounters):
                setattr(total, f.name, getattr(total, f.name) + getattr(join.counters, f.name))
        result = {f.name: getattr(total, f.name) for f in fields(JoinCounters)}
        result["pending_predictions"] = sum(len(j.predictions) for j in self.joins.values())
        result["pending_labels"] = sum(len(j.labels) for j in self.joins.values())
        result["invalid_predictions"] = self.invalid_predictions
        result["invalid_labels"] = self.invalid_labels + total.unfit()
        result["times_clamped"] = self.times_clamped
        result["forward_replays"] = self.forward_replays
        result["misplaced_predictions"] = self.misplaced_predictions
        return result

    def metrics(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (name, version), state in sorted(self.versions.items()):
            snap = state.performance.snapshot()
            out[f"{name}/v{version}"] = {
                "joined": snap.joined,
                "window_accuracy": snap.window_accuracy,
                "window_size": snap.window_size,
                "precision": snap.precision,
                "recall": snap.recall,
                "f1": snap.f1,
                # The version's first `window` outcomes: what alerts call baseline_accuracy.
                "baseline_accuracy": snap.reference_accuracy,
                "last_time_window_accuracy": (
                    snap.time_window_accuracy[max(snap.time_window_accuracy)]
                    if snap.time_window_accuracy
                    else None
                ),
            }
        for (name, version), regressor in sorted(self.regressors.items()):
            errors = regressor.errors.snapshot()
            out[f"{name}/v{version}"] = {
                "joined": errors.joined,
                "window_size": errors.window_size,
                "window_mae": errors.window_mae,
                "window_rmse": errors.window_rmse,
                "window_mean_error": errors.window_mean_error,
                # The version's first `window` outcomes: what alerts call baseline_mae.
                "baseline_mae": errors.reference_mae,
            }
        for (name, version), checks in sorted(self.prediction_checks.items()):
            both = None if checks is None else checks.check.snapshot()
            if checks is None or (not checks.estimate.size and both is None):
                continue
            entry = out.setdefault(f"{name}/v{version}", {"joined": 0})
            if checks.estimate.size:
                entry["estimated_accuracy"] = checks.estimate.accuracy()
                entry["estimated_f1"] = checks.estimate.f1()
                entry["estimated_window_size"] = checks.estimate.size
            if both is not None:
                # Over the same joined outcomes: what was estimated, what came true.
                entry["estimated_accuracy_joined"], entry["realized_accuracy_joined"] = both
                entry["estimation_gap"] = both[1] - both[0]
        return out


def _score(kind: str | None, label: LabelValue, probabilities: list[float] | None) -> Any:  # noqa: ANN401 - a number or a class
    """What prediction drift follows: the positive class's probability, a regressor's value,
    or the predicted class."""
    if kind == "positive_probability":
        return probabilities[1] if probabilities is not None and len(probabilities) == 2 else None
    if kind == "predicted_value":
        return float(label) if is_number(label) else None
    return label


class PredictionFields(Protocol):
    """What a decoded Prediction has that a pending one is made of."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> int: ...
    @property
    def label(self) -> LabelValue: ...
    @property
    def probabilities(self) -> dict[str, float] | None: ...


def pending_prediction(
    p: PredictionFields,
    event_time: int,
    expected: float | None = None,
    score: float | None = None,
    features: dict[str, Any] | None = None,
) -> PendingPrediction:
    """A decoded Prediction as it waits for its label."""
    positive = None
    if p.probabilities is not None and len(p.probabilities) == 2:
        # Written in the model's class order: the positive class is its second
        # (classes_[1]), as for scikit-learn's binary metrics. Not the larger string:
        # for classes [9, 10] that would be "9".
        _, positive = p.probabilities
    # A regressor's prediction: a fractional number (a float, as infer writes every
    # regressor's value, 3.0 included) and no class probabilities. A classifier's class is
    # a string, an integer or a boolean.
    regression = p.probabilities is None and type(p.label) is float
    return PendingPrediction(p.model_name, p.model_version, p.label, event_time, positive,
                             regression, expected, score, features)  # fmt: skip


def label_error(value: bytes | None) -> str:
    """Why `value` is no Label, for a log line."""
    try:
        LABEL_DECODER.decode(value or b"")
    except BAD_RECORD as exc:
        return str(exc)[:200]
    return "a Label"


def label_key(value: bytes | None, max_bytes: int) -> bytes | None:
    """The event_id a label is re-keyed by; None for a label that is no Label (or is larger
    than `max_bytes`)."""
    if value is not None and len(value) > max_bytes:
        return None
    try:
        return LABEL_KEY_DECODER.decode(value or b"").event_id.encode()
    except BAD_RECORD:
        return None


def time_of(
    time_ms: int | None, timestamp_ms: int, now_ms: int, bounded: Callable[[int, int], int]
) -> int:
    """An event_time or label_time, bounded by its record's timestamp, itself bounded by the
    monitor's own clock (a producer's CreateTime in microseconds must not pin the join's clock
    for good); the record's timestamp when the event carries no time."""
    record_ms = bounded(timestamp_ms, now_ms)
    return record_ms if time_ms is None else bounded(time_ms, record_ms)
