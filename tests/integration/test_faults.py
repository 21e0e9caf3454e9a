"""`scorestream infer` under faults, in both guarantees: a DLQ that refuses, a second worker
joining, SIGTERM mid-stream, a broker absent at start and gone for 30 s mid-run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer

from tests.conftest import KafkaUnderTest, TopicFactory, free_base_port
from tests.integration.test_infer import events, feature_rows, infer_args
from tests.integration.workers import (
    WorkerProcess,
    committed_offset,
    iter_chunks,
    read_topic,
    set_topic_config,
)
from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import produce_all
from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout
from workers.local_kafka.runtime import default_cache_dir
from workers.model_store import load_version


def wait_until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    return sum(max(committed_offset(bootstrap, group, topic, p), 0) for p in range(partitions))


def test_a_dlq_that_refuses_pauses_only_its_partition_and_loses_nothing(
    kafka: KafkaUnderTest, new_topic: TopicFactory, registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    topics = {"in": new_topic(2, "-in"), "out": new_topic(2, "-out"), "dlq": new_topic(1, "-dlq")}
    # Every dead letter is larger than the DLQ accepts.
    set_topic_config(kafka.bootstrap_servers, topics["dlq"], "max.message.bytes", "200")
    good = events(feature_rows(2000, 11), features, "p")
    poison = json.dumps({"event_id": "poison", "features": "x" * 400}).encode()
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    for i, (key, value) in enumerate(good):
        partition = i % 2
        if i == 500:  # partition 0: the poison sits before 750 of its good events
            producer.produce(topics["in"], poison, b"poison", partition=0)
        producer.produce(topics["in"], value, key, partition=partition)
    assert producer.flush(30) == 0

    worker = WorkerProcess(*infer_args(kafka, model_dir, topics,
                                       "--processing-guarantee", guarantee))  # fmt: skip
    try:
        paused = worker.wait_for("partition_paused")
        assert paused["partition"] == f"{topics['in']}[0]"
        assert "too large" in paused["reason"].lower()
        # Partition 1 flows on to its end; partition 0 never commits past the poison.
        group = f"g-{topics['in']}"

        def committed(partition: int) -> int:
            return committed_offset(kafka.bootstrap_servers, group, topics["in"], partition)

        wait_until(lambda: committed(1) == 1000)
        assert committed(0) <= 250
        worker.wait_for("partition_resumed")  # it retries, and is paused again
        assert committed(0) <= 250

        set_topic_config(kafka.bootstrap_servers, topics["dlq"], "max.message.bytes", "1048576")
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 2000)
        dead = read_topic(kafka.bootstrap_servers, topics["dlq"], 1)
        wait_until(lambda: committed(0) == 1001)
    finally:
        code, _ = worker.stop()
    assert code == 0
    ids = [r.key for r in predictions]
    assert set(ids) == {key for key, _ in good}
    if guarantee == "exactly-once":
        assert len(ids) == len(good)
    assert [(r.key, r.value, r.headers["error.type"]) for r in dead] == [
        (b"poison", poison, b"schema")
    ]
    backoffs = [e["retry_in_s"] for e in worker.events("partition_paused")]
    assert backoffs == sorted(backoffs)


def test_a_second_worker_joining_rebalances_without_loss_or_duplicates(
    kafka: KafkaUnderTest, new_topic: TopicFactory, registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    topics = {"in": new_topic(4, "-in"), "out": new_topic(4, "-out"), "dlq": new_topic(1, "-dlq")}
    good = events(feature_rows(20_000, 12), features, "j")
    stop_feeding = threading.Event()

    def feed() -> None:  # a steady stream, so the rebalance happens mid-flow
        for chunk in iter_chunks(good, 1000):
            produce_all(kafka.bootstrap_servers, topics["in"], chunk)
            if stop_feeding.wait(0.2):
                return

    feeder = threading.Thread(target=feed)
    args = infer_args(kafka, model_dir, topics, "--processing-guarantee", guarantee)
    first = WorkerProcess(*args)
    second = None
    feeder.start()
    try:
        read_topic(kafka.bootstrap_servers, topics["out"], 3000, settle_s=0)
        second = WorkerProcess(*args)
        second.wait_for("partitions_assigned")
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], len(good), settle_s=3)
    finally:
        stop_feeding.set()
        feeder.join()
        codes = [w.stop()[0] for w in (first, second) if w is not None]
    assert codes == [0, 0]
    assert first.events("partitions_revoked")  # the hand-over happened
    ids = [r.key for r in predictions]
    assert len(set(ids)) == len(good)
    assert len(ids) == len(good), f"{len(ids) - len(good)} duplicates across the rebalance"


def test_sigterm_finishes_the_batch_commits_and_exits_within_5_s(
    kafka: KafkaUnderTest, new_topic: TopicFactory, registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    topics = {"in": new_topic(4, "-in"), "out": new_topic(4, "-out"), "dlq": new_topic(1, "-dlq")}
    stream = events(feature_rows(60_000, 13), features, "s")
    produce_all(kafka.bootstrap_servers, topics["in"], stream)
    worker = WorkerProcess(*infer_args(kafka, model_dir, topics,
                                       "--processing-guarantee", guarantee))  # fmt: skip
    read_topic(kafka.bootstrap_servers, topics["out"], 5000, settle_s=0)
    code, seconds = worker.stop(signal.SIGTERM)
    assert code == 0
    assert seconds < 5
    assert worker.events("infer_stopped")
    # Everything it published is committed, and nothing it committed is unpublished.
    produced = read_topic(kafka.bootstrap_servers, topics["out"], 60_000, timeout_s=5, settle_s=1)
    committed = committed_total(kafka.bootstrap_servers, f"g-{topics['in']}", topics["in"], 4)
    assert 5000 <= committed <= 60_000
    assert len({r.key for r in produced}) == committed
    if guarantee == "exactly-once":
        assert len(produced) == committed


def test_a_broker_absent_at_start_and_gone_for_30_s_loses_nothing(
    tmp_path: Path, registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    layout = ClusterLayout(1, free_base_port(2), tmp_path / "kafka")
    bootstrap = layout.bootstrap_servers
    topics = {"in": "outage-in", "out": "outage-out", "dlq": "outage-dlq"}
    fake = KafkaUnderTest(bootstrap, None, None)
    mode = ("--processing-guarantee", guarantee)
    worker = WorkerProcess(*infer_args(fake, model_dir, topics, *mode))
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    try:
        # No broker yet: the worker waits, says so, and backs off.
        worker.wait_for("kafka_unreachable")
        deadline = time.monotonic() + 60
        while len(worker.events("kafka_unreachable")) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        retries = [e["retry_in_s"] for e in worker.events("kafka_unreachable")]
        assert retries == sorted(retries)
        assert retries[-1] > retries[0]

        cluster.start(layout, cache, os.environ.get("KAFKA_HOME"), detach=False)
        create_topics(bootstrap, {topics["in"]: 2})
        rows = feature_rows(6000, 14)
        produce_all(bootstrap, topics["in"], events(rows[:3000], features, "o1"))
        worker.wait_for("infer_started", timeout_s=90)
        read_topic(bootstrap, topics["out"], 3000, settle_s=0)

        # The broker goes away for 30 s: the worker keeps running and logs without a storm.
        lines_before = len(worker.lines)
        cluster.stop(layout)
        time.sleep(30)  # the outage itself: nothing to wait for but time
        assert worker.proc.poll() is None
        outage_lines = len(worker.lines) - lines_before
        assert outage_lines < 120, worker.lines[-20:]
        cluster.start(layout, cache, os.environ.get("KAFKA_HOME"), detach=False)
        produce_all(bootstrap, topics["in"], events(rows[3000:], features, "o2"))
        predictions = read_topic(bootstrap, topics["out"], 6000, timeout_s=120)
        code, _ = worker.stop()
    finally:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGKILL)
        cluster.stop(layout)
    assert code == 0
    ids = {r.key for r in predictions}
    assert len(ids) == 6000
    if guarantee == "exactly-once":
        assert len(predictions) == 6000
