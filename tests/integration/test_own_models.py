"""Models the project did not train, on events shaped like real ones, against the real broker.

Events and labels are written by a plain confluent-kafka producer (librdkafka's default
partitioner, `json.dumps` with None for gaps), as a team's own service would write them.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.workers import WorkerProcess, read_topic
from tests.models import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    as_categories,
    churn_pipeline,
    rows_of,
    spend_regressor,
    table,
)
from workers.registry import register


def send(bootstrap: str, topic: str, records: list[tuple[str, Any]]) -> None:
    """A team's own producer: default partitioner, JSON with null for gaps."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, body in records:
        value = body if isinstance(body, bytes) else json.dumps(body).encode()
        producer.produce(topic, value, key.encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def events(frame: pd.DataFrame, features: list[str], prefix: str) -> list[tuple[str, Any]]:
    return [
        (
            f"{prefix}{i}",
            {"event_id": f"{prefix}{i}", "features": dict(zip(features, row, strict=True))},
        )
        for i, row in enumerate(rows_of(frame, features))
    ]


def register_cli(*args: str) -> Path:
    """`scorestream register ...` as a user runs it; its last line of stdout is the folder."""
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "register", *args],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return Path(done.stdout.strip().splitlines()[-1])


def infer(kafka: KafkaUnderTest, model: Path, topics: dict[str, str]) -> WorkerProcess:
    return WorkerProcess(
        "infer", "--bootstrap-servers", kafka.bootstrap_servers, "--model", str(model),
        "--input-topic", topics["in"], "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"], "--group-id", f"g-{topics['in']}", "--log-interval-s", "1",
    )  # fmt: skip


def topics_for(new_topic: TopicFactory) -> dict[str, str]:
    return {"in": new_topic(4, "-in"), "out": new_topic(4, "-out"), "dlq": new_topic(4, "-dlq")}


def test_a_notebook_pipeline_registered_from_a_csv_scores_as_it_does_offline(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    frame = table(1500, seed=21)
    model = churn_pipeline(frame)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    frame.to_csv(tmp_path / "train.csv", index=False)
    folder = register_cli(
        "--name", "churn", "--model", str(tmp_path / "model.pkl"),
        "--models-dir", str(tmp_path / "models"),
        "--training-data", str(tmp_path / "train.csv"), "--target", "churned",
    )  # fmt: skip
    assert folder == tmp_path / "models" / "churn" / "1"
    live = table(2000, seed=22)
    live.loc[::50, "country"] = "Atlantis"  # unseen: one-hot ignores it, as offline
    good = events(live, FEATURES, "e")
    first = dict(good[0][1]["features"])
    poison = [
        (key, json.dumps({"event_id": key, "features": {**first, **change}}).encode())
        for key, change in (
            ("p0", {"country": 44}),  # a category as a number
            ("p1", {"sessions_7d": "4"}),  # a number as a string
            ("p2", {"plan": {"name": "pro"}}),  # a nested object
        )
    ]
    topics = topics_for(new_topic)
    send(kafka.bootstrap_servers, topics["in"], good + poison)
    worker = infer(kafka, tmp_path / "models" / "churn", topics)
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], len(good))
        dead = read_topic(kafka.bootstrap_servers, topics["dlq"], len(poison))
        started = worker.wait_for("infer_started")
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert started["compiled_scoring"] is True  # the pipeline's sum, without a DataFrame
    expected = model.predict_proba(live[FEATURES])
    by_id = {r.json()["event_id"]: r.json() for r in predictions}
    assert len(by_id) == len(good)
    for i in range(len(live)):
        prediction = by_id[f"e{i}"]
        assert prediction["probabilities"] == {"no": expected[i, 0], "yes": expected[i, 1]}
        assert prediction["label"] == ("yes" if expected[i, 1] > expected[i, 0] else "no")
    assert sorted((r.key, r.headers["error.type"]) for r in dead) == [
        (b"p0", b"features"), (b"p1", b"features"), (b"p2", b"features")
    ]  # fmt: skip
    messages = {r.key: r.headers["error.message"].decode() for r in dead}
    assert "'country'" in messages[b"p0"]
    assert "'sessions_7d'" in messages[b"p1"]
    assert "'plan'" in messages[b"p2"]
    assert {r.value for r in dead} == {value for _, value in poison}


