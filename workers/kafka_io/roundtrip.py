"""Send keyed records through a topic and read them back: the smallest proof a cluster works."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from workers.kafka_io.admin import _QUIET


@dataclass(frozen=True, slots=True)
class Received:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int  # the record's timestamp: CreateTime or LogAppendTime, as the topic keeps

    def json(self) -> Any:  # noqa: ANN401 - whatever the JSON value holds
        return json.loads(self.value or b"")


def _received(msg: Message) -> Received | None:
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:  # only unset on error events
        return None
    raw_headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    headers = {k: v or b"" for k, v in raw_headers}
    return Received(partition, offset, msg.key(), msg.value(), headers, msg.timestamp()[1])


def produce_all(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    config: Mapping[str, str] | None = None,
) -> int:
    """Produce with acks=all and the Java clients' key hashing, as every scorestream producer
    does; raise unless the broker acknowledged every record. `config`: extra client settings
    (TLS, SASL)."""
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer(
        {
            **(config or {}),
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "logger": _QUIET,
            **(config or {}),
        }
    )
    sent = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain, then retry
        sent += 1
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise KafkaException(failures[0] if failures else f"{remaining} records undelivered")
    return sent


def consume_exact(  # noqa: PLR0913
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    expected: int,
    timeout_s: float = 60.0,
    *,
    settle_s: float = 1.0,
) -> list[Received]:
    """Read `expected` records as a consumer group, then `settle_s` longer to catch extras."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "logger": _QUIET,
        }
    )
    received: list[Received] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - public constant
                        continue
                    raise KafkaException(err)
                record = _received(msg)
                if record is not None:
                    received.append(record)
            if len(received) >= expected and quiet_until is None:
                quiet_until = time.monotonic() + settle_s
        if received:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return received


def read_to_end(
    bootstrap_servers: str,
    topic: str,
    kafka_config: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> list[Received]:
    """Every committed record of `topic`, from the start to the end of each partition as it was
    when reached; no group offsets are committed."""
    consumer = Consumer(
        {
            **(kafka_config or {}),
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"scorestream-read-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "logger": _QUIET,
        }
    )
    received: list[Received] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise KafkaException(described.error if described else f"no topic {topic}")
        partitions = sorted(described.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within {timeout_s} s")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err, partition = msg.error(), msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition is not None:  # noqa: SLF001
                        at_end.add(partition)
                        continue
                    raise KafkaException(err)
                record = _received(msg)
                if record is not None:
                    received.append(record)
    finally:
        consumer.close()
    return received
