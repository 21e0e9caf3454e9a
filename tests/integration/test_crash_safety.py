"""An error in the middle of a batch never commits events whose outputs were not handed over,
and an event too large for the dead-letter topic is dead-lettered by reference."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.test_infer import events, feature_rows, infer_args
from tests.integration.workers import WorkerProcess, committed_offset, read_topic
from workers.core.inference import score_batch as real_score
from workers.kafka_io import infer_loop
from workers.kafka_io.admin import create_topics
from workers.kafka_io.infer_loop import InferenceWorker, InferSettings
from workers.kafka_io.roundtrip import produce_all, read_to_end
from workers.model_store import load_newest_good, load_version


def _settings(kafka: KafkaUnderTest, topics: dict[str, str], guarantee: str) -> InferSettings:
    return InferSettings(
        bootstrap_servers=kafka.bootstrap_servers, input_topic=topics["in"],
        output_topic=topics["out"], dlq_topic=topics["dlq"], group_id=f"g-{topics['in']}",
        batch_size=100, batch_timeout_ms=20, kafka_config={}, max_value_bytes=65_536,
        log_interval_s=3600, exactly_once=guarantee == "exactly-once",
    )  # fmt: skip


def test_a_bug_mid_batch_commits_nothing_unscored(
    kafka: KafkaUnderTest,
    registry: Path,
    new_topic: TopicFactory,
    guarantee: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    topics = {"in": new_topic(1, "-in"), "out": new_topic(1, "-out"), "dlq": new_topic(1, "-dlq")}
    produce_all(kafka.bootstrap_servers, topics["in"], events(feature_rows(500, 3), features, "c"))
    batches: list[int] = []

    def failing_on_the_third_batch(*args: object, **kwargs: object) -> object:
        batches.append(1)
        if len(batches) == 3:
            raise RuntimeError("a bug in scoring")
        return real_score(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(infer_loop, "score_batch", failing_on_the_third_batch)
    worker = InferenceWorker(_settings(kafka, topics, guarantee), load_newest_good(model_dir, None))
    with pytest.raises(RuntimeError, match="a bug in scoring"):
        worker.run(threading.Event())
    scored = len(read_to_end(kafka.bootstrap_servers, topics["out"]))
    committed = committed_offset(kafka.bootstrap_servers, f"g-{topics['in']}", topics["in"])
    # Whatever was committed had its predictions handed over; the failed batch was not.
    assert committed <= scored
    assert committed <= 200

    # Restarted (the bug gone), it scores every event: the failed batch was not skipped.
    monkeypatch.setattr(infer_loop, "score_batch", real_score)
    again = WorkerProcess(
        *infer_args(kafka, model_dir, topics, "--processing-guarantee", guarantee)
    )
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 500)
    finally:
        code, _ = again.stop()
    assert code == 0
    assert {r.json()["event_id"] for r in predictions} == {f"c-{i}" for i in range(500)}


def test_a_value_too_large_for_the_dlq_is_dead_lettered_by_reference(
    kafka: KafkaUnderTest, registry: Path, new_topic: TopicFactory, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    run = uuid.uuid4().hex[:8]
    topics = {"in": f"t-huge-in-{run}", "out": new_topic(1, "-out"), "dlq": new_topic(1, "-dlq")}
    # The input topic takes 4 MiB records; the worker's dead letters are at most 2 MiB.
    create_topics(kafka.bootstrap_servers, {topics["in"]: 1},
                  config={"max.message.bytes": str(4 * 1024 * 1024)})  # fmt: skip
    huge = b'{"event_id": "huge", "pad": "' + b"x" * (2_500_000) + b'"}'
    records = events(feature_rows(20, 4), features, "h")
    produce_all(kafka.bootstrap_servers, topics["in"], [*records[:10], (b"huge", huge),
                *records[10:]], config={"message.max.bytes": str(4 * 1024 * 1024)})  # fmt: skip
    worker = WorkerProcess(
        *infer_args(kafka, model_dir, topics, "--processing-guarantee", guarantee)
    )
    group = f"g-{topics['in']}"
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 20)
        [dead] = read_topic(kafka.bootstrap_servers, topics["dlq"], 1)
        worker.wait_for("infer_summary")
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert len({r.json()["event_id"] for r in predictions}) == 20
    assert dead.value in (b"", None)
    assert dead.key == b"huge"
    assert dead.headers["error.type"] == b"decode"
    assert dead.headers["error.value_omitted"] == b"true"
    assert dead.headers["source.value_bytes"] == str(len(huge)).encode()
    assert dead.headers["source.offset"] == b"10"
    assert committed_offset(kafka.bootstrap_servers, group, topics["in"]) == 21
