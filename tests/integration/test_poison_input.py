"""Poison input never stops the monitor: a label of about 1 MiB (what a Java client may send)
that the forwarder cannot re-key, and regressor labels no float holds, are counted as invalid
and logged, the rest joins, and a restart reads on instead of crashing on the same record."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.test_two_stage_monitor import monitor, wait_for_counts

pytestmark = pytest.mark.integration


def test_a_one_mib_label_and_unholdable_numbers_are_counted_not_fatal(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(1, "-pred"), "labels": new_topic(1, "-lab"),
              "alerts": new_topic(1, "-al")}  # fmt: skip
    # Just under the broker's own limit (1,048,588 bytes a record batch), over librdkafka's
    # message.max.bytes: the monitor's forwarder refuses to re-key it.
    out = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1_048_576,
                    "partitioner": "murmur2_random"})  # fmt: skip
    for event_id in ("r1", "r2", "r3", "ok", "big"):
        prediction = {"event_id": event_id, "model_name": "price", "model_version": 1,
                      "label": 2.5, "event_time": 1_000, "scored_at": 1_001}  # fmt: skip
        out.produce(topics["predictions"], json.dumps(prediction), event_id)
    labels = {"r1": "1" + "0" * 400, "r2": "1e308", "r3": "1e308", "ok": "3.5",
              "big": json.dumps("x" * 1_040_000)}  # fmt: skip
    for event_id, raw in labels.items():
        out.produce(topics["labels"], f'{{"event_id": "{event_id}", "label": {raw}}}', event_id)
    assert out.flush(30) == 0
    group = f"g-{topics['labels'][-10:]}"
    args = ("--alerts-topic", topics["alerts"], "--state-dir", str(tmp_path),
            "--max-label-bytes", "2000000")  # fmt: skip
    first = monitor(bootstrap, topics, group, "at-least-once", *args)
    try:
        summary = wait_for_counts([first], {"joined": 1, "invalid_labels": 4}, timeout_s=90)
        [warned] = first.events("label_too_large")
    finally:
        code, _ = first.stop()
    assert code == 0
    assert summary["versions"]["price/v1"] == pytest.approx(
        {**summary["versions"]["price/v1"], "joined": 1, "window_mae": 1.0}
    )
    assert warned["bytes"] > 1_000_000
    # Restarted, it neither crashes on the same records nor counts them again.
    again = monitor(bootstrap, topics, group, "at-least-once", *args)
    try:
        again.wait_for("partitions_assigned", timeout_s=90)
        resumed = wait_for_counts([again], {"invalid_labels": 4}, timeout_s=60)
    finally:
        code, _ = again.stop()
    assert code == 0
    # "big": its label never came through; r1-r3 wait on for a label that is a number.
    assert resumed["pending_predictions"] == 4
    assert resumed["invalid_labels_not_a_number"] == 3


class Exploit:
    """What the join stage once executed from its changelog: a pickle that runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_records_anyone_wrote_to_a_changelog_are_skipped_never_run(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(1, "-pred"), "labels": new_topic(1, "-lab"),
              "outcomes": new_topic(1, "-out")}  # fmt: skip
    group = f"g-{topics['labels'][-10:]}"
    out = Producer({"bootstrap.servers": bootstrap})
    pending = {"event_id": "a", "model_name": "m", "model_version": 1, "label": 1,
               "event_time": 1_000, "scored_at": 1_001}  # fmt: skip
    out.produce(topics["predictions"], json.dumps(pending), b"a")
    assert out.flush(30) == 0
    args = ("--stage", "join", "--outcomes-topic", topics["outcomes"], "--state-dir",
            str(tmp_path / "state"))  # fmt: skip
    first = monitor(bootstrap, topics, group, "at-least-once", *args)
    try:
        wait_for_counts([first], {"pending_predictions": 1}, timeout_s=90)
    finally:
        code, _ = first.stop()  # its last checkpoint holds the pending prediction
    assert code == 0
    marker = tmp_path / "ran"
    changelog = f"{group}-join-changelog"
    owner = claimed_by(bootstrap, changelog)
    # As the snapshot framing is: one chunk of one snapshot, keyed as chunk 0; once as
    # another writer (ignored after the owner's claim), once as the owner itself.
    payload = pickle.dumps(Exploit(marker), protocol=5)
    for writer in (b"x" * 8, owner):
        crafted = struct.pack(">8sQII", writer, 99, 0, 1) + payload
        out.produce(changelog, crafted, b"0/1/0", partition=0)
    out.produce(changelog, b'{"not": "a snapshot"}', b"0/0/0", partition=0)
    assert out.flush(30) == 0
    again = monitor(bootstrap, topics, group, "at-least-once", *args)
    try:
        again.wait_for("partitions_assigned", timeout_s=90)
        out.produce(topics["labels"], json.dumps({"event_id": "a", "label": 1}), b"a")
        assert out.flush(30) == 0
        resumed = wait_for_counts([again], {"joined": 1}, timeout_s=60)
        skipped = again.events("snapshot_skipped")
    finally:
        code, _ = again.stop()
    assert code == 0
    assert not marker.exists()
    assert resumed["pending_predictions"] == 0  # the older, valid snapshot was used
    assert {s["reason"] for s in skipped} == {"names posix.system, which no snapshot holds"}
    [ignored] = again.events("changelog_records_ignored")
    assert ignored["records"] == 2


