"""When to raise an alert: hysteresis for accuracy, cooldowns for drift (pure)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from workers.core.calibrated_drift import Finding
from workers.core.drift import MovedFeature
from workers.core.estimation import EstimatedPerformance
from workers.core.kind_drift import DriftedFeature
from workers.core.performance import ErrorSnapshot, Snapshot

DRIFT_DETECTED = "drift_detected"
ACCURACY_BELOW_THRESHOLD = "accuracy_below_threshold"
ACCURACY_RECOVERED = "accuracy_recovered"
FEATURE_DRIFT = "feature_drift"
ERROR_ABOVE_THRESHOLD = "error_above_threshold"
ERROR_RECOVERED = "error_recovered"
ESTIMATED_ACCURACY_BELOW_THRESHOLD = "estimated_accuracy_below_threshold"
ALERT_NAMES = (
    DRIFT_DETECTED, ACCURACY_BELOW_THRESHOLD, ACCURACY_RECOVERED, FEATURE_DRIFT,
    ERROR_ABOVE_THRESHOLD, ERROR_RECOVERED, ESTIMATED_ACCURACY_BELOW_THRESHOLD,
)  # fmt: skip
# feature_drift's detector: checks calibrated on a version's reference (its features, or its
# predictions' scores), or, for versions registered without one, the training summary's.
CALIBRATED = "calibrated_reference"
PREDICTION_DRIFT = "prediction_drift"
# Findings an alert lists, the furthest over their thresholds first.
TOP_FINDINGS = 5


class Alert(msgspec.Struct, omit_defaults=True):
    alert: str
    severity: str
    model_name: str
    model_version: int
    joined: int
    at: int
    detector: str | None = None
    window_accuracy: float | None = None
    baseline_accuracy: float | None = None
    window_mae: float | None = None
    baseline_mae: float | None = None
    threshold_mae: float | None = None
    # Data drift: the method, statistic and threshold of the check furthest over its line.
    method: str | None = None
    statistic: float | None = None
    threshold: float | None = None
    # Estimated from probabilities alone (CBPE) over the version's last --window predictions.
    estimated_accuracy: float | None = None
    estimated_f1: float | None = None
    features: dict[str, dict[str, Any]] | None = None

    def fields(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


# A drifted feature's statistics that describe the shift without quoting the data's values.
_VALUE_FREE_STATISTICS = frozenset(
    {"shift_sigma", "z", "check", "chi2", "threshold", "total_variation", "unseen_share",
     "train_missing_rate", "live_missing_rate", "values_not_constant", "method", "statistic",
     "reference_tail_share", "live_tail_share", "reference_missing_rate", "contributions",
     "components", "reference_error"}
)  # fmt: skip


def redacted(alert: Alert) -> Alert:
    """The alert without the statistics that quote feature values (training and live means)."""
    if alert.features is None:
        return alert
    kept = {
        name: {k: v for k, v in stats.items() if k in _VALUE_FREE_STATISTICS}
        for name, stats in alert.features.items()
    }
    return msgspec.structs.replace(alert, features=kept)


@dataclass(frozen=True, slots=True)
class AlertRules:
    accuracy_threshold: float = 0.8
    # No accuracy verdict before this many outcomes of a version are in its window.
    min_outcomes: int = 100
    # Recovered only at threshold + margin, so accuracy hovering at the line does not flap.
    recover_margin: float = 0.02
    # Outcomes (concept drift) or feature events (data drift) before the same alert again.
    drift_cooldown: int = 1000
    # Regressors: window MAE above this is an alert (--max-mae); None: above
    # `mae_ratio` x the version's reference MAE (its first window of outcomes).
    max_mae: float | None = None
    mae_ratio: float = 1.5
    # Recovered only at or below this share of the threshold, so the MAE does not flap.
    mae_recover_ratio: float = 0.9

    def mae_threshold(self, reference_mae: float | None) -> float | None:
        if self.max_mae is not None:
            return self.max_mae
        return None if reference_mae is None else self.mae_ratio * reference_mae


def _version_alert(  # noqa: PLR0913 - the fields every alert has, then its kind's
    state: VersionAlerts | ErrorAlerts,
    joined: int,
    now_ms: int,
    name: str,
    severity: str,
    *,
    detector: str | None = None,
    **metrics: float | None,
) -> Alert:
    """An alert about one model version, with the metrics its kind reports."""
    return Alert(
        name, severity, model_name=state.model_name, model_version=state.model_version,
        joined=joined, at=now_ms, detector=detector, **metrics,  # type: ignore[arg-type]
    )  # fmt: skip


def _cooled_down(state: VersionAlerts | ErrorAlerts, rules: AlertRules, joined: int) -> bool:
    """Whether a drift alert may fire again (`--drift-cooldown` outcomes after the last one);
    when it may, the cooldown starts over from `joined`."""
    last = state.last_drift_at_joined
    if last is not None and joined - last < rules.drift_cooldown:
        return False
    state.last_drift_at_joined = joined
    return True


@dataclass(slots=True)
class VersionAlerts:
    """Alert state of one model version: whether it is in a low-accuracy episode, cooldowns."""

    model_name: str
    model_version: int
    below: bool = False
    last_drift_at_joined: int | None = None

    def may_fire(
        self, rules: AlertRules, *, drifted: bool, window_size: int, window_correct: int
    ) -> bool:
        """Cheap test run per outcome: can `on_outcome` raise anything now?"""
        if drifted:
            return True
        if window_size < rules.min_outcomes:
            return False
        accuracy = window_correct / window_size
        if self.below:
            return accuracy >= rules.accuracy_threshold + rules.recover_margin - 1e-9
        return accuracy < rules.accuracy_threshold

    def on_outcome(
        self, rules: AlertRules, snap: Snapshot, *, drifted: bool, detector: str, now_ms: int
    ) -> list[Alert]:
        alerts = []
        alert = functools.partial(
            _version_alert, self, snap.joined, now_ms,
            window_accuracy=snap.window_accuracy, baseline_accuracy=snap.reference_accuracy,
        )  # fmt: skip

        if drifted and _cooled_down(self, rules, snap.joined):
            alerts.append(alert(DRIFT_DETECTED, "warning", detector=detector))
        accuracy = snap.window_accuracy
        if accuracy is not None and snap.window_size >= rules.min_outcomes:
            if not self.below and accuracy < rules.accuracy_threshold:
                self.below = True
                alerts.append(alert(ACCURACY_BELOW_THRESHOLD, "critical"))
            # The epsilon keeps 0.8 + 0.02 == 0.82 true in binary floating point.
            elif self.below and accuracy >= rules.accuracy_threshold + rules.recover_margin - 1e-9:
                self.below = False
                alerts.append(alert(ACCURACY_RECOVERED, "warning"))
        return alerts


@dataclass(slots=True)
class FeatureAlerts:
    model_name: str
    model_version: int
    last_at_seen: int | None = None

    def on_moved(  # noqa: PLR0913 - what moved and when, then how to name the detector
        self,
        rules: AlertRules,
        moved: Sequence[MovedFeature | DriftedFeature | Finding],
        seen: int,
        joined: int,
        now_ms: int,
        *,
        detector: str | None = None,
    ) -> list[Alert]:
        if not moved:
            return []
        if self.last_at_seen is not None and seen - self.last_at_seen < rules.drift_cooldown:
            return []
        self.last_at_seen = seen
        top = moved[0] if isinstance(moved[0], Finding) else None
        if detector is None:
            detector = (
                CALIBRATED if top is not None
                else "per_kind" if any(isinstance(m, DriftedFeature) for m in moved)
                else "mean_z_test"
            )  # fmt: skip
        return [
            Alert(
                FEATURE_DRIFT,
                "warning",
                model_name=self.model_name,
                model_version=self.model_version,
                joined=joined,
                at=now_ms,
                detector=detector,
                method=None if top is None else top.method,
                statistic=None if top is None else round(top.statistic, 6),
                threshold=None if top is None else round(top.threshold, 6),
                features=_described(moved[:TOP_FINDINGS] if top is not None else moved),
            )
        ]


def _described(
    moved: Sequence[MovedFeature | DriftedFeature | Finding],
) -> dict[str, dict[str, Any]]:
    features: dict[str, dict[str, Any]] = {}
    for m in moved:
        if isinstance(m, MovedFeature):
            features[m.name] = {
                "shift_sigma": round(m.shift_sigma, 4),
                "train_mean": m.train_mean,
                "live_mean": m.live_mean,
                "z": round(m.z, 2),
            }
            continue
        if isinstance(m, Finding):
            key = m.feature if m.feature not in features else f"{m.feature} ({m.check})"
            features[key] = {"check": m.check, "method": m.method,
                             "statistic": round(m.statistic, 6),
                             "threshold": round(m.threshold, 6), **m.stats}  # fmt: skip
            continue
        key = m.name if m.name not in features else f"{m.name} ({m.check})"
        features[key] = {"check": m.check, **m.stats}
    return features


def estimate_alert(  # noqa: PLR0913 - the version, then what it is judged by
    estimate: EstimatedPerformance,
    rules: AlertRules,
    *,
    model_name: str,
    model_version: int,
    joined: int,
    now_ms: int,
) -> Alert | None:
    """`estimated_accuracy_below_threshold` when the estimate falls under the threshold; it
    re-arms once the estimate is back at threshold + margin (no alert for that: the labels'
    accuracy_recovered says it with certainty)."""
    accuracy = estimate.accuracy()
    if accuracy is None or estimate.size < rules.min_outcomes:
        return None
    if estimate.below:
        if accuracy >= rules.accuracy_threshold + rules.recover_margin - 1e-9:
            estimate.below = False
        return None
    if accuracy >= rules.accuracy_threshold:
        return None
    estimate.below = True
    return Alert(
        ESTIMATED_ACCURACY_BELOW_THRESHOLD, "critical", model_name=model_name,
        model_version=model_version, joined=joined, at=now_ms, detector="cbpe",
        method="cbpe", statistic=round(accuracy, 6), threshold=rules.accuracy_threshold,
        estimated_accuracy=round(accuracy, 6), estimated_f1=estimate.f1(),
    )  # fmt: skip


@dataclass(slots=True)
class ErrorAlerts:
    """Alert state of one regressor version: whether its MAE is in a high episode, cooldown."""

    model_name: str
    model_version: int
    above: bool = False
    last_drift_at_joined: int | None = None

    def may_fire(
        self, rules: AlertRules, *, drifted: bool, window_size: int, window_mae: float | None,
        reference_mae: float | None,
    ) -> bool:  # fmt: skip
        """Cheap test run per outcome: can `on_outcome` raise anything now?"""
        if drifted:
            return True
        threshold = rules.mae_threshold(reference_mae)
        if threshold is None or window_mae is None or window_size < rules.min_outcomes:
            return False
        if self.above:
            # A margin over the running sum's round-off: the exact test follows.
            return window_mae <= threshold * rules.mae_recover_ratio * (1 + 1e-9)
        return window_mae > threshold * (1 - 1e-9)

    def on_outcome(
        self, rules: AlertRules, snap: ErrorSnapshot, *, drifted: bool, detector: str, now_ms: int
    ) -> list[Alert]:
        threshold = rules.mae_threshold(snap.reference_mae)
        alerts = []
        alert = functools.partial(
            _version_alert, self, snap.joined, now_ms, window_mae=snap.window_mae,
            baseline_mae=snap.reference_mae, threshold_mae=threshold,
        )  # fmt: skip

        if drifted and _cooled_down(self, rules, snap.joined):
            alerts.append(alert(DRIFT_DETECTED, "warning", detector=detector))
        mae = snap.window_mae
        if threshold is not None and mae is not None and snap.window_size >= rules.min_outcomes:
            if not self.above and mae > threshold:
                self.above = True
                alerts.append(alert(ERROR_ABOVE_THRESHOLD, "critical"))
            elif self.above and mae <= threshold * rules.mae_recover_ratio:
                self.above = False
                alerts.append(alert(ERROR_RECOVERED, "warning"))
        return alerts
