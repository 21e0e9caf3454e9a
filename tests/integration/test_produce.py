"""`scorestream produce` against the real broker: the events, then each label after its delay."""

from __future__ import annotations

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.workers import WorkerProcess, read_topic


def test_produce_sends_events_then_their_labels_after_the_delay(
    kafka: KafkaUnderTest, new_topic: TopicFactory
) -> None:
    topics = {"features": new_topic(4, "-features"), "labels": new_topic(4, "-labels")}
    worker = WorkerProcess(
        "produce", "--bootstrap-servers", kafka.bootstrap_servers,
        "--features-topic", topics["features"], "--labels-topic", topics["labels"],
        "--events", "3000", "--rate", "3000", "--drift-at", "1500",
        "--label-delay-min-s", "0.5", "--label-delay-max-s", "1.5", "--log-interval-s", "0.5",
    )  # fmt: skip
    events = read_topic(kafka.bootstrap_servers, topics["features"], 3000)
    labels = read_topic(kafka.bootstrap_servers, topics["labels"], 3000)
    assert worker.proc.wait(timeout=60) == 0
    finished = worker.wait_for("produce_finished")
    assert (finished["events"], finished["labels"], finished["failed"]) == (3000, 3000, 0)
    sent = {r.key: r.json()["event_time"] for r in events}
    assert len(sent) == 3000
    for record in labels:
        body = record.json()
        assert record.key in sent
        assert 500 <= body["label_time"] - sent[record.key] <= 1500
