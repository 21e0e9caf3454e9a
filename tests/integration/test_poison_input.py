"""Poison input never stops the monitor: a label of about 1 MiB (what a Java client may send)
that the forwarder cannot re-key, and regressor labels no float holds, are counted as invalid
and logged, the rest joins, and a restart reads on instead of crashing on the same record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Producer

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
        summary = wait_for_counts([first], {"joined": 4, "invalid_labels": 4}, timeout_s=90)
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
    assert resumed["pending_predictions"] == 1  # "big": its label never came through
