"""Data drift, prediction checks and estimates calibrated on a version's reference, against the
real broker: a stream with daily and weekly cycles, categories, gaps and constant columns, a
pipeline fitted the way a team's notebook fits one, events from a plain producer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest

from tests.conftest import KafkaUnderTest, TopicFactory, free_base_port
from tests.integration.test_own_models import send
from tests.integration.workers import WorkerProcess, committed_offset, read_topic, scrape
from tests.models import churn_pipeline
from workers.example_data.streams import CATEGORICAL, FEATURES, as_frame, cyclic_stream, rows_of
from workers.registry import register
from workers.schemas import load_schema

NUMERIC = [f for f in FEATURES if f not in CATEGORICAL]
REFERENCE_ROWS = 20_000


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return as_frame(cyclic_stream(REFERENCE_ROWS, seed=11))


@pytest.fixture(scope="module")
def models(reference: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    model = churn_pipeline(reference, numeric=NUMERIC, categorical=list(CATEGORICAL),
                           target="label")  # fmt: skip
    register(model, name="stream", models_dir=root, training_data=reference, target="label")
    return root / "stream"


def feature_events(columns: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    return [
        (f"{prefix}{i}", {"event_id": f"{prefix}{i}", "features": dict(zip(FEATURES, row,
                                                                           strict=True))})
        for i, row in enumerate(rows_of(columns))
    ]  # fmt: skip


def monitor(
    kafka: KafkaUnderTest, topics: dict[str, str], state: Path, *extra: str
) -> WorkerProcess:
    return WorkerProcess(
        "monitor", "--bootstrap-servers", kafka.bootstrap_servers,
        "--predictions-topic", topics["predictions"], "--labels-topic", topics["labels"],
        "--alerts-topic", topics["alerts"], "--group-id", f"g-{topics['predictions']}",
        "--state-dir", str(state), "--checkpoint-interval-s", "0.5", "--log-interval-s", "0.5",
        *extra,
    )  # fmt: skip


def serve(
    kafka: KafkaUnderTest, topics: dict[str, str], models: Path, *extra: str
) -> WorkerProcess:
    return WorkerProcess(
        "infer", "--bootstrap-servers", kafka.bootstrap_servers, "--model", str(models),
        "--input-topic", topics["features"], "--output-topic", topics["predictions"],
        "--dlq-topic", topics["dlq"], "--group-id", f"i-{topics['features']}", *extra,
    )  # fmt: skip


def wait_committed(kafka: KafkaUnderTest, group: str, topic: str, offset: int) -> None:
    deadline = time.monotonic() + 90
    while committed_offset(kafka.bootstrap_servers, group, topic) < offset:
        assert time.monotonic() < deadline, "the monitor did not get through the features"
        time.sleep(0.3)


def test_a_cyclic_stream_is_quiet_a_shift_is_named_and_a_restart_keeps_the_window(
    kafka: KafkaUnderTest, new_topic: TopicFactory, models: Path, tmp_path: Path
) -> None:
    topics = {"predictions": new_topic(1, "-pred"), "labels": new_topic(1, "-lab"),
              "alerts": new_topic(1, "-alerts"), "features": new_topic(1, "-feat")}  # fmt: skip
    group = f"g-{topics['predictions']}"
    args = ("--features-topic", topics["features"], "--model", str(models))
    # Three days of the stream: the hour and the weekday cycle through the window.
    quiet = cyclic_stream(4320, seed=12, start=REFERENCE_ROWS)
    worker = monitor(kafka, topics, tmp_path / "state", *args)
    try:
        checks = worker.wait_for("data_drift_checks")
        assert checks["reference_rows"] == REFERENCE_ROWS
        assert checks["features"]["hour"]["mean_inflation"] > 20  # its cycle was calibrated
        assert checks["features"]["fee"]["constant"] is True
        assert "x1" in checks["multivariate"]
        send(kafka.bootstrap_servers, topics["features"], feature_events(quiet, "q"))
        wait_committed(kafka, group, topics["features"], len(quiet["hour"]))
        assert worker.events("feature_drift") == []
    finally:
        assert worker.stop()[0] == 0
    # Restarted: the window of the last events comes back from the checkpoint, so a shift of
    # the score is found after fewer events than a window holds.
    shifted = cyclic_stream(120, seed=13, start=REFERENCE_ROWS + 4320)
    shifted["score"] = np.asarray(shifted["score"]) + 3.0
    worker = monitor(kafka, topics, tmp_path / "state", *args)
    try:
        worker.wait_for("data_drift_checks")
        send(kafka.bootstrap_servers, topics["features"], feature_events(shifted, "s"))
        line = worker.wait_for("feature_drift", timeout_s=60)
        [record] = read_topic(kafka.bootstrap_servers, topics["alerts"], 1, settle_s=0.5)
    finally:
        assert worker.stop()[0] == 0
    assert line["detector"] == "calibrated_reference"
    assert "score" in line["features"]
    assert line["features"]["score"]["check"] in {"mean", "tails", "distribution"}
    assert line["statistic"] > line["threshold"] > 0
    alert = record.json()
    jsonschema.validate(alert, load_schema("alert"))
    assert alert["method"] == line["method"]
    assert next(iter(alert["features"])) == "score"


def test_accuracy_is_estimated_before_any_label_then_set_beside_the_realized(
    kafka: KafkaUnderTest, new_topic: TopicFactory, models: Path, tmp_path: Path
) -> None:
    topics = {"features": new_topic(2, "-in"), "predictions": new_topic(2, "-pred"),
              "labels": new_topic(2, "-lab"), "alerts": new_topic(1, "-alerts"),
              "dlq": new_topic(1, "-dlq")}  # fmt: skip
    live = cyclic_stream(3000, seed=14, start=REFERENCE_ROWS)
    send(kafka.bootstrap_servers, topics["features"], feature_events(live, "e"))
    infer = serve(kafka, topics, models)
    port = free_base_port(1)
    worker = monitor(kafka, topics, tmp_path / "state", "--model", str(models), "--window",
                     "5000", "--metrics-port", str(port))  # fmt: skip
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["predictions"], 3000)
        version = _version_when(worker, lambda v: v.get("estimated_window_size") == 3000)
        assert version["joined"] == 0
        gauges = scrape(port)
        labels = (("model", "stream"), ("version", "1"))
        assert gauges[("scorestream_estimated_accuracy", labels)] == pytest.approx(
            version["estimated_accuracy"], abs=1e-9)  # fmt: skip
        send(kafka.bootstrap_servers, topics["labels"],
             [(f"e{i}", {"event_id": f"e{i}", "label": y})
              for i, y in enumerate(live["label"])])  # fmt: skip
        joined = _version_when(worker, lambda v: v.get("joined") == 3000)
    finally:
        assert infer.stop()[0] == 0
        assert worker.stop()[0] == 0
    predicted = {r.json()["event_id"]: r.json()["label"] for r in predictions}
    realized = np.mean([predicted[f"e{i}"] == y for i, y in enumerate(live["label"])])
    assert joined["window_accuracy"] == pytest.approx(realized)
    assert joined["realized_accuracy_joined"] == pytest.approx(realized)
    # Estimated from probabilities alone, before any label: within sampling error.
    assert abs(version["estimated_accuracy"] - realized) < 0.03
    assert abs(joined["estimation_gap"]) < 0.03
    assert joined["estimation_gap"] == pytest.approx(
        joined["realized_accuracy_joined"] - joined["estimated_accuracy_joined"])  # fmt: skip


def _version_when(worker: WorkerProcess, ready: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for summary in reversed(worker.events("monitor_summary")):
            version = summary.get("versions", {}).get("stream/v1")
            if version is not None and ready(version):
                return dict(version)
        assert worker.proc.poll() is None, "the monitor exited"
        time.sleep(0.3)
    raise AssertionError("the monitor never reported it")


def test_split_stages_estimate_before_labels_carry_features_and_find_a_shift(
    kafka: KafkaUnderTest, new_topic: TopicFactory, models: Path, tmp_path: Path
) -> None:
    """The same checks with the monitor in two stages: infer --emit-features, a join stage,
    an aggregate stage with --model and --features-topic (its lead reads them)."""
    topics = {"features": new_topic(2, "-in"), "predictions": new_topic(2, "-pred"),
              "labels": new_topic(2, "-lab"), "alerts": new_topic(1, "-alerts"),
              "dlq": new_topic(1, "-dlq")}  # fmt: skip
    outcomes = f"{topics['predictions']}-outcomes"
    live = cyclic_stream(2000, seed=15, start=REFERENCE_ROWS)
    send(kafka.bootstrap_servers, topics["features"], feature_events(live, "e"))
    infer = serve(kafka, topics, models, "--emit-features")
    stage = ("--outcomes-topic", outcomes, "--window", "5000")
    join = monitor(kafka, topics, tmp_path / "join", "--stage", "join", "--instance-id", "j",
                   *stage)  # fmt: skip
    aggregate = monitor(kafka, topics, tmp_path / "agg", "--stage", "aggregate", "--instance-id",
                        "a", "--model", str(models), "--features-topic", topics["features"],
                        *stage)  # fmt: skip
    try:
        assert aggregate.wait_for("data_drift_checks")["reference_rows"] == REFERENCE_ROWS
        read_topic(kafka.bootstrap_servers, topics["predictions"], 2000)
        version = _version_when(aggregate, lambda v: v.get("estimated_window_size") == 2000)
        assert version["joined"] == 0
        send(kafka.bootstrap_servers, topics["labels"],
             [(f"e{i}", {"event_id": f"e{i}", "label": y})
              for i, y in enumerate(live["label"])])  # fmt: skip
        joined = _version_when(aggregate, lambda v: v.get("joined") == 2000)
        assert aggregate.events("feature_drift") == []
        shifted = cyclic_stream(150, seed=16, start=REFERENCE_ROWS + 2000)
        shifted["score"] = np.asarray(shifted["score"]) + 3.0
        send(kafka.bootstrap_servers, topics["features"], feature_events(shifted, "s"))
        line = aggregate.wait_for("feature_drift", timeout_s=60)
        records = read_topic(kafka.bootstrap_servers, outcomes, 2000, settle_s=0.5)
    finally:
        for worker in (infer, join, aggregate):
            assert worker.stop()[0] == 0
    assert "score" in line["features"]
    realized = np.mean([r.json()["correct"] for r in records])
    assert joined["window_accuracy"] == pytest.approx(realized)
    assert abs(version["estimated_accuracy"] - realized) < 0.03
    assert abs(joined["estimation_gap"]) < 0.03
    # Each outcome carries the event's features as infer was given them: categories, gaps.
    schema = load_schema("outcome")
    first = records[0].json()
    jsonschema.validate(first, schema)
    i = int(first["event_id"][1:])
    sent = dict(zip(FEATURES, rows_of(live)[i], strict=True))
    assert first["features"] == {k: (None if isinstance(v, float) and np.isnan(v) else v)
                                 for k, v in sent.items()}  # fmt: skip
    assert any(v is None for r in records for v in r.json()["features"].values())
