"""Per-partition state kept in a compacted Kafka topic, so it needs no shared disk.

At each checkpoint a stage writes a snapshot of every partition it holds to partition n of its
changelog topic (in the transaction that also carries its outputs and consumed offsets, when
exactly-once). A snapshot larger than one record is split in chunks keyed `<partition>/<i>`;
compaction keeps the newest value of each key, so the newest snapshot always survives whole,
and a reader takes the last snapshot in the log whose chunks all arrived. Writing snapshots
instead of one record per buffered event keeps the changelog's traffic to one write per
partition per checkpoint whatever the event rate; the price is that each write is the whole
buffer (see the README's sizing notes).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from workers.kafka_io.clients import make_consumer

# Under the brokers' default message.max.bytes (1 MiB), with room for the record's overhead.
CHUNK_BYTES = 512 * 1024
# writer id (8 bytes), snapshot sequence, chunk index, chunk count.
_HEADER = struct.Struct(">8sQII")
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


class ChangelogError(Exception):
    """The changelog could not be read back; the message names the fix."""


def snapshot_records(
    partition: int, writer: bytes, seq: int, blob: bytes, chunk_bytes: int = CHUNK_BYTES
) -> list[tuple[bytes, bytes]]:
    """(key, value) records holding `blob` as snapshot `seq` of `partition`."""
    chunks = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    return [
        (f"{partition}/{i}".encode(), _HEADER.pack(writer, seq, i, len(chunks)) + chunk)
        for i, chunk in enumerate(chunks)
    ]


def new_writer_id() -> bytes:
    return os.urandom(8)


@dataclass(slots=True)
class Assembler:
    """Reads one changelog partition's records in log order; `latest` is the last snapshot
    whose chunks all came (two writers' chunks may interleave: a stalled old owner's)."""

    latest: bytes | None = None
    parts: dict[tuple[bytes, int], dict[int, bytes]] = field(default_factory=dict)

    def add(self, value: bytes | None) -> None:
        if value is None or len(value) < _HEADER.size:
            return  # a tombstone or no snapshot of ours
        writer, seq, index, count = _HEADER.unpack_from(value)
        key = (writer, seq)
        chunks = self.parts.setdefault(key, {})
        chunks[index] = value[_HEADER.size :]
        if len(chunks) == count:
            self.latest = b"".join(chunks[i] for i in range(count))
            # Anything this writer left unfinished before this one never will be.
            for other in [k for k in self.parts if k[0] == writer and k[1] <= seq]:
                del self.parts[other]


def read_snapshots(
    bootstrap_servers: str,
    kafka_config: Mapping[str, str],
    topic: str,
    partitions: Iterable[int],
    *,
    timeout_s: float = 120.0,
) -> dict[int, bytes]:
    """The newest committed snapshot of each partition that has one."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    consumer = make_consumer(
        bootstrap_servers,
        kafka_config,
        defaults={"fetch.wait.max.ms": 50},
        required={
            "group.id": f"scorestream-changelog-reader-{topic}",
            "enable.auto.commit": False,
            # Only snapshots whose transaction committed: an aborted one never happened.
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        },
        name="changelog-reader",
    )
    found: dict[int, Assembler] = {p: Assembler() for p in wanted}
    deadline = time.monotonic() + timeout_s
    try:
        todo = {p for p in wanted if _holds_records(consumer, topic, p, deadline)}
        if todo:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(todo)])
        while todo:
            if time.monotonic() > deadline:
                raise ChangelogError(
                    f"reading {topic} partitions {sorted(todo)} took over {timeout_s:.0f} s: "
                    "check that the brokers are up and that this client may read it"
                )
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                        todo.discard(msg.partition() or 0)
                    continue
                found[msg.partition() or 0].add(msg.value())
    finally:
        consumer.close()
    return {p: a.latest for p, a in found.items() if a.latest is not None}


def _holds_records(consumer: Consumer, topic: str, partition: int, deadline: float) -> bool:
    """Whether the partition holds anything. A topic made a moment ago may not have its leader
    known yet ("not leader", "unknown partition"): asked again until `deadline`."""
    backoff = 0.1
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException as exc:
            err = exc.args[0]
            if time.monotonic() + backoff > deadline:
                raise ChangelogError(
                    f"cannot read {topic}[{partition}]: {err.str()}; check that the brokers "
                    "are up and that this client may read it"
                ) from exc
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            continue
        return bool(high > low)


def partition_count(metadata: Any, topic: str) -> int | None:  # noqa: ANN401 - ClusterMetadata
    meta = metadata.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return None
    return len(meta.partitions)
