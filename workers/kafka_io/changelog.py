"""Per-partition state kept in a compacted Kafka topic, so it needs no shared disk.

At each checkpoint a stage writes a snapshot of every partition it holds to partition n of its
changelog topic (in the transaction that also carries its outputs and consumed offsets, when
exactly-once). A snapshot larger than one record is split in chunks. Snapshots alternate
between two slots, keyed `<partition>/<slot>/<i>`: compaction keeps the newest value of each
key, so a snapshot torn half-way (a crash after its first chunk) can only spoil its own slot,
and the last complete one, in the other, survives. A reader takes the last snapshot in the log
whose chunks all arrived. Writing snapshots instead of one record per buffered event keeps the
changelog's traffic to one write per partition per checkpoint whatever the event rate; the
price is that each write is the whole buffer (see the README's sizing notes).

An owner (at-least-once, where no transaction fences a stalled former owner) first writes a
claim, keyed `<partition>/claim/<writer>`; from a claim on, only its writer's snapshots count,
so a checkpoint of an owner that stalled past its session never wins over its successor's.
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from workers.kafka_io.clients import make_consumer

# Under the brokers' default message.max.bytes (1 MiB), with room for the record's overhead.
CHUNK_BYTES = 512 * 1024
# writer id (8 bytes), snapshot sequence, chunk index, chunk count.
_HEADER = struct.Struct(">8sQII")
_CLAIM = b"scorestream-claim/1:"
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
# Complete snapshots kept per partition while reading: the newest that decodes is used.
KEPT = 4


class ChangelogError(Exception):
    """The changelog could not be read back; the message names the fix."""


class Snapshot(NamedTuple):
    slot: int
    blob: bytes


def snapshot_records(  # noqa: PLR0913, PLR0917 - where a snapshot goes, and what it is
    partition: int,
    writer: bytes,
    seq: int,
    blob: bytes,
    slot: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[tuple[bytes, bytes]]:
    """(key, value) records holding `blob` as snapshot `seq` of `partition`, in `slot`."""
    chunks = [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]
    return [
        (f"{partition}/{slot}/{i}".encode(), _HEADER.pack(writer, seq, i, len(chunks)) + chunk)
        for i, chunk in enumerate(chunks)
    ]


def claim_record(partition: int, writer: bytes) -> tuple[bytes, bytes]:
    """(key, value) of `writer`'s claim of `partition`: its snapshots alone count after it."""
    return f"{partition}/claim/{writer.hex()}".encode(), _CLAIM + writer


def new_writer_id() -> bytes:
    return os.urandom(8)


@dataclass(slots=True)
class Assembler:
    """Reads one changelog partition's records in log order; `found` holds the last complete
    snapshots, newest last (two writers' chunks may interleave: a stalled old owner's)."""

    found: deque[Snapshot] = field(default_factory=lambda: deque(maxlen=KEPT))
    parts: dict[tuple[bytes, int], dict[int, bytes]] = field(default_factory=dict)
    owner: bytes | None = None
    # Records that are no chunk of a snapshot, or a chunk of a writer that no longer owns it.
    ignored: int = 0

    @property
    def latest(self) -> bytes | None:
        return self.found[-1].blob if self.found else None

    def add(self, value: bytes | None, key: bytes | None = None) -> None:
        if value is None:
            return  # a tombstone
        if value.startswith(_CLAIM):
            self.owner = value[len(_CLAIM) :]
            self.parts.clear()  # what anyone left unfinished before a claim never will be
            return
        if len(value) < _HEADER.size:
            self.ignored += 1  # no snapshot of ours
            return
        writer, seq, index, count = _HEADER.unpack_from(value)
        if index >= count or (self.owner is not None and writer != self.owner):
            # No chunk of ours, or a former owner's, written after its successor's claim.
            self.ignored += 1
            return
        chunks = self.parts.setdefault((writer, seq), {})
        chunks[index] = value[_HEADER.size :]
        if len(chunks) == count:
            blob = b"".join(chunks[i] for i in range(count))
            self.found.append(Snapshot(_slot_of(key), blob))
            # Anything this writer left unfinished before this one never will be.
            for other in [k for k in self.parts if k[0] == writer and k[1] <= seq]:
                del self.parts[other]


def _slot_of(key: bytes | None) -> int:
    parts = (key or b"").split(b"/")
    return 1 if len(parts) == 3 and parts[1] == b"1" else 0


def read_snapshots(
    bootstrap_servers: str,
    kafka_config: Mapping[str, str],
    topic: str,
    partitions: Iterable[int],
    *,
    timeout_s: float = 120.0,
) -> dict[int, Assembler]:
    """Each partition's changelog as read: its last complete snapshots, newest last."""
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
                found[msg.partition() or 0].add(msg.value(), msg.key())
    finally:
        consumer.close()
    return found


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
