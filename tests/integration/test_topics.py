"""`scorestream topics create` on the real broker: the set, the partition rule, reruns."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import KafkaUnderTest, TopicFactory
from workers.cli import main
from workers.kafka_io.admin import list_topics


def _names() -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {role: f"tc-{run}.{role}" for role in ("features", "predictions", "labels", "dlq",
                                                  "alerts")}  # fmt: skip


def _argv(kafka: KafkaUnderTest, names: dict[str, str], *extra: str) -> list[str]:
    return [
        "topics", "create", "--bootstrap-servers", kafka.bootstrap_servers,
        "--features-topic", names["features"], "--predictions-topic", names["predictions"],
        "--labels-topic", names["labels"], "--dlq-topic", names["dlq"],
        "--alerts-topic", names["alerts"], *extra,
    ]  # fmt: skip


def test_creates_the_set_with_the_partition_rule_and_reruns_cleanly(
    kafka: KafkaUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _names()
    assert main(_argv(kafka, names, "--partitions", "3"), {}) == 0
    rows = capsys.readouterr().out.splitlines()
    assert sum(row.endswith("  created") for row in rows) == 5
    listed = list_topics(kafka.bootstrap_servers, None, timeout_s=10).topics
    counts = {role: len(listed[name].partitions) for role, name in names.items()}
    assert counts == {"features": 3, "predictions": 3, "labels": 3, "dlq": 1, "alerts": 1}
    assert main(_argv(kafka, names, "--partitions", "3"), {}) == 0
    assert sum(row.endswith("  exists") for row in capsys.readouterr().out.splitlines()) == 5


def test_existing_topics_are_left_as_they_are(
    kafka: KafkaUnderTest, new_topic: TopicFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _names()
    names["labels"] = new_topic(2, "-labels")  # any count: the monitor re-keys labels
    assert main(_argv(kafka, names, "--partitions", "4"), {}) == 0
    assert sum(row.endswith("  created") for row in capsys.readouterr().out.splitlines()) == 4
    listed = list_topics(kafka.bootstrap_servers, None, timeout_s=10).topics
    assert len(listed[names["labels"]].partitions) == 2
    assert len(listed[names["predictions"]].partitions) == 4
