"""`scorestream monitor` against the real broker: exact join counts, drift alerts, restarts."""

from __future__ import annotations

import json
import random
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from confluent_kafka import Producer

from tests.conftest import KafkaUnderTest, TopicFactory, free_base_port
from tests.integration.workers import (
    WorkerProcess,
    murmur2_partition,
    read_topic,
    scrape,
    set_topic_config,
)
from workers.checkpoint import CheckpointStore
from workers.cli import main
from workers.core.monitor import MonitorConfig, MonitorState
from workers.kafka_io.admin import create_topics
from workers.metrics import REFRESH_INTERVAL_S
from workers.schemas import load_schema

BASE = 1_700_000_000_000
# Predictions are keyed as infer keys them (murmur2); labels go with librdkafka's default
# partitioner, as a plain Python client sends them: the monitor re-keys labels itself.
LABELS_TOPIC = re.compile(r"-lab-[0-9a-f]{8}$")  # what new_topic(n, "-lab") names
SECOND = 1000


@dataclass
class Scenario:
    predictions: list[tuple[bytes, bytes]]
    labels: list[tuple[bytes, bytes]]
    joined: int
    expired: int
    orphans: int
    correct: int


def scenario(
    n: int,
    seed: int,
    accuracy_before: float = 0.9,
    accuracy_after: float = 0.9,
    change_at: int | None = None,
) -> Scenario:
    """Every 10th event never gets a prediction, every 7th of the rest never gets a label."""
    rng = random.Random(seed)
    predictions, labels = [], []
    joined = expired = orphans = correct = 0
    for i in range(n):
        t = BASE + i * SECOND
        actual = rng.choice([0, 1])
        accuracy = accuracy_before if change_at is None or i < change_at else accuracy_after
        predicted = actual if rng.random() < accuracy else 1 - actual
        has_prediction, has_label = i % 10 != 0, i % 7 != 0 or i % 10 == 0
        event_id = f"e{i}"
        if has_prediction:
            p1 = 0.75 if predicted == 1 else 0.25
            body = {
                "event_id": event_id,
                "model_name": "m",
                "model_version": 1,
                "label": predicted,
                "score": max(p1, 1 - p1),
                "probabilities": {"0": 1 - p1, "1": p1},
                "event_time": t,
                "scored_at": t,
            }
            predictions.append((event_id.encode(), json.dumps(body).encode()))
        if has_label:
            label_time = t + rng.randrange(0, 120) * SECOND
            labels.append((label_time, event_id, actual))
        joined += has_prediction and has_label
        expired += has_prediction and not has_label
        orphans += has_label and not has_prediction
        correct += has_prediction and has_label and predicted == actual
    labels.sort()  # labels arrive in label-time order, up to two minutes after their event
    encoded = [
        (e.encode(), json.dumps({"event_id": e, "label": y, "label_time": lt}).encode())
        for lt, e, y in labels
    ]
    return Scenario(predictions, encoded, joined, expired, orphans, correct)


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], partition: int | None = None
) -> None:
    partitioner = "consistent_random" if LABELS_TOPIC.search(topic) else "murmur2_random"
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "partitioner": partitioner})  # fmt: skip
    for key, value in records:
        if partition is None:
            producer.produce(topic, value, key)
        else:
            producer.produce(topic, value, key, partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0


def advance_clocks(bootstrap: str, topics: dict[str, str], partitions: int) -> None:
    """Far-future predictions and labels from every partition to every join partition, so
    every TTL has passed: a join partition's clock on either side is the slowest of the
    partitions it hears from (predictions another producer placed elsewhere are re-keyed to
    it, labels always are)."""
    far = BASE + 100 * 3_600_000
    for source in range(partitions):
        for p in range(partitions):
            ids = (f"clock-p{source}-{p}-{k}" for k in range(10_000))
            event_id = next(e for e in ids if murmur2_partition(e.encode(), partitions) == p)
            prediction = {
                "event_id": event_id,
                "model_name": "clock",
                "model_version": 1,
                "label": 0,
                "score": 1.0,
                "event_time": far,
                "scored_at": far,
            }
            record = [(b"c", json.dumps(prediction).encode())]
            produce(bootstrap, topics["predictions"], record, source)
    # Labels are re-keyed by event_id, and a join partition's label clock is the slowest of
    # the labels partitions it hears from: from every labels partition, one label whose id
    # lands on each join partition.
    for source in range(partitions):
        for p in range(partitions):
            label_id = next(
                f"clock-l{source}-{p}-{k}" for k in range(10_000)
                if murmur2_partition(f"clock-l{source}-{p}-{k}".encode(), partitions) == p
            )  # fmt: skip
            label = {"event_id": label_id, "label": 0, "label_time": far}
            produce(bootstrap, topics["labels"], [(b"c", json.dumps(label).encode())], source)


def monitor_args(
    kafka: KafkaUnderTest, topics: dict[str, str], state: Path, *extra: str
) -> list[str]:
    return [
        "monitor", "--bootstrap-servers", kafka.bootstrap_servers,
        "--predictions-topic", topics["predictions"], "--labels-topic", topics["labels"],
        "--alerts-topic", topics["alerts"], "--group-id", f"g-{topics['predictions']}",
        "--state-dir", str(state), "--checkpoint-interval-s", "0.5", "--log-interval-s", "0.5",
        *extra,
    ]  # fmt: skip


def wait_for_summary(
    worker: WorkerProcess, expected: dict[str, int], timeout_s: float = 90.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summaries = worker.events("monitor_summary")
        if summaries and all(summaries[-1].get(k) == v for k, v in expected.items()):
            return summaries[-1]
        if worker.proc.poll() is not None:
            break
        time.sleep(0.2)
    last = worker.events("monitor_summary")[-1:] or worker.lines[-10:]
    raise AssertionError(f"counts never reached {expected}; last: {last}")


def wait_until_joined_over(worker: WorkerProcess, joined: int, timeout_s: float = 60.0) -> None:
    """Mid-stream: the monitor has joined more than `joined` outcomes."""
    deadline = time.monotonic() + timeout_s
    while not any(e["joined"] > joined for e in worker.events("monitor_summary")):
        assert time.monotonic() < deadline, f"never joined more than {joined}"
        time.sleep(0.1)


@pytest.fixture
def topics(new_topic: TopicFactory) -> dict[str, str]:
    return {
        "predictions": new_topic(4, "-pred"),
        "labels": new_topic(4, "-lab"),
        "alerts": new_topic(1, "-alerts"),
    }


def expected_counts(s: Scenario) -> dict[str, int]:
    return {
        "joined": s.joined,
        "expired_without_label": s.expired,
        "orphan_labels": s.orphans,
        "duplicate_predictions": 0,
        "duplicate_labels": 0,
        "late_labels": 0,
        "pending_predictions": 16,  # the clock predictions, one per partition and join partition
        "pending_labels": 16,  # the clock labels: one per labels partition and join partition
    }


def test_join_counts_are_exact_in_either_arrival_order(
    kafka: KafkaUnderTest, topics: dict[str, str], tmp_path: Path
) -> None:
    s = scenario(4000, seed=1)
    half = len(s.predictions) // 2
    port = free_base_port(1)
    worker = WorkerProcess(
        *monitor_args(kafka, topics, tmp_path, "--window", "100000", "--metrics-port", str(port))
    )
    try:
        worker.wait_for("partitions_assigned")
        # First half of the predictions, then every label (late for those, early for the
        # rest), then the second half of the predictions.
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[:half])
        produce(kafka.bootstrap_servers, topics["labels"], s.labels)
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[half:])
        # Duplicates (at-least-once upstream) must not count twice.
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[:50])
        advance_clocks(kafka.bootstrap_servers, topics, 4)
        summary = wait_for_summary(worker, {**expected_counts(s), "duplicate_predictions": 50})
        time.sleep(REFRESH_INTERVAL_S * 1.5)  # the metrics snapshot is refreshed once a second
        metrics = scrape(port)
    finally:
        code, _ = worker.stop()
    assert code == 0
    # Accuracy over all joined pairs (the window holds them all) equals the offline truth.
    assert summary["versions"]["m/v1"]["window_accuracy"] == s.correct / s.joined
    assert summary["versions"]["m/v1"]["joined"] == s.joined
    assert metrics["scorestream_monitor_outcomes_total", (("outcome", "joined"),)] == s.joined
    expired = (("outcome", "expired_without_label"),)
    assert metrics["scorestream_monitor_outcomes_total", expired] == s.expired
    version = (("model", "m"), ("version", "1"))
    assert metrics["scorestream_rolling_accuracy", version] == s.correct / s.joined
    assert metrics["scorestream_monitor_version_joined_total", version] == s.joined


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_drop_in_accuracy_raises_drift_and_threshold_alerts_after_the_change(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path, guarantee: str
) -> None:
    topics = {
        "predictions": new_topic(1, "-pred"),
        "labels": new_topic(1, "-lab"),
        "alerts": new_topic(1, "-alerts"),
    }
    s = scenario(8000, seed=2, accuracy_before=0.92, accuracy_after=0.6, change_at=4000)
    before = sum(1 for i in range(4000) if i % 10 != 0 and i % 7 != 0)
    worker = WorkerProcess(
        *monitor_args(kafka, topics, tmp_path, "--processing-guarantee", guarantee)
    )
    try:
        worker.wait_for("partitions_assigned")
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions)
        produce(kafka.bootstrap_servers, topics["labels"], s.labels)
        wait_for_summary(worker, {"joined": s.joined})
        records = read_topic(kafka.bootstrap_servers, topics["alerts"], 2, settle_s=1)
    finally:
        code, _ = worker.stop()
    assert code == 0
    alerts = [r.json() for r in records]
    schema = load_schema("alert")
    for alert, record in zip(alerts, records, strict=True):
        jsonschema.validate(alert, schema)
        assert record.key == b"m"
    kinds = [a["alert"] for a in alerts]
    assert "drift_detected" in kinds
    assert "accuracy_below_threshold" in kinds
    assert all(a["joined"] > before for a in alerts), (before, alerts)
    drift = next(a for a in alerts if a["alert"] == "drift_detected")
    assert drift["joined"] - before < 400
    assert drift["detector"] == "page_hinkley_pair"
    # Each alert is also one JSON log line whose event is the alert name.
    logged = worker.events("drift_detected") + worker.events("accuracy_below_threshold")
    assert len(logged) == len(alerts)
    assert all(line["model_name"] == "m" and line["severity"] for line in logged)


