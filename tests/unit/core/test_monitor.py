"""The monitor's state as a whole: what its summary line reports."""

from __future__ import annotations

import json

import pytest

from workers.core.monitor import Misplaced, MonitorConfig, MonitorState
from workers.core.partitioning import partition_of

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
    ids = [f"e{i}" for i in range(2_000)]
    for partition in range(4):
        placed = [e for e in ids if partition_of(e.encode(), 4) == partition][:100]
        for i, event_id in enumerate(placed):
            body = {"event_id": event_id, "model_name": "m", "model_version": 1,
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


def _prediction(event_id: str, label: object = 1) -> bytes:
    body = {"event_id": event_id, "model_name": "m", "model_version": 1, "label": label,
            "event_time": 1000}  # fmt: skip
    return json.dumps(body).encode()


def test_a_prediction_off_its_murmur2_partition_is_re_keyed_and_joins_once() -> None:
    # Written by a producer with librdkafka's default partitioner (or any other).
    state = MonitorState(MonitorConfig(window=10, partitions=3))
    home = partition_of(b"a", 3)
    away = (home + 1) % 3
    assert state.on_prediction(away, _prediction("a"), now_ms=0) == Misplaced(b"a")
    counters = state.counters()
    assert (counters["misplaced_predictions"], counters["pending_predictions"]) == (1, 0)
    # Its label was re-keyed first; the forwarded prediction meets it where it went.
    state.on_forwarded(home, json.dumps({"event_id": "a", "label": 1}).encode(), 5,
                             (0, 7), now_ms=0)  # fmt: skip
    assert state.on_forwarded(home, _prediction("a"), 1000, (away, 3), 0, prediction=True) == []
    assert state.counters()["joined"] == 1
    # The same prediction forwarded again (its forwarder restarted) is not taken twice.
    state.on_forwarded(home, _prediction("a"), 1000, (away, 3), 0, prediction=True)
    counters = state.counters()
    assert (counters["joined"], counters["forward_replays"]) == (1, 1)
    assert counters["duplicate_predictions"] == 0
    assert state.metrics()["m/v1"]["joined"] == 1


def test_a_prediction_on_its_partition_and_a_single_partition_are_taken_as_they_come() -> None:
    state = MonitorState(MonitorConfig(partitions=3))
    assert state.on_prediction(partition_of(b"b", 3), _prediction("b"), now_ms=0) == []
    single = MonitorState(MonitorConfig(partitions=1))
    assert single.on_prediction(0, _prediction("b"), now_ms=0) == []
    assert state.counters()["pending_predictions"] == 1
    assert single.counters()["misplaced_predictions"] == 0


@pytest.mark.parametrize(
    ("predicted", "actual", "verdict"),
    [(1, 1.0, "right"), (0, 1.0, "wrong"), (1, 1, "right"), (True, True, "right"),
     ("yes", "no", "wrong"), (1, True, "wrong_type"), (1, "1", "wrong_type"),
     (1, "employed", "wrong_type"), (True, 1.0, "wrong_type"),
     ("1", 1.0, "wrong_type"), (1, 1.5, "fractional")],
)  # fmt: skip
def test_a_label_is_checked_against_its_predictions_classes_when_it_joins(
    predicted: object, actual: object, verdict: str
) -> None:
    """Jackson, pandas float columns and json.dumps(1.0) write class 1 as 1.0: that class. A
    label of another type ("1" or "employed" for integer classes) is no class of the model:
    invalid, by reason, and the prediction waits on; every counter agrees."""
    state = MonitorState(MonitorConfig(window=10))
    state.on_prediction(0, _prediction("a", predicted), now_ms=0)
    state.on_label(0, json.dumps({"event_id": "a", "label": actual}).encode(), 0, now_ms=0)
    counters = state.counters()
    if verdict in ("right", "wrong"):
        assert state.metrics()["m/v1"]["window_accuracy"] == (1.0 if verdict == "right" else 0.0)
        assert counters["joined"] == 1
        assert counters["invalid_labels"] == 0
    else:
        assert "m/v1" not in state.metrics()
        assert counters["joined"] == 0
        assert counters["invalid_labels"] == counters[f"invalid_labels_{verdict}"] == 1
        assert counters["pending_predictions"] == 1
        [seen] = state.joins[0].unfit_seen
        assert (seen.event_id, seen.reason) == ("a", verdict)


@pytest.mark.parametrize("label", ['"2945.0"', "null", "true", "1e308", "1" + "0" * 400])
def test_a_regressors_label_that_is_no_number_is_invalid_and_counters_agree(label: str) -> None:
    state = MonitorState(MonitorConfig(window=10))
    state.on_prediction(0, _prediction("a", 2.5), now_ms=0)
    state.on_label(0, f'{{"event_id": "a", "label": {label}}}'.encode(), 0, now_ms=0)
    state.on_prediction(0, _prediction("b", 2.5), now_ms=0)
    state.on_label(0, b'{"event_id": "b", "label": 3.5}', 0, now_ms=0)
    counters = state.counters()
    assert counters["joined"] == state.metrics()["m/v1"]["joined"] == 1
    assert counters["invalid_labels"] == 1


def test_recall_counts_an_integral_float_label_of_the_positive_class() -> None:
    state = MonitorState(MonitorConfig(window=10))
    body = {"event_id": "a", "model_name": "m", "model_version": 1, "label": 1,
            "event_time": 0, "probabilities": {"0": 0.2, "1": 0.8}}  # fmt: skip
    state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
    state.on_label(0, json.dumps({"event_id": "a", "label": 1.0}).encode(), 0, now_ms=0)
    assert state.metrics()["m/v1"]["recall"] == 1.0


def test_a_record_stamped_in_the_future_is_bounded_by_the_monitors_own_clock() -> None:
    now = 1_764_500_000_000
    state = MonitorState(MonitorConfig(max_time_ahead_ms=3_600_000))
    # One label with no label_time whose producer stamped its CreateTime in microseconds.
    label = json.dumps({"event_id": "a", "label": 1}).encode()
    state.on_label(0, label, now * 1000, now_ms=now)
    assert state.joins[0].labels["a"][1] == now
    body = {"event_id": "b", "model_name": "m", "model_version": 1, "label": 1,
            "event_time": now * 1000}  # fmt: skip
    state.on_prediction(0, json.dumps(body).encode(), now_ms=now, timestamp_ms=now * 1000)
    assert state.joins[0].predictions["b"].event_time == now
    assert state.counters()["times_clamped"] == 3
