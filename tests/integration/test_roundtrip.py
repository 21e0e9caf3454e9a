"""The broker the tests use is real and keeps what it acknowledges, in order."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.conftest import KafkaUnderTest, TopicFactory
from workers.kafka_io.admin import cluster_id
from workers.kafka_io.clients import next_batch
from workers.kafka_io.roundtrip import produce_all
from workers.local_kafka.cluster import read_pid

MESSAGES = 10_000


def test_broker_is_a_kafka_jvm_started_by_the_project(kafka: KafkaUnderTest) -> None:
    if kafka.layout is None:
        # An external broker was given; it must at least answer with a cluster id.
        assert cluster_id(kafka.bootstrap_servers)
        return
    node = kafka.layout.nodes[0]
    pid = read_pid(node)
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert Path(cmdline[0].decode()).name == "java"
    assert b"kafka.Kafka" in cmdline
    assert str(node.properties_path).encode() in cmdline
    # The cluster answering on the port is the one this project formatted.
    assert cluster_id(kafka.bootstrap_servers) == kafka.cluster_id


def test_keyed_messages_round_trip_in_order(kafka: KafkaUnderTest, new_topic: TopicFactory) -> None:
    topic = new_topic(partitions=4)
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    # Without idempotence, a retried first batch (leader not yet known for a fresh topic) can
    # land after later ones: order per partition is only promised with it on.
    producer = Producer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    for seq in range(MESSAGES):
        producer.produce(
            topic, key=f"key-{seq % 97}", value=str(seq).encode(), on_delivery=on_delivery
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    by_partition: dict[int, list[tuple[int, int, bytes]]] = defaultdict(list)
    received = 0
    try:
        for _ in range(600):
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None
                assert offset is not None
                key, value = msg.key(), msg.value()
                assert key is not None
                assert value is not None
                by_partition[partition].append((offset, int(value), key))
                received += 1
            if received >= MESSAGES:
                break
        # Anything beyond the expected count would be a duplicate: give it a moment to show.
        extra = consumer.consume(num_messages=10, timeout=1.0)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert received == MESSAGES
    assert extra == []
    assert sorted(int(v) for rows in by_partition.values() for _, v, _ in rows) == list(
        range(MESSAGES)
    )
    assert len(by_partition) == 4
    key_partition: dict[bytes, int] = {}
    for partition, rows in by_partition.items():
        offsets = [offset for offset, _, _ in rows]
        sequence = [seq for _, seq, _ in rows]
        assert offsets == list(range(len(rows)))  # contiguous from 0: nothing lost or repeated
        assert sequence == sorted(sequence)  # produce order kept within the partition
        for _, _, key in rows:
            assert key_partition.setdefault(key, partition) == partition


def test_next_batch_takes_what_has_arrived_without_waiting_to_fill(
    kafka: KafkaUnderTest, new_topic: TopicFactory
) -> None:
    topic = new_topic(partitions=1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for seq in range(30):
        producer.produce(topic, str(seq).encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 30 and time.monotonic() < deadline:
            started = time.monotonic()
            batch = next_batch(consumer, 1000, 20.0)
            # consume(1000, 20) would sit out the 20 s waiting for 970 more events.
            assert time.monotonic() - started < 10
            assert all(m.error() is None for m in batch)
            got += [m.value() or b"" for m in batch]
        assert got == [str(seq).encode() for seq in range(30)]
        started = time.monotonic()
        assert next_batch(consumer, 1000, 0.5) == []  # nothing left: waits the timeout
        assert time.monotonic() - started >= 0.45
        producer.produce(topic, b"late")
        producer.flush(30)
        assert [m.value() for m in next_batch(consumer, 1000, 20.0)] == [b"late"]
    finally:
        consumer.close()


@pytest.mark.parametrize("incremental", [False, True], ids=["assign", "incremental_assign"])
def test_a_partition_paused_before_it_was_taken_away_flows_when_it_comes_back(
    kafka: KafkaUnderTest, new_topic: TopicFactory, incremental: bool
) -> None:
    """Issue 18.6: the infer worker forgets its record of a pause when the partition is
    revoked. Checked here: this librdkafka does not keep the pause across an unassignment, so
    a partition that comes back flows (the worker also resumes what it is assigned, in case a
    client version does keep it)."""
    topic = new_topic(1)
    produce_all(kafka.bootstrap_servers, topic, [(b"k", b"v")] * 5)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    try:
        if incremental:
            consumer.incremental_assign([TopicPartition(topic, 0, 0)])
            consumer.pause([TopicPartition(topic, 0)])
            consumer.incremental_unassign([TopicPartition(topic, 0)])
            consumer.incremental_assign([TopicPartition(topic, 0, 0)])
        else:
            consumer.assign([TopicPartition(topic, 0, 0)])
            consumer.pause([TopicPartition(topic, 0)])
            consumer.unassign()
            consumer.assign([TopicPartition(topic, 0, 0)])
        got: list[object] = []
        for _ in range(20):
            got += [m for m in consumer.consume(10, timeout=0.5) if m.error() is None]
            if len(got) == 5:
                break
        assert len(got) == 5
    finally:
        consumer.close()