def test_a_killed_monitor_resumes_from_its_checkpoint_and_counts_nothing_twice(
    kafka: KafkaUnderTest, topics: dict[str, str], tmp_path: Path
) -> None:
    s = scenario(6000, seed=3)
    half_p, half_l = len(s.predictions) // 2, len(s.labels) // 2
    args = monitor_args(kafka, topics, tmp_path)
    worker = WorkerProcess(*args)
    try:
        worker.wait_for("partitions_assigned")
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[:half_p])
        produce(kafka.bootstrap_servers, topics["labels"], s.labels[:half_l])
        wait_until_joined_over(worker, 500)
    finally:
        worker.stop(signal.SIGKILL)  # no final checkpoint: it must resume from an older one
    produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[half_p:])
    produce(kafka.bootstrap_servers, topics["labels"], s.labels[half_l:])
    advance_clocks(kafka.bootstrap_servers, topics, 4)
    worker = WorkerProcess(*args)
    try:
        wait_for_summary(worker, expected_counts(s))
        time.sleep(1.5)  # a few more summaries: nothing may move past the truth
        assert worker.events("monitor_summary")[-1]["joined"] == s.joined
    finally:
        code, _ = worker.stop()
    assert code == 0


def test_a_missing_labels_topic_is_named_with_the_command(
    kafka: KafkaUnderTest,
    new_topic: TopicFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = {
        "predictions": new_topic(3, "-pred"),
        "labels": f"never-made-{uuid.uuid4().hex[:8]}",
        "alerts": new_topic(1, "-alerts"),
    }
    assert main(monitor_args(kafka, topics, tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"{topics['labels']!r} does not exist" in err
    assert "scorestream topics create" in err
    assert f"--labels-topic {topics['labels']}" in err


def sum_of_last(workers: list[WorkerProcess], key: str) -> int:
    total = 0
    for worker in workers:
        summaries = worker.events("monitor_summary")
        total += summaries[-1][key] if summaries else 0
    return total


def test_a_second_monitor_takes_over_partitions_with_their_state(
    kafka: KafkaUnderTest, topics: dict[str, str], tmp_path: Path
) -> None:
    s = scenario(6000, seed=4)
    half_p, half_l = len(s.predictions) // 2, len(s.labels) // 2
    first = WorkerProcess(*monitor_args(kafka, topics, tmp_path, "--instance-id", "a"))
    second = None
    try:
        first.wait_for("partitions_assigned")
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[:half_p])
        produce(kafka.bootstrap_servers, topics["labels"], s.labels[:half_l])
        wait_until_joined_over(first, 500)
        second = WorkerProcess(*monitor_args(kafka, topics, tmp_path, "--instance-id", "b"))
        second.wait_for("partitions_assigned")
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions[half_p:])
        produce(kafka.bootstrap_servers, topics["labels"], s.labels[half_l:])
        advance_clocks(kafka.bootstrap_servers, topics, 4)
        deadline = time.monotonic() + 90
        expected = {
            "joined": s.joined,
            "expired_without_label": s.expired,
            "orphan_labels": s.orphans,
        }
        while {k: sum_of_last([first, second], k) for k in expected} != expected:
            assert time.monotonic() < deadline, {
                k: sum_of_last([first, second], k) for k in expected
            }
            time.sleep(0.2)
        assert len(first.events("partitions_assigned")) >= 2  # it gave partitions away
        assert all(sum_of_last([w], "joined") > 0 for w in (first, second))
    finally:
        codes = [first.stop()[0]] + ([second.stop()[0]] if second is not None else [])
    assert codes == [0, 0]


def test_a_moved_feature_raises_feature_drift_naming_it(
    kafka: KafkaUnderTest, new_topic: TopicFactory, registry: Path, tmp_path: Path
) -> None:
    import numpy as np  # noqa: PLC0415

    from workers.commands.train import load_dataset  # noqa: PLC0415
    from workers.model_store import load_version  # noqa: PLC0415

    topics = {
        "predictions": new_topic(1, "-pred"),
        "labels": new_topic(1, "-lab"),
        "alerts": new_topic(1, "-alerts"),
        "features": new_topic(1, "-feat"),
    }
    manifest = load_version(registry / "bc" / "1").manifest
    std = manifest.raw["feature_summary"]["mean_radius"]["std"]
    data = load_dataset("breast_cancer")
    rng = np.random.default_rng(5)
    rows = data.x[rng.integers(0, len(data.x), 2000)]
    rows[1000:, manifest.features.index("mean_radius")] += 1.0 * std

    def as_events(block: np.ndarray, start: int) -> list[tuple[bytes, bytes]]:
        return [
            (f"f{start + i}".encode(), json.dumps({
                "event_id": f"f{start + i}",
                "features": dict(zip(manifest.features, row, strict=True))}).encode())
            for i, row in enumerate(block.tolist())
        ]  # fmt: skip

    worker = WorkerProcess(*monitor_args(
        kafka, topics, tmp_path, "--features-topic", topics["features"],
        "--model", str(registry / "bc")))  # fmt: skip
    try:
        worker.wait_for("partitions_assigned")
        produce(kafka.bootstrap_servers, topics["features"], as_events(rows[:1000], 0))
        time.sleep(2)
        assert worker.events("feature_drift") == []  # same distribution as in training
        produce(kafka.bootstrap_servers, topics["features"], as_events(rows[1000:], 1000))
        line = worker.wait_for("feature_drift", timeout_s=60)
        [record] = read_topic(kafka.bootstrap_servers, topics["alerts"], 1, settle_s=0.5)
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert "mean_radius" in line["features"]
    assert line["features"]["mean_radius"]["shift_sigma"] > 0.2  # found before the window is full
    alert = record.json()
    jsonschema.validate(alert, load_schema("alert"))
    assert alert["alert"] == "feature_drift"
    assert alert["model_name"] == "bc"
    assert "mean_radius" in alert["features"]


def test_exactly_once_alerts_left_in_the_outbox_by_a_crash_are_published_once(
    kafka: KafkaUnderTest, topics: dict[str, str], tmp_path: Path
) -> None:
    """The crash window of exactly-once alerts: checkpoint stored (with its outbox), some of
    the outbox published, the rest not, the outbox not cleared. A restart publishes the rest."""
    group = f"g-{topics['predictions']}"
    store = CheckpointStore(
        tmp_path / "monitor.sqlite",
        {"group_id": group, "predictions_topic": topics["predictions"],
         "labels_topic": topics["labels"], "features_topic": ""},
    )  # fmt: skip
    now = int(time.time() * 1000)
    alerts = [
        json.dumps({"alert": "drift_detected", "severity": "warning", "model_name": "m",
                    "model_version": 1, "joined": 100 * i, "at": now}).encode()
        for i in (1, 2, 3)
    ]  # fmt: skip
    store.save(MonitorState(MonitorConfig()), {}, {}, [(b"m", a, now) for a in alerts])
    assert [seq for seq, _, _, _ in store.outbox()] == [1, 2, 3]
    store.close()
    transactional_id = f"{group}.monitor.main"
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "transactional.id": transactional_id})  # fmt: skip
    producer.init_transactions(30)
    producer.begin_transaction()
    for seq in (1, 2):  # published before the crash
        producer.produce(topics["alerts"], alerts[seq - 1], b"m", headers=[
            ("scorestream.transactional_id", transactional_id),
            ("scorestream.alert_seq", str(seq))])  # fmt: skip
    producer.commit_transaction(30)

    worker = WorkerProcess(
        *monitor_args(kafka, topics, tmp_path, "--processing-guarantee", "exactly-once")
    )
    try:
        recovered = worker.wait_for("alert_outbox_recovered")
        records = read_topic(kafka.bootstrap_servers, topics["alerts"], 3, settle_s=2)
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert (recovered["published_before"], recovered["to_publish"]) == (2, 1)
    assert sorted(r.value or b"" for r in records) == sorted(alerts)  # each exactly once


