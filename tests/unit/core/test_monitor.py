"""The monitor's state as a whole: what its summary line reports."""

from __future__ import annotations

import json

import pytest

from workers.core.monitor import MonitorConfig, MonitorState

pytestmark = pytest.mark.unit


def test_the_summary_names_the_baseline_as_alerts_and_the_readme_do() -> None:
    state = MonitorState(MonitorConfig(window=4))
    for i in range(6):
        body = {"event_id": f"e{i}", "model_name": "m", "model_version": 1, "label": 1,
                "event_time": 1000 * i}  # fmt: skip
        state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
        label = {"event_id": f"e{i}", "label": 1 if i < 4 else 0, "label_time": 1000 * i}
        state.on_label(0, json.dumps(label).encode(), 0, now_ms=0)
    version = state.metrics()["m/v1"]
    assert "reference_accuracy" not in version
    assert version["baseline_accuracy"] == 1.0  # the first `window` outcomes
    assert version["window_accuracy"] == 0.5
    assert version["joined"] == 6


@pytest.mark.parametrize("classes", [(9, 10), (2, 10), (-2, -1), ("no", "yes")])
def test_binary_metrics_take_the_positive_class_in_the_models_order(
    classes: tuple[object, object],
) -> None:
    negative, positive = classes
    state = MonitorState(MonitorConfig(window=100))
    # (predicted, actual): 3 true positives, 1 false negative, 2 true negatives.
    pairs = [(positive, positive)] * 3 + [(negative, positive)] + [(negative, negative)] * 2
    for i, (predicted, actual) in enumerate(pairs):
        probabilities = {str(negative): 0.4, str(positive): 0.6}  # classes_ order
        body = {"event_id": f"e{i}", "model_name": "m", "model_version": 1,
                "label": predicted, "event_time": i, "probabilities": probabilities}  # fmt: skip
        state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
        label = {"event_id": f"e{i}", "label": actual, "label_time": i}
        state.on_label(0, json.dumps(label).encode(), 0, now_ms=0)
    version = state.metrics()["m/v1"]
    assert version["precision"] == 1.0
    assert version["recall"] == 0.75


def test_max_pending_bounds_the_whole_monitor_not_each_partition() -> None:
    state = MonitorState(MonitorConfig(max_pending=100, partitions=4))
    for partition in range(4):
        for i in range(100):
            body = {"event_id": f"p{partition}-{i}", "model_name": "m", "model_version": 1,
                    "label": 1, "event_time": 1000 + i}  # fmt: skip
            state.on_prediction(partition, json.dumps(body).encode(), now_ms=0)
    counters = state.counters()
    assert counters["pending_predictions"] == 100  # 25 per partition, not 100 each
    assert counters["evicted_predictions"] == 300


def test_an_event_time_far_ahead_of_its_record_is_taken_to_be_the_records_time() -> None:
    state = MonitorState(MonitorConfig(max_time_ahead_ms=3_600_000))
    record_ms = 1_764_500_000_000
    micros = record_ms * 1000  # stamped in microseconds by mistake
    body = {"event_id": "a", "model_name": "m", "model_version": 1, "label": 1,
            "event_time": micros}  # fmt: skip
    state.on_prediction(0, json.dumps(body).encode(), now_ms=0, timestamp_ms=record_ms)
    assert state.counters()["times_clamped"] == 1
    assert state.joins[0].predictions["a"].event_time == record_ms
    ok = {**body, "event_id": "b", "event_time": record_ms + 1000}  # a second ahead: kept
    state.on_prediction(0, json.dumps(ok).encode(), now_ms=0, timestamp_ms=record_ms)
    assert state.joins[0].predictions["b"].event_time == record_ms + 1000
    assert state.counters()["times_clamped"] == 1
