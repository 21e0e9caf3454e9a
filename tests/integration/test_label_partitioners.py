"""Labels join whatever partitioner their producers used: Kafka's own Java client (murmur2),
librdkafka's default (CRC32), explicit partitions, and a labels topic with another partition
count than the predictions. Predictions come from a real `scorestream infer`."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.conftest import IN_CI, KafkaUnderTest, TopicFactory
from tests.integration.test_infer import events, feature_rows, infer_args
from tests.integration.test_monitor import monitor_args, wait_for_summary
from tests.integration.workers import WorkerProcess, murmur2_partition, read_topic
from workers.kafka_io.roundtrip import produce_all
from workers.local_kafka.runtime import default_cache_dir
from workers.model_store import load_version

JAVA_SOURCE = Path(__file__).resolve().parents[1] / "java" / "LabelProducer.java"


def _kafka_libs() -> Path:
    home = os.environ.get("KAFKA_HOME")
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    candidates = [Path(home) / "libs"] if home else []
    candidates += sorted(cache.glob("kafka-*/libs"))
    for libs in candidates:
        if any(libs.glob("kafka-clients-*.jar")):
            return libs
    message = f"no kafka-clients jar in {[str(c) for c in candidates]}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
    raise AssertionError  # unreachable


def java_label_producer(tmp_path: Path) -> list[str]:
    """The command that runs LabelProducer, compiled here with javac."""
    javac = shutil.which("javac")
    assert javac is not None, "javac is needed to build the Java label producer"
    libs = _kafka_libs()
    classes = tmp_path / "classes"
    subprocess.run([javac, "-cp", f"{libs}/*", "-d", str(classes), str(JAVA_SOURCE)],
                   check=True, capture_output=True)  # fmt: skip
    return ["java", "-cp", f"{libs}/*{os.pathsep}{classes}", "LabelProducer"]


def test_labels_from_any_client_and_partitioner_join(
    kafka: KafkaUnderTest, registry: Path, new_topic: TopicFactory, tmp_path: Path
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    infer_topics = {"in": new_topic(4, "-in"), "out": new_topic(4, "-pred"),
                    "dlq": new_topic(1, "-dlq")}  # fmt: skip
    n = 2000
    produce_all(kafka.bootstrap_servers, infer_topics["in"],
                events(feature_rows(n, 11), features, "j"))  # fmt: skip
    infer = WorkerProcess(*infer_args(kafka, model_dir, infer_topics))
    try:
        predictions = read_topic(kafka.bootstrap_servers, infer_topics["out"], n)
    finally:
        infer.stop()
    predicted = {r.json()["event_id"]: r.json()["label"] for r in predictions}
    assert len(predicted) == n
    # infer keys predictions with the Java clients' hashing.
    for record in predictions[:200]:
        assert record.partition == murmur2_partition(record.key or b"", 4)

    # The labels topic has 3 partitions, not 4; a third of the labels each way.
    topics = {"predictions": infer_topics["out"], "labels": new_topic(3, "-labels"),
              "alerts": new_topic(1, "-alerts")}  # fmt: skip
    labels = [(f"j-{i}", json.dumps({"event_id": f"j-{i}", "label": predicted[f"j-{i}"]}))
              for i in range(n)]  # fmt: skip
    lines = tmp_path / "java-labels.tsv"
    lines.write_text("".join(f"{key}\t{value}\n" for key, value in labels[:700]))
    sent = subprocess.run([*java_label_producer(tmp_path), kafka.bootstrap_servers,
                           topics["labels"], str(lines)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    plain = Producer({"bootstrap.servers": kafka.bootstrap_servers})  # librdkafka's default
    rng = random.Random(5)
    for i, (key, value) in enumerate(labels[700:], start=700):
        if i < 1400:
            plain.produce(topics["labels"], value, key)
        else:
            plain.produce(topics["labels"], value, key, partition=rng.randrange(3))
    assert plain.flush(30) == 0

    monitor = WorkerProcess(*monitor_args(kafka, topics, tmp_path / "state"))
    try:
        summary = wait_for_summary(monitor, {"joined": n, "pending_predictions": 0,
                                             "pending_labels": 0})  # fmt: skip
    finally:
        code, _ = monitor.stop()
    assert code == 0
    assert summary["versions"]["bc/v1"]["window_accuracy"] == 1.0  # each label is its prediction
    assert summary["duplicate_labels"] == 0
