"""Client helpers without a broker: how errors are told, retries, the bounded call."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from structlog.testing import capture_logs

from workers.kafka_io.clients import (
    CallStuck,
    ErrorReporter,
    bounded_call,
    committed_offsets,
    retry_until_ready,
)
from workers.kafka_io.monitor_loop import _starting_at

pytestmark = pytest.mark.unit


def test_a_loading_coordinator_is_told_as_progress_not_as_a_failure() -> None:
    report = ErrorReporter("infer-producer")
    loading = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "Coordinator load in progress")
    with capture_logs() as logs:
        report(loading)
        report(loading)  # within the interval: counted, not logged again
    assert [(e["event"], e["log_level"]) for e in logs] == [("kafka_coordinator_loading", "info")]
    assert "normal" in logs[0]["note"]


def test_a_real_client_error_is_still_a_warning() -> None:
    report = ErrorReporter("infer-consumer")
    with capture_logs() as logs:
        report(KafkaError(KafkaError._TRANSPORT, "Connection refused"))  # noqa: SLF001
    assert [(e["event"], e["log_level"]) for e in logs] == [("kafka_client_error", "warning")]


def test_retry_until_ready_waits_out_a_loading_coordinator_quietly() -> None:
    attempts: list[int] = []

    def call() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            code = KafkaError.COORDINATOR_LOAD_IN_PROGRESS
            raise KafkaException(KafkaError(code, "Coordinator load in progress"))

    with capture_logs() as logs:
        assert retry_until_ready(call, threading.Event(), what="init", bootstrap_servers="b:1")
    events = [e["event"] for e in logs]
    assert "kafka_unreachable" not in events
    assert events[0] == "kafka_coordinator_loading"


def test_retry_until_ready_lets_recover_replace_a_fatal_client() -> None:
    replaced: list[KafkaError | None] = []
    attempts: list[int] = []

    def call() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))  # noqa: SLF001

    stop = threading.Event()
    assert retry_until_ready(call, stop, what="x", bootstrap_servers="b:1", recover=replaced.append)
    assert len(replaced) == 1
    assert replaced[0] is not None
    assert replaced[0].fatal()
    with pytest.raises(KafkaException):  # without a recover, fatal still raises
        retry_until_ready(
            lambda: (_ for _ in ()).throw(
                KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))  # noqa: SLF001
            ),
            stop,
            what="x",
            bootstrap_servers="b:1",
        )


def test_bounded_call_returns_raises_or_gives_up() -> None:
    bounded_call(lambda: None, 1.0)
    with pytest.raises(ValueError, match="boom"):
        bounded_call(lambda: (_ for _ in ()).throw(ValueError("boom")), 1.0)
    started = time.monotonic()
    with pytest.raises(CallStuck):
        bounded_call(lambda: time.sleep(5), 0.1)
    assert time.monotonic() - started < 2


def test_an_assigned_partition_reads_as_words() -> None:
    assert _starting_at(TopicPartition("predictions", 3, 1200)) == (
        "predictions[3] from offset 1200 (checkpoint)"
    )
    fresh = _starting_at(TopicPartition("labels", 0, -1001))
    assert fresh == "labels[0] from the committed offset (the earliest when none)"
    assert "-1001" not in fresh


def test_committed_offsets_are_asked_again_until_the_coordinator_answers() -> None:
    class Coordinator:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        def committed(self, wanted: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            assert timeout > 0
            if self.failures:
                self.failures -= 1
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))  # noqa: SLF001
            return [TopicPartition(tp.topic, tp.partition, 7) for tp in wanted]

    wanted = [TopicPartition("t", 0)]
    stop = threading.Event()
    got = committed_offsets(Coordinator(2), wanted, stop)  # type: ignore[arg-type]
    assert got is not None
    assert [tp.offset for tp in got] == [7]
    stop.set()  # stopping: the worker does not wait for an answer that may never come
    assert committed_offsets(Coordinator(5), wanted, stop) is None  # type: ignore[arg-type]