def test_an_alert_the_broker_refuses_is_sent_again_before_its_state_is_checkpointed(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    topics = {"predictions": new_topic(1, "-pred"), "labels": new_topic(1, "-lab"),
              "alerts": f"t-refusing-alerts-{uuid.uuid4().hex[:8]}"}  # fmt: skip
    # Every alert is larger than the alerts topic takes, until the topic is fixed.
    create_topics(kafka.bootstrap_servers, {topics["alerts"]: 1},
                  config={"max.message.bytes": "64"})  # fmt: skip
    s = scenario(600, seed=4, accuracy_before=0.3)  # accuracy_below_threshold at once
    worker = WorkerProcess(*monitor_args(kafka, topics, tmp_path, "--min-outcomes", "50"))
    try:
        produce(kafka.bootstrap_servers, topics["predictions"], s.predictions)
        produce(kafka.bootstrap_servers, topics["labels"], s.labels)
        deferred = worker.wait_for("checkpoint_deferred")
        assert "alert" in deferred["reason"]
        assert "alerts topic" in deferred["fix"]
        assert worker.events("accuracy_below_threshold")
        set_topic_config(kafka.bootstrap_servers, topics["alerts"], "max.message.bytes", "1048576")
        alerts = read_topic(kafka.bootstrap_servers, topics["alerts"], 1, settle_s=2)
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert [json.loads(r.value or b"")["alert"] for r in alerts][:1] == ["accuracy_below_threshold"]
    stored = CheckpointStore(tmp_path / "monitor.sqlite", {
        "group_id": f"g-{topics['predictions']}", "predictions_topic": topics["predictions"],
        "labels_topic": topics["labels"], "features_topic": ""})  # fmt: skip
    try:
        assert stored.offset(topics["labels"], 0) == len(s.labels)  # checkpointed once sent
    finally:
        stored.close()
