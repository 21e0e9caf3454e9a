"""What the monitor says of a version before its labels come: estimated accuracy (CBPE) and
prediction drift, then realized beside estimated once the labels are in."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from workers.core.alerts import (
    ESTIMATED_ACCURACY_BELOW_THRESHOLD,
    FEATURE_DRIFT,
    PREDICTION_DRIFT,
    Alert,
    AlertRules,
)
from workers.core.estimation import fit_calibration
from workers.core.monitor import (
    Misplaced,
    MonitorConfig,
    MonitorState,
    ReferenceLookup,
    VersionReference,
)

pytestmark = pytest.mark.unit


def taken(result: list[Alert] | Misplaced) -> list[Alert]:
    assert isinstance(result, list)  # one partition: no prediction is misplaced
    return result


class Lookup(ReferenceLookup):
    """Version 1 of "churn" has a reference: overconfident probabilities, calibrated."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        p = rng.random(20_000)
        truth = (rng.random(20_000) < 0.5 + (p - 0.5) / 2).astype(int)
        self.calibration = fit_calibration(np.stack([1 - p, p], axis=1), truth.tolist())
        self.scores = p

    def find(self, model_name: str, model_version: int) -> VersionReference | None:
        if (model_name, model_version) != ("churn", 1):
            return None
        return VersionReference(self.calibration, "positive_probability", self.scores)


def prediction(i: int, p: float, version: int = 1) -> bytes:
    body = {"event_id": f"e{i}", "model_name": "churn", "model_version": version,
            "label": int(p > 0.5), "event_time": 1000 + i,
            "probabilities": {"0": 1 - p, "1": p}}  # fmt: skip
    return json.dumps(body).encode()


def label(i: int, value: int) -> bytes:
    return json.dumps({"event_id": f"e{i}", "label": value, "label_time": 2000 + i}).encode()


def state() -> MonitorState:
    config = MonitorConfig(window=1000, rules=AlertRules(accuracy_threshold=0.7))
    return MonitorState(config, references=Lookup())


def test_estimates_are_published_before_any_label_and_compared_when_labels_come() -> None:
    monitor = state()
    rng = np.random.default_rng(1)
    p = rng.random(3000)
    for i, value in enumerate(p.tolist()):
        monitor.on_prediction(0, prediction(i, value), now_ms=0)
    before = monitor.metrics()["churn/v1"]
    assert before["joined"] == 0
    # Uniform probabilities, relation 0.5 + (p - 0.5) / 2: the true accuracy is 0.625.
    assert before["estimated_accuracy"] == pytest.approx(0.625, abs=0.03)
    assert 0 < before["estimated_f1"] < 1
    assert "estimation_gap" not in before
    truth = rng.random(3000) < 0.5 + (p - 0.5) / 2
    for i, actual in enumerate(truth.tolist()):
        monitor.on_label(0, label(i, int(actual)), 0, now_ms=0)
    after = monitor.metrics()["churn/v1"]
    assert after["joined"] == 3000
    assert after["realized_accuracy_joined"] == after["window_accuracy"]
    assert abs(after["estimation_gap"]) < 0.05
    assert after["estimation_gap"] == pytest.approx(
        after["realized_accuracy_joined"] - after["estimated_accuracy_joined"]
    )


def test_estimated_accuracy_below_threshold_fires_once_per_episode() -> None:
    monitor = state()
    alerts: list[Alert] = []
    # Probabilities near 0.5: the calibrated chance of being right is near 0.5 < 0.7.
    for i in range(2000):
        alerts += taken(monitor.on_prediction(0, prediction(i, 0.45 + 0.1 * (i % 2)), now_ms=i))
    fired = [a for a in alerts if a.alert == ESTIMATED_ACCURACY_BELOW_THRESHOLD]
    assert len(fired) == 1
    alert = fired[0]
    assert alert.method == "cbpe"
    assert alert.estimated_accuracy is not None
    assert alert.estimated_accuracy < 0.7
    assert alert.threshold == 0.7
    assert alert.severity == "critical"


def test_prediction_drift_is_a_feature_drift_alert_on_the_scores() -> None:
    monitor = state()
    rng = np.random.default_rng(2)
    alerts: list[Alert] = []
    for i, value in enumerate(rng.random(1000).tolist()):
        alerts += taken(monitor.on_prediction(0, prediction(i, value), now_ms=i))
    assert not [a for a in alerts if a.alert == FEATURE_DRIFT]
    for i, value in enumerate((0.7 + 0.3 * rng.random(1000)).tolist(), start=1000):
        alerts += taken(monitor.on_prediction(0, prediction(i, value), now_ms=i))
    drifted = [a for a in alerts if a.alert == FEATURE_DRIFT]
    assert drifted
    assert drifted[0].detector == PREDICTION_DRIFT
    assert drifted[0].features is not None
    assert "prediction" in drifted[0].features
    assert drifted[0].statistic is not None
    assert drifted[0].threshold is not None
    assert drifted[0].statistic > drifted[0].threshold


def test_a_version_without_reference_is_looked_up_once_and_checkpoints_keep_the_checks() -> None:
    monitor = state()
    for i in range(300):
        monitor.on_prediction(0, prediction(i, 0.9, version=2), now_ms=0)
        monitor.on_prediction(0, prediction(10_000 + i, 0.9), now_ms=0)
    assert monitor.prediction_checks[("churn", 2)] is None
    assert "estimated_accuracy" not in monitor.metrics().get("churn/v2", {})
    restored = pickle.loads(pickle.dumps(monitor))  # noqa: S301 - our own bytes
    # The lookup reads the model folder: not state, an empty one is restored.
    assert type(restored.references) is ReferenceLookup
    checks = restored.prediction_checks[("churn", 1)]
    assert checks is not None
    assert checks.estimate.size == 300
    assert restored.metrics()["churn/v1"] == monitor.metrics()["churn/v1"]