def test_a_regressor_s_predictions_and_the_monitor_s_mae_equal_offline(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    frame = table(1500, seed=31)
    model = spend_regressor(frame)
    as_categories(frame).to_parquet(tmp_path / "train.parquet")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    register_cli(
        "--name", "spend", "--model", str(tmp_path / "model.pkl"),
        "--models-dir", str(tmp_path / "models"),
        "--training-data", str(tmp_path / "train.parquet"), "--target", "monthly_spend",
    )  # fmt: skip
    live = table(1200, seed=32)
    topics = topics_for(new_topic)
    labels_topic, alerts_topic = new_topic(3, "-lab"), new_topic(1, "-alerts")
    send(kafka.bootstrap_servers, topics["in"], events(live, FEATURES, "r"))
    truth = live["monthly_spend"].tolist()
    send(kafka.bootstrap_servers, labels_topic,
         [(f"r{i}", {"event_id": f"r{i}", "label": y}) for i, y in enumerate(truth)])  # fmt: skip
    worker = infer(kafka, tmp_path / "models" / "spend", topics)
    monitor = WorkerProcess(
        "monitor", "--bootstrap-servers", kafka.bootstrap_servers,
        "--predictions-topic", topics["out"], "--labels-topic", labels_topic,
        "--alerts-topic", alerts_topic, "--group-id", f"m-{topics['out']}",
        "--window", "5000", "--log-interval-s", "0.5", "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], len(live))
        summary = None
        for _ in range(120):
            summary = monitor.wait_for("monitor_summary", timeout_s=30)
            version = summary.get("versions", {}).get("spend/v1", {})
            if version.get("joined") == len(live):
                break
            monitor.lines.remove(summary)
        assert summary is not None
    finally:
        assert worker.stop()[0] == 0
        assert monitor.stop()[0] == 0
    predicted = model.predict(as_categories(live)[FEATURES])
    by_id = {r.json()["event_id"]: r.json() for r in predictions}
    for i, value in enumerate(predicted.tolist()):
        assert by_id[f"r{i}"]["label"] == value
        assert by_id[f"r{i}"]["score"] == value
        assert "probabilities" not in by_id[f"r{i}"]
    version = summary["versions"]["spend/v1"]
    errors = np.array(truth) - predicted
    assert version["joined"] == len(live)
    # Every outcome is in the window, so the order they were joined in does not matter.
    assert version["window_mae"] == math.fsum(np.abs(errors)) / len(errors)
    assert version["window_rmse"] == math.sqrt(math.fsum(errors**2) / len(errors))
    assert version["window_mean_error"] == math.fsum(errors) / len(errors)


@pytest.mark.parametrize("kind", ["lightgbm", "onnx"])
def test_lightgbm_and_onnx_models_serve_end_to_end(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path, kind: str
) -> None:
    frame = table(1500, seed=41)
    numbers = frame[NUMERIC].fillna(0.0)
    if kind == "lightgbm":
        import lightgbm  # noqa: PLC0415 - a third-party model, made where the test needs it

        model = lightgbm.LGBMClassifier(n_estimators=40, verbose=-1)
        model.fit(as_categories(frame)[FEATURES], frame["churned"])
        path = tmp_path / "model.joblib"
        path.write_bytes(pickle.dumps(model))
        folder = register(path, name=kind, models_dir=tmp_path / "models",
                          training_data=as_categories(frame), target="churned")  # fmt: skip
        features = FEATURES
    else:
        import onnxruntime  # noqa: PLC0415
        from skl2onnx import to_onnx  # noqa: PLC0415
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

        clf = LogisticRegression(max_iter=500).fit(numbers.to_numpy(), frame["churned"])
        graph = to_onnx(clf, numbers.to_numpy()[:1].astype(np.float32),
                        options={"zipmap": False}, target_opset=17)  # fmt: skip
        path = tmp_path / "model.onnx"
        path.write_bytes(graph.SerializeToString())
        folder = register(path, name=kind, models_dir=tmp_path / "models", features=NUMERIC,
                          training_data=pd.concat([numbers, frame["churned"]], axis=1),
                          target="churned")  # fmt: skip
        features = NUMERIC
    live = table(800, seed=42)
    if kind == "onnx":
        live[NUMERIC] = live[NUMERIC].fillna(0.0)
    good = events(live, features, "g")
    null_body = {"event_id": "n0", "features": {**good[0][1]["features"], "hour": None}}
    bad = [("n0", null_body)] if kind == "onnx" else []
    topics = topics_for(new_topic)
    send(kafka.bootstrap_servers, topics["in"], good + bad)
    worker = infer(kafka, folder.parent, topics)
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], len(good))
        dead = read_topic(kafka.bootstrap_servers, topics["dlq"], len(bad), settle_s=1)
    finally:
        assert worker.stop()[0] == 0
    if kind == "lightgbm":
        expected = np.asarray(model.predict_proba(as_categories(live)[FEATURES]))
    else:
        session = onnxruntime.InferenceSession(
            path.read_bytes(), providers=["CPUExecutionProvider"]
        )
        _, proba = session.run(None, {"X": live[NUMERIC].to_numpy(dtype=np.float32)})
        expected = proba.astype(np.float64)
    by_id = {r.json()["event_id"]: r.json() for r in predictions}
    assert len(by_id) == len(good)
    for i in range(len(live)):
        assert by_id[f"g{i}"]["score"] == expected[i].max()
    if kind == "onnx":
        (letter,) = dead
        assert letter.headers["error.type"] == b"features"
        assert "'hour' is null" in letter.headers["error.message"].decode()


