"""A regressor's outcomes: rolling MAE/RMSE equal to an offline recomputation, alerts with
hysteresis, and concept drift on the absolute errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workers.core.alerts import Alert, AlertRules
from workers.core.drift import ErrorCusum
from workers.core.monitor import MonitorConfig, MonitorState
from workers.core.outcomes import OUTCOME_ENCODER, AggregatePartition, JoinPartition
from workers.core.performance import RollingError

pytestmark = pytest.mark.unit


def feed(state: MonitorState, predicted: list[float], actual: list[float]) -> list[str]:
    alerts: list[Alert] = []
    for i, (p, a) in enumerate(zip(predicted, actual, strict=True)):
        body = {"event_id": f"e{i}", "model_name": "price", "model_version": 2, "label": p,
                "score": p, "event_time": 1000 + i, "scored_at": 1000 + i}  # fmt: skip
        taken = state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
        assert isinstance(taken, list)  # one partition: none is misplaced
        alerts += taken
        label = {"event_id": f"e{i}", "label": a, "label_time": 1000 + i}
        alerts += state.on_label(0, json.dumps(label).encode(), 0, now_ms=0)
    return [a.alert for a in alerts]


def test_window_mae_rmse_and_mean_error_equal_an_offline_recomputation() -> None:
    rng = np.random.default_rng(3)
    actual = rng.gamma(2.0, 50.0, 3000)
    predicted = actual + rng.normal(0, 7.5, 3000)
    state = MonitorState(MonitorConfig(window=1000))
    feed(state, predicted.tolist(), actual.tolist())
    version = state.metrics()["price/v2"]
    errors = (actual - predicted)[-1000:]
    assert version["joined"] == 3000
    assert version["window_size"] == 1000
    assert version["window_mae"] == math.fsum(np.abs(errors)) / 1000
    assert version["window_rmse"] == math.sqrt(math.fsum(errors**2) / 1000)
    assert version["window_mean_error"] == math.fsum(errors) / 1000
    assert version["window_mae"] == pytest.approx(np.abs(errors).mean(), rel=1e-12)
    first = np.abs(actual - predicted)[:1000]
    assert version["baseline_mae"] == math.fsum(first) / 1000
    assert "window_accuracy" not in version


def test_an_integer_label_without_probabilities_is_a_class_not_a_value() -> None:
    state = MonitorState(MonitorConfig(window=10))
    body = {"event_id": "e", "model_name": "m", "model_version": 1, "label": 1, "event_time": 1}
    state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
    state.on_label(0, json.dumps({"event_id": "e", "label": 1}).encode(), 5, now_ms=0)
    assert state.metrics()["m/v1"]["window_accuracy"] == 1.0


def test_error_alerts_fire_once_per_episode_with_hysteresis() -> None:
    rng = np.random.default_rng(5)
    n = 600
    scale = np.concatenate([np.ones(n), np.full(n, 3.0), np.ones(2 * n)])
    actual = rng.normal(100, 10, len(scale))
    predicted = actual + rng.normal(0, 1, len(scale)) * scale
    rules = AlertRules(min_outcomes=50, drift_cooldown=10**9)
    state = MonitorState(MonitorConfig(window=200, rules=rules))
    fired = feed(state, predicted.tolist(), actual.tolist())
    assert fired.count("error_above_threshold") == 1
    assert fired.count("error_recovered") == 1
    assert fired.index("error_above_threshold") < fired.index("error_recovered")
    assert fired.count("drift_detected") == 1


def test_max_mae_replaces_the_reference_ratio() -> None:
    state = MonitorState(MonitorConfig(window=100, rules=AlertRules(max_mae=0.5, min_outcomes=10)))
    fired = feed(state, [float(i) for i in range(50)], [i + 1.0 for i in range(50)])
    assert fired.count("error_above_threshold") == 1  # MAE 1.0 > 0.5 from the 10th outcome


def test_a_label_that_is_no_number_is_counted_invalid_for_a_regressor() -> None:
    state = MonitorState(MonitorConfig(window=10))
    body = {"event_id": "e", "model_name": "m", "model_version": 1, "label": 2.5, "event_time": 1}
    state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
    state.on_label(0, json.dumps({"event_id": "e", "label": "high"}).encode(), 5, now_ms=0)
    assert state.counters()["invalid_labels"] == 1
    assert "m/v1" not in state.metrics()


def test_rolling_error_running_sum_stays_exact_over_long_streams() -> None:
    rolling = RollingError(window=100)
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 1e6, 10_050) * rng.choice([1e-6, 1.0], 10_050)
    for e in errors.tolist():
        rolling.add(e)
    assert rolling.window_mae_fast() == pytest.approx(np.abs(errors[-100:]).mean(), rel=1e-9)


def test_error_cusum_is_scale_free_and_finds_a_rise() -> None:
    for scale in (1e-3, 1.0, 1e6):
        rng = np.random.default_rng(1)
        stable = np.abs(rng.normal(0, scale, 5000))
        risen = np.abs(rng.normal(0, 1.5 * scale, 2000))
        detector = ErrorCusum()
        assert not any(detector.update(float(e)) for e in stable)
        first = next(i for i, e in enumerate(risen) if detector.update(float(e)))
        assert first < 400


def test_labels_no_float_holds_are_invalid_and_the_metrics_still_refresh() -> None:
    # A 400-digit integer overflows float(); two errors of 1e308 overflow any sum.
    state = MonitorState(MonitorConfig(window=10))
    feed(state, [1.0, 2.0, 3.0, 4.0], [10**400, 1e308, 1e308, 5.0])
    counters = state.counters()
    assert (counters["joined"], counters["invalid_labels"]) == (1, 3)  # as the version says
    version = state.metrics()["price/v2"]
    assert (version["joined"], version["window_mae"]) == (1, 1.0)


def test_the_two_stage_join_and_aggregate_take_no_unholdable_number_either() -> None:
    part = JoinPartition.new(MonitorConfig())
    aggregate = AggregatePartition.new(MonitorConfig())
    for i, actual in enumerate([10**400, 1e308, 1e308, 7.5]):
        body = {"event_id": f"e{i}", "model_name": "price", "model_version": 2, "label": 1.5,
                "event_time": 1000 + i, "scored_at": 1000 + i}  # fmt: skip
        part.on_prediction(json.dumps(body).encode(), 0, now_ms=0)
        label = json.dumps({"event_id": f"e{i}", "label": actual, "label_time": 1000 + i})
        for record in part.on_label(label.encode(), 0, (0, i), now_ms=0):
            aggregate.on_record(OUTCOME_ENCODER.encode(record), now_ms=0)
    assert part.counters()["invalid_labels"] == 3
    # A foreign outcome with an error no float holds is refused by the aggregate too.
    foreign = {"kind": "joined", "event_id": "x", "at": 0, "model_name": "price",
               "model_version": 2, "predicted": 1.0, "actual": 10**400, "error": 1.0}  # fmt: skip
    aggregate.on_record(json.dumps(foreign).encode(), now_ms=0)
    assert aggregate.counts["invalid_outcomes"] == 1
    assert aggregate.state.metrics()["price/v2"]["window_mae"] == 6.0
