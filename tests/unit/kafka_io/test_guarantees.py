"""The delivery guarantees' bookkeeping against a stand-in consumer (no broker): what they
seek to, pause and resume."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from workers.kafka_io.guarantees import AtLeastOnce, ExactlyOnce
from workers.kafka_io.infer_settings import InferSettings
from workers.metrics import InferMetrics

pytestmark = pytest.mark.unit

SETTINGS = InferSettings(
    bootstrap_servers="127.0.0.1:1", input_topic="in", output_topic="out", dlq_topic="dlq",
    group_id="g", batch_size=10, batch_timeout_ms=10, kafka_config={}, max_value_bytes=1000,
)  # fmt: skip


class StandInConsumer:
    def __init__(self, committed_failures: int = 0, committed_at: int = 42) -> None:
        self.committed_failures = committed_failures
        self.committed_at = committed_at
        self.calls: list[tuple[str, Any]] = []

    def committed(self, wanted: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls.append(("committed", timeout))
        if self.committed_failures:
            self.committed_failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator away"))  # noqa: SLF001
        return [TopicPartition(tp.topic, tp.partition, self.committed_at) for tp in wanted]

    def seek(self, tp: TopicPartition) -> None:
        self.calls.append(("seek", (tp.topic, tp.partition, tp.offset)))

    def pause(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("pause", [(tp.topic, tp.partition) for tp in tps]))

    def resume(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("resume", [(tp.topic, tp.partition) for tp in tps]))


def test_exactly_once_rewinds_to_what_is_committed_once_it_can_be_read() -> None:
    """After a stuck or failed commit the worker must re-read from the committed offsets; if
    they cannot be read at first, guessing the transaction's first offset could process again
    what a commit that did land already covered."""
    consumer = StandInConsumer(committed_failures=2, committed_at=42)
    eos = ExactlyOnce(SETTINGS, consumer, InferMetrics(), "g.test")  # type: ignore[arg-type]
    eos._pending = {("in", 0): (10, 42)}  # noqa: SLF001 - the transaction read 10..41
    eos._rewind_to_committed("stuck commit")  # noqa: SLF001
    assert [c for c in consumer.calls if c[0] == "committed"] == [("committed", 10)] * 3
    assert [c for c in consumer.calls if c[0] == "seek"] == [("seek", ("in", 0, 42))]


def test_a_paused_partition_that_is_revoked_is_resumed_and_so_is_every_assigned_one() -> None:
    """librdkafka keeps a partition's pause across a revoke and a later assignment: the
    worker lifts it itself."""
    consumer = StandInConsumer()
    alo = AtLeastOnce(SETTINGS, consumer, InferMetrics())  # type: ignore[arg-type]
    alo._pause(("in", 1), "the DLQ refused a record")  # noqa: SLF001
    assert ("pause", [("in", 1)]) in consumer.calls
    alo.on_lost([TopicPartition("in", 1)])
    assert ("resume", [("in", 1)]) in consumer.calls
    consumer.calls.clear()
    alo.on_assign([TopicPartition("in", 1), TopicPartition("in", 2)])
    assert consumer.calls == [("resume", [("in", 1), ("in", 2)])]