def test_produce_replays_a_table_with_gaps_and_labels_after_their_delay(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    frame = table(600, seed=51)
    frame.to_csv(tmp_path / "table.csv", index=False)
    features_topic, labels_topic = new_topic(4, "-features"), new_topic(4, "-labels")
    worker = WorkerProcess(
        "produce", "--bootstrap-servers", kafka.bootstrap_servers, "--data",
        str(tmp_path / "table.csv"), "--target", "churned", "--id-column", "customer_id",
        "--features-topic", features_topic, "--labels-topic", labels_topic, "--rate", "3000",
        "--label-delay-min-s", "0.2", "--label-delay-max-s", "0.6",
    )  # fmt: skip
    sent = read_topic(kafka.bootstrap_servers, features_topic, len(frame))
    labels = read_topic(kafka.bootstrap_servers, labels_topic, len(frame))
    assert worker.proc.wait(timeout=60) == 0
    finished = worker.wait_for("produce_finished")
    assert (finished["events"], finished["labels"], finished["failed"]) == (600, 600, 0)
    columns = [c for c in frame.columns if c not in ("churned", "customer_id")]
    expected = dict(zip(frame["customer_id"], rows_of(frame, columns), strict=True))
    times = {}
    for record in sent:
        body = record.json()
        assert record.key == body["event_id"].encode()
        assert tuple(body["features"][c] for c in columns) == expected[body["event_id"]]
        times[body["event_id"]] = body["event_time"]
    truth = dict(zip(frame["customer_id"], frame["churned"], strict=True))
    for record in labels:
        body = record.json()
        assert body["label"] == truth[body["event_id"]]
        assert 200 <= body["label_time"] - times[body["event_id"]] <= 600
    assert any(body is None for body in (r.json()["features"]["device"] for r in sent))
    assert set(CATEGORICAL) <= set(columns)