def claimed_by(bootstrap: str, changelog: str) -> bytes:
    """The writer id of the latest claim of partition 0 of a stage's changelog."""
    settings = {"bootstrap.servers": bootstrap, "group.id": f"read-{changelog}",
                "auto.offset.reset": "earliest", "enable.partition.eof": True}  # fmt: skip
    consumer = Consumer(settings)
    consumer.assign([TopicPartition(changelog, 0, OFFSET_BEGINNING)])
    owner = b""
    try:
        while True:
            msg = consumer.poll(10)
            assert msg is not None, "the changelog could not be read"
            if msg.error() is not None:
                break  # the end of the partition
            value = msg.value() or b""
            if value.startswith(b"scorestream-claim/1:"):
                owner = value[len(b"scorestream-claim/1:") :]
    finally:
        consumer.close()
    assert len(owner) == 8
    return owner


def test_labels_a_new_user_writes_wrong_are_invalid_by_reason_and_say_why(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(1, "-pred"), "labels": new_topic(1, "-lab"),
              "alerts": new_topic(1, "-al")}  # fmt: skip
    out = Producer({"bootstrap.servers": bootstrap})
    labels = {"ok": "1.0", "quoted": '"1"', "word": '"employed"', "half": "1.5"}
    for event_id, raw in labels.items():
        prediction = {"event_id": event_id, "model_name": "churn", "model_version": 1,
                      "label": 1, "event_time": 1_000, "scored_at": 1_001}  # fmt: skip
        out.produce(topics["predictions"], json.dumps(prediction), event_id)
        out.produce(topics["labels"], f'{{"event_id": "{event_id}", "label": {raw}}}', event_id)
    out.produce(topics["labels"], b'{"event_id": "cut", "lab', b"cut")
    assert out.flush(30) == 0
    group = f"g-{topics['labels'][-10:]}"
    worker = monitor(bootstrap, topics, group, "at-least-once", "--alerts-topic",
                     topics["alerts"], "--state-dir", str(tmp_path))  # fmt: skip
    try:
        summary = wait_for_counts([worker], {"joined": 1, "invalid_labels": 4}, timeout_s=90)
        unfit = worker.events("label_unfit")
        unreadable = worker.events("label_invalid")
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert summary["versions"]["churn/v1"]["joined"] == 1  # agrees with the top level
    assert summary["invalid_labels_wrong_type"] == 2
    assert summary["invalid_labels_fractional"] == 1
    assert summary["pending_predictions"] == 3  # waiting on for a label that fits
    # One line per reason (rate-limited), naming the event and the fix.
    assert sorted(u["reason"] for u in unfit) == ["fractional", "wrong_type"]
    assert {u["event_id"] for u in unfit} <= {"quoted", "word", "half"}
    assert all("fix" in u for u in unfit)
    assert unreadable[0]["reason"] == "Input data was truncated"
