"""The monitor worker's bookkeeping around rebalances, with clients that never reach a broker:
what it keeps, takes back and refuses to write."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from tests.unit.kafka_io.faults import RefusingProducer, bug_on_call
from workers.checkpoint import CheckpointStore
from workers.core.monitor import MonitorConfig, MonitorState
from workers.kafka_io import monitor_loop
from workers.kafka_io.monitor_loop import MonitorSettings, MonitorWorker

pytestmark = pytest.mark.unit


class NoConsumer:
    """Stands in for the group consumer (a real one would wait for the missing coordinator
    when closed)."""

    def assign(self, _partitions: list[TopicPartition]) -> None: ...

    def unassign(self) -> None: ...

    def seek(self, _partition: TopicPartition) -> None: ...

    def commit(self, **_how: object) -> None: ...

    def close(self) -> None: ...


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MonitorWorker]:
    monkeypatch.setattr(monitor_loop, "make_consumer", lambda *_a, **_k: NoConsumer())
    settings = MonitorSettings(
        bootstrap_servers="127.0.0.1:1", predictions_topic="preds", labels_topic="labels",
        alerts_topic="alerts", group_id="g", kafka_config={"message.timeout.ms": "1000"},
        state_dir=tmp_path, config=MonitorConfig(window=100),
    )  # fmt: skip
    made = MonitorWorker(settings)
    yield made
    made.consumer.close()
    made.store.close()


def _join_one(worker: MonitorWorker, i: int) -> None:
    body = {"event_id": f"e{i}", "model_name": "m", "model_version": 1, "label": 1,
            "event_time": 1000 + i}  # fmt: skip
    worker.state.on_prediction(0, json.dumps(body).encode(), 0)
    label = json.dumps({"event_id": f"e{i}", "label": 1, "label_time": 1000 + i}).encode()
    worker.state.on_forwarded(0, label, 0, (0, i), 0)
    worker.offsets[("preds", 0)] = i + 1


def _joined(worker: MonitorWorker) -> int:
    versions = worker.state.metrics()
    return int(versions["m/v1"]["joined"]) if versions else 0


PARTITIONS = [TopicPartition("preds", 0), TopicPartition("g-labels-repartition", 0)]


def test_a_revoke_whose_checkpoint_fails_takes_back_what_was_counted_since(
    worker: MonitorWorker,
) -> None:
    worker._on_assign(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    for i in range(5):
        _join_one(worker, i)
    assert worker.checkpoint()
    for i in range(5, 8):
        _join_one(worker, i)
    assert _joined(worker) == 8
    # An alert the broker has not acknowledged: the checkpoint on revoke cannot be saved.
    worker._unacked_alerts[1] = (b"m", b"{}")  # noqa: SLF001
    worker._on_revoke(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    # The next owner re-reads events 5-7 from the checkpoint: they are no longer counted here.
    assert _joined(worker) == 5


def test_lost_partitions_are_discarded_not_written(worker: MonitorWorker) -> None:
    worker._on_assign(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    for i in range(4):
        _join_one(worker, i)
    assert worker.checkpoint()
    _join_one(worker, 4)
    worker._on_lost(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    assert _joined(worker) == 4
    assert worker.store.offset("preds", 0) == 4
    assert worker.state.joins == {}


def test_a_stalled_owner_does_not_overwrite_the_new_owners_checkpoint(
    worker: MonitorWorker, tmp_path: Path
) -> None:
    worker._on_assign(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    for i in range(3):
        _join_one(worker, i)
    assert worker.checkpoint()
    # Meanwhile the group gave the partitions to another instance sharing the state dir.
    other = CheckpointStore(tmp_path / "monitor.sqlite", worker.store_identity, "other")
    other.claim([("preds", 0), ("g-labels-repartition", 0)])
    other.close()
    _join_one(worker, 3)
    assert not worker.checkpoint()
    assert worker.store.offset("preds", 0) == 3  # not 4: the stale save was refused
    assert _joined(worker) == 3  # and this instance went back to what it had stored


def test_a_repartition_records_origin_is_read_defensively() -> None:
    def origin(*headers: tuple[str, bytes | None]) -> tuple[bool, tuple[int, int]]:
        return monitor_loop.forwarded_from(Message(headers=list(headers), offset=41))

    assert origin(("scorestream.source", b"2:17")) == (False, (2, 17))
    assert origin(("scorestream.prediction_source", b"0:5")) == (True, (0, 5))
    # Foreign or garbled headers: a label taken as it comes, placed by its own offset.
    for value in (b"x:1", b"1:-3", b"", None, b"1:2:3", "é:1".encode(), b"9" * 60 + b":1"):
        assert origin(("scorestream.source", value)) == (False, (-1, 41)), value
    assert origin() == (False, (-1, 41))


def test_a_bug_mid_batch_checkpoints_nothing_of_that_batch(
    worker: MonitorWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker._on_assign(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    for i in range(3):
        _join_one(worker, i)
    assert worker.checkpoint()
    batch = [
        Message(topic="g-labels-repartition", partition=0, offset=3 + i, timestamp=(1, 0),
                value=json.dumps({"event_id": f"e{i}", "label": 1}).encode(),
                headers=[("scorestream.source", f"0:{10 + i}".encode())])
        for i in range(3, 6)
    ]  # fmt: skip
    bug_on_call(monkeypatch, MonitorState, "on_forwarded", 2)
    monkeypatch.setattr(worker.consumer, "consume", lambda **_k: batch, raising=False)
    stop = threading.Event()
    with pytest.raises(RuntimeError, match="a bug"):
        worker._loop(stop)  # noqa: SLF001
    # On the way out (the checkpoint in `run`'s finally, the revoke on close), nothing of the
    # batch is stored: the first label was marked seen but never joined.
    assert not worker.checkpoint()
    worker._on_revoke(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    stored = worker.store.load_partition(0)
    assert stored is not None
    assert stored.forwarded == {0: 2}
    assert worker.store.offset("g-labels-repartition", 0) is None


def test_an_alerts_sequence_header_is_read_defensively() -> None:
    def seq(*headers: tuple[str, bytes | None]) -> int | None:
        return monitor_loop.alert_seq(Message(headers=list(headers)), "g.monitor.a")

    ours = ("scorestream.transactional_id", b"g.monitor.a")
    assert seq(ours, ("scorestream.alert_seq", b"12")) == 12
    for value in (b"x", b"-1", b"", None, b"1" * 40, "٣".encode()):
        assert seq(ours, ("scorestream.alert_seq", value)) is None, value
    assert seq(("scorestream.transactional_id", b"other"), ("scorestream.alert_seq", b"1")) is None
    assert seq() is None


def test_a_label_over_the_size_cap_is_invalid_and_never_forwarded() -> None:
    state = MonitorState(MonitorConfig(max_label_bytes=100))
    small = json.dumps({"event_id": "a", "label": 1}).encode()
    large = json.dumps({"event_id": "b", "label": "x" * 200}).encode()
    assert state.label_key(small) == b"a"
    assert state.label_key(large) is None
    assert state.counters()["invalid_labels"] == 1


def test_a_label_the_forwarder_refuses_is_counted_or_fails_the_forwarder(
    worker: MonitorWorker,
) -> None:
    worker._on_assign(NoConsumer(), PARTITIONS)  # type: ignore[arg-type]  # noqa: SLF001
    value = json.dumps({"event_id": "a", "label": "x" * 1000}).encode()
    msg = Message(topic="labels", partition=0, offset=3, value=value, timestamp=(1, 0))
    real = worker.forwarder
    worker.forwarder = RefusingProducer(KafkaError.MSG_SIZE_TOO_LARGE)  # type: ignore[assignment]
    worker._forward(msg, 0, 3)  # noqa: SLF001
    assert worker.state.counters()["invalid_labels"] == 1
    assert worker._forward_failed is None  # noqa: SLF001
    worker.forwarder = RefusingProducer(KafkaError._FATAL)  # type: ignore[assignment]  # noqa: SLF001
    worker._forward(msg, 0, 3)  # noqa: SLF001
    assert worker._forward_failed is not None  # noqa: SLF001
    worker.forwarder = real


def test_a_forwarded_label_is_never_given_up_on_in_an_outage(worker: MonitorWorker) -> None:
    """A record that timed out would be retried behind later ones and taken for a replay: the
    forwarder keeps it however long the brokers are away (here none is reachable, and the
    user's message.timeout.ms is 1 s)."""
    worker.forwarder.produce("g-labels-repartition", b"{}", b"a")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        worker.forwarder.poll(0.1)
    assert len(worker.forwarder) == 1
    assert worker._forward_failed is None  # noqa: SLF001


def test_a_failed_forwarder_is_let_go_and_its_purged_records_fail_nothing(
    worker: MonitorWorker,
) -> None:
    old = worker.forwarder
    old.produce("g-labels-repartition", b"{}", b"a")
    worker._replace_forwarder()  # noqa: SLF001
    assert worker.forwarder is not old
    assert len(old) == 0  # purged: its librdkafka instance goes with the last reference
    assert old not in worker.abandoned_producers
    assert worker._forward_failed is None  # noqa: SLF001
