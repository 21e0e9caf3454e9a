"""Predictions join whatever partitioner wrote them: a team's own service producing with
librdkafka's default (CRC32) partitioner places most of them off their event_id's murmur2
partition, where the re-keyed labels go. The one-process monitor and the join stage re-key
such predictions like labels, under both guarantees, and say so once per partition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.test_two_stage_monitor import monitor, wait_for_counts
from tests.integration.workers import WorkerProcess, murmur2_partition

pytestmark = pytest.mark.integration

N = 3000


def send_foreign(bootstrap: str, topics: dict[str, str], partitions: int) -> int:
    """Predictions and labels as another producer writes them; how many predictions landed
    off their murmur2 partition."""
    plain = Producer({"bootstrap.servers": bootstrap})  # librdkafka's default partitioner
    placed: dict[str, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key().decode()] = msg.partition()

    for i in range(N):
        event_id = f"f-{i}"
        prediction = {"event_id": event_id, "model_name": "m", "model_version": 1,
                      "label": "yes" if i % 4 else "no", "event_time": 1_000 + i,
                      "scored_at": 1_001 + i}  # fmt: skip
        plain.produce(topics["predictions"], json.dumps(prediction), event_id,
                      on_delivery=on_delivery)  # fmt: skip
        plain.produce(topics["labels"], json.dumps({"event_id": event_id, "label": "yes"}),
                      event_id)  # fmt: skip
        plain.poll(0)
    assert plain.flush(30) == 0
    return sum(placed[e] != murmur2_partition(e.encode(), partitions) for e in placed)


@pytest.mark.parametrize(
    "case",
    ["all/at-least-once/3", "all/exactly-once/6", "join+aggregate/exactly-once/3",
     "join+aggregate/at-least-once/6"],
)  # fmt: skip
def test_predictions_from_librdkafkas_default_partitioner_all_join(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path, case: str
) -> None:
    stages, guarantee, count = case.split("/")
    partitions = int(count)
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(partitions, "-pred"), "labels": new_topic(3, "-lab"),
              "alerts": new_topic(1, "-al")}  # fmt: skip
    group = f"g-{topics['predictions'][-10:]}"
    workers: list[WorkerProcess] = []
    try:
        for stage in stages.split("+"):
            extra = ["--stage", stage, "--instance-id", stage, "--outcomes-topic",
                     f"{topics['predictions']}-outcomes"] if stage != "all" else []  # fmt: skip
            workers.append(monitor(bootstrap, topics, group, guarantee, "--alerts-topic",
                                   topics["alerts"], "--state-dir", str(tmp_path / stage),
                                   *extra))  # fmt: skip
        for worker in workers:
            worker.wait_for("partitions_assigned", timeout_s=90)
        off = send_foreign(bootstrap, topics, partitions)
        assert off > N // 2  # most are off their murmur2 partition
        join = wait_for_counts(
            workers[:1],
            {
                "joined": N,
                "pending_predictions": 0,
                "pending_labels": 0,
                "misplaced_predictions": off,
            },
        )
        final = wait_for_counts(workers[-1:], {"joined": N})
        warned = workers[0].events("predictions_misplaced")
    finally:
        for worker in workers:
            worker.stop()
    assert join["forward_replays"] == join["duplicate_predictions"] == 0
    assert final["versions"]["m/v1"]["joined"] == N
    assert final["versions"]["m/v1"]["window_accuracy"] == pytest.approx(0.75)
    # Once per predictions partition, with the fix.
    assert sorted(w["partition"] for w in warned) == list(range(partitions))
    assert "murmur2" in warned[0]["fix"]
