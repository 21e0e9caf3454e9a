"""`scorestream infer` against the real broker: scoring, dead letters, hot reload, restarts."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import KafkaUnderTest, TopicFactory, free_base_port
from tests.corpus import BAD
from tests.integration.workers import (
    WorkerProcess,
    committed_offset,
    read_topic,
    scrape,
    set_topic_config,
)
from workers.commands.train import load_dataset, train
from workers.core.events import ErrorType
from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import produce_all
from workers.model_store import load_version

ULPS = 1e-12  # see tests/unit/core/test_scoring.py: BLAS order differs by batch size
MAX_VALUE_BYTES = 65_536


def feature_rows(n: int, seed: int) -> np.ndarray:
    """n distinct, realistic rows: the breast-cancer rows with a little multiplicative noise."""
    base = load_dataset("breast_cancer").x
    rng = np.random.default_rng(seed)
    rows = base[rng.integers(0, len(base), n)]
    return rows * rng.normal(1.0, 0.02, rows.shape)


def events(rows: np.ndarray, features: tuple[str, ...], prefix: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i, row in enumerate(rows.tolist()):
        event_id = f"{prefix}-{i}"
        body = {"event_id": event_id, "features": dict(zip(features, row, strict=True))}
        out.append((event_id.encode(), json.dumps(body).encode()))
    return out


def infer_args(
    kafka: KafkaUnderTest, model: Path, topics: dict[str, str], *extra: str
) -> list[str]:
    return [
        "infer",
        "--bootstrap-servers", kafka.bootstrap_servers,
        "--model", str(model),
        "--input-topic", topics["in"],
        "--output-topic", topics["out"],
        "--dlq-topic", topics["dlq"],
        "--group-id", f"g-{topics['in']}",
        "--log-interval-s", "1",
        "--max-value-bytes", str(MAX_VALUE_BYTES),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def topics(new_topic: TopicFactory) -> dict[str, str]:
    return {"in": new_topic(4, "-in"), "out": new_topic(4, "-out"), "dlq": new_topic(2, "-dlq")}


def check_scores(
    predictions: dict[str, dict[str, object]],
    rows: np.ndarray,
    prefix: str,
    model_dir: Path,
    version: int,
) -> None:
    model = load_version(model_dir / str(version)).scorer.model  # type: ignore[attr-defined]
    proba = model.predict_proba(rows)
    for i, row in enumerate(proba):
        record = predictions[f"{prefix}-{i}"]
        assert record["model_version"] == version
        assert record["label"] == int(model.classes_[row.argmax()])
        assert record["score"] == pytest.approx(row.max(), rel=ULPS, abs=ULPS)
        assert record["probabilities"] == pytest.approx(
            {"0": row[0], "1": row[1]}, rel=ULPS, abs=ULPS
        )


def test_valid_events_are_scored_and_every_bad_one_is_dead_lettered(  # noqa: PLR0915
    kafka: KafkaUnderTest, topics: dict[str, str], registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    rows = feature_rows(10_000, seed=1)
    good = events(rows, features, "ev")
    bad: list[tuple[bytes, bytes | None, ErrorType]] = [
        (f"bad-{i}".encode(), case.value, case.expected)  # type: ignore[misc]
        for i, case in enumerate(BAD)
        if not case.name.startswith("duplicate")  # the corpus' model has other features
    ]
    # Repeated keys, written for this model's features.
    first = good[0][1]
    dup_id = first.replace(b'{"event_id": ', b'{"event_id": "x", "event_id": ', 1)
    bad.append((b"bad-dup-id", dup_id, ErrorType.SCHEMA))
    name = json.dumps(features[0]).encode()
    dup_feature = first.replace(name + b":", name + b": 1.0, " + name + b":", 1)
    bad.append((b"bad-dup-feature", dup_feature, ErrorType.SCHEMA))
    oversize = json.dumps(
        {"event_id": "big", "features": dict.fromkeys(features, 1.0), "pad": "x" * MAX_VALUE_BYTES}
    ).encode()
    bad.append((b"bad-oversize", oversize, ErrorType.DECODE))
    # Near the broker's 1 MB message limit: refused by size, and its dead letter still fits.
    near_max = json.dumps({"event_id": "huge", "pad": "x" * 990_000}).encode()
    bad.append((b"bad-near-max-size", near_max, ErrorType.DECODE))
    bad_feature = json.loads(good[0][1])
    bad_feature["features"][features[3]] = True
    bad.append((b"bad-bool-feature", json.dumps(bad_feature).encode(), ErrorType.FEATURES))
    # Input limits set below (--max-event-id-length 64, --max-features 40).
    long_id = {"event_id": "i" * 65, "features": dict.fromkeys(features, 1.0)}
    bad.append((b"bad-long-id", json.dumps(long_id).encode(), ErrorType.SCHEMA))
    extras = {f"extra{i}": 0 for i in range(11)}
    crowded = {"event_id": "crowd", "features": {**dict.fromkeys(features, 1.0), **extras}}
    bad.append((b"bad-crowded", json.dumps(crowded).encode(), ErrorType.FEATURES))
    assert len({kind for _, _, kind in bad}) == 3
    assert len(bad) >= 30

    # Bad values interleaved with good ones, so they share micro-batches.
    mixed: list[tuple[bytes, bytes | None]] = []
    step = len(good) // len(bad)
    for i, (key, value) in enumerate(good):
        mixed.append((key, value))
        if i % step == 0 and i // step < len(bad):
            mixed.append(bad[i // step][:2])
    assert produce_all(kafka.bootstrap_servers, topics["in"], mixed) == len(good) + len(bad)  # type: ignore[arg-type]

    port = free_base_port(1)
    worker = WorkerProcess(*infer_args(
        kafka, model_dir, topics, "--metrics-port", str(port),
        "--processing-guarantee", guarantee,
        "--max-event-id-length", "64", "--max-features", "40"))  # fmt: skip
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], len(good))
        dead = read_topic(kafka.bootstrap_servers, topics["dlq"], len(bad))
        worker.wait_for("infer_summary")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
        metrics = scrape(port)
    finally:
        code, _ = worker.stop()
    assert code == 0

    ids = [r.key for r in predictions]
    assert len(predictions) == 10_000
    assert len(set(ids)) == 10_000
    by_id = {}
    for record in predictions:
        body = record.json()
        assert record.key == body["event_id"].encode()
        by_id[body["event_id"]] = body
    check_scores(by_id, rows, "ev", model_dir, 1)

    # Per-partition order: keys hash alike on both topics (4 partitions each), so each output
    # partition must hold its events in the order they were produced.
    per_partition: dict[int, list[tuple[int, int]]] = {}
    for record in predictions:
        index = int(record.json()["event_id"].split("-")[1])
        per_partition.setdefault(record.partition, []).append((record.offset, index))
    for rows_in_partition in per_partition.values():
        ordered = [index for _, index in sorted(rows_in_partition)]
        assert ordered == sorted(ordered)

    assert len(dead) == len(bad)
    expected = {key: (value, kind) for key, value, kind in bad}
    for record in dead:
        assert record.key is not None
        original, kind = expected.pop(record.key)
        assert record.value == original  # the original bytes, unchanged
        assert record.headers["error.type"] == kind.value.encode(), record.key
        assert record.headers["error.message"]
        assert record.headers["source.topic"] == topics["in"].encode()
        assert int(record.headers["source.partition"]) in range(4)
        assert int(record.headers["source.offset"]) >= 0
    assert expected == {}

    # The summary counts by reason; no log line per message.
    summary = worker.events("infer_summary")[-1]
    assert summary["scored_total"] == 10_000
    assert sum(summary["dead_letters_total"].values()) == len(bad)
    assert len(worker.lines) < 100
    assert metrics["scorestream_predictions_total", ()] == 10_000
    assert metrics["scorestream_events_consumed_total", ()] == 10_000 + len(bad)
    assert metrics["scorestream_dead_letters_total", (("reason", "schema"),)] > 0
    assert metrics["scorestream_model_version", (("model", "bc"),)] == 1
    sha = load_version(model_dir / "1").manifest.sha256
    info = (("model", "bc"), ("sha256", sha), ("version", "1"))
    assert metrics["scorestream_model_info", info] == 1
    # Every consumed event's latency was observed, in one histogram call per batch.
    assert metrics["scorestream_end_to_end_latency_seconds_count", ()] == 10_000 + len(bad)
    lags = {
        labels: v for (name, labels), v in metrics.items() if name == "scorestream_consumer_lag"
    }
    assert {dict(labels)["partition"] for labels in lags} == {"0", "1", "2", "3"}
    assert worker.events("infer_stopped")


def test_a_new_version_is_picked_up_mid_stream_and_a_tampered_one_refused(
    kafka: KafkaUnderTest, topics: dict[str, str], registry: Path
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    worker = WorkerProcess(*infer_args(kafka, model_dir, topics, "--model-poll-s", "0.2"))
    try:
        rows_a = feature_rows(2000, seed=2)
        produce_all(kafka.bootstrap_servers, topics["in"], events(rows_a, features, "a"))
        assert len(read_topic(kafka.bootstrap_servers, topics["out"], 2000, settle_s=0.5)) == 2000

        train("bc", registry, seed=7)
        swapped = worker.wait_for("model_swapped")
        assert (swapped["from_version"], swapped["to_version"]) == (1, 2)
        rows_b = feature_rows(2000, seed=3)
        produce_all(kafka.bootstrap_servers, topics["in"], events(rows_b, features, "b"))
        assert len(read_topic(kafka.bootstrap_servers, topics["out"], 4000, settle_s=0.5)) == 4000

        v3 = train("bc", registry, seed=8)
        blob = (v3 / "model.joblib").read_bytes()
        (v3 / "model.joblib").write_bytes(blob.replace(b"sklearn", b"sklearm", 1))
        refused = worker.wait_for("model_refused")
        assert refused["version"] == 3
        assert "sha256" in refused["reason"]
        rows_c = feature_rows(1000, seed=4)
        produce_all(kafka.bootstrap_servers, topics["in"], events(rows_c, features, "c"))
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 5000)
    finally:
        code, _ = worker.stop()
    assert code == 0

    by_id = {r.json()["event_id"]: r.json() for r in predictions}
    assert len(predictions) == 5000
    assert len(by_id) == 5000  # nothing lost, nothing twice
    check_scores(by_id, rows_a, "a", model_dir, 1)
    check_scores(by_id, rows_b, "b", model_dir, 2)
    check_scores(by_id, rows_c, "c", model_dir, 2)
    assert [e["to_version"] for e in worker.events("model_swapped")] == [2]


def test_a_restarted_worker_resumes_where_the_stopped_one_committed(
    kafka: KafkaUnderTest, topics: dict[str, str], registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    rows = feature_rows(6000, seed=5)
    first, second = events(rows[:3000], features, "r1"), events(rows[3000:], features, "r2")
    produce_all(kafka.bootstrap_servers, topics["in"], first)
    mode = ("--processing-guarantee", guarantee)
    worker = WorkerProcess(*infer_args(kafka, model_dir, topics, *mode))
    try:
        read_topic(kafka.bootstrap_servers, topics["out"], 3000, settle_s=0.2)
    finally:
        code, seconds = worker.stop(signal.SIGINT)
    assert code == 0
    assert seconds < 5
    produce_all(kafka.bootstrap_servers, topics["in"], second)
    worker = WorkerProcess(*infer_args(kafka, model_dir, topics, *mode))
    try:
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 6000)
    finally:
        code, _ = worker.stop()
    assert code == 0
    ids = [r.json()["event_id"] for r in predictions]
    assert len(ids) == 6000
    assert len(set(ids)) == 6000


def test_a_failed_delivery_never_advances_the_offset(
    kafka: KafkaUnderTest, new_topic: TopicFactory, registry: Path, guarantee: str
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    topics = {
        "in": new_topic(1, "-in"),
        "out": f"t-refusing-{uuid.uuid4().hex[:8]}",
        "dlq": new_topic(1, "-dlq"),
    }
    # The output topic refuses every prediction (too large): deliveries fail for good.
    create_topics(kafka.bootstrap_servers, {topics["out"]: 1}, config={"max.message.bytes": "200"})
    produce_all(kafka.bootstrap_servers, topics["in"], events(feature_rows(500, 6), features, "f"))
    worker = WorkerProcess(
        *infer_args(kafka, model_dir, topics, "--processing-guarantee", guarantee)
    )
    group = f"g-{topics['in']}"
    try:
        worker.wait_for("delivery_failed")
        worker.wait_for("delivery_failed")  # retried after a backoff, failed again
        assert committed_offset(kafka.bootstrap_servers, group, topics["in"]) < 0

        # Once the topic accepts them, every event comes through.
        set_topic_config(kafka.bootstrap_servers, topics["out"], "max.message.bytes", "1048576")
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 500)
        deadline = time.monotonic() + 30
        while committed_offset(kafka.bootstrap_servers, group, topics["in"]) != 500:
            assert time.monotonic() < deadline, "offset never committed"
            time.sleep(0.2)
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert {r.json()["event_id"] for r in predictions} == {f"f-{i}" for i in range(500)}
    backoffs = [e["retry_in_s"] for e in worker.events("delivery_failed")]
    assert backoffs == sorted(backoffs)  # growing, not a tight loop


def test_a_worker_started_before_its_input_topic_waits_and_says_so(
    kafka: KafkaUnderTest, registry: Path, new_topic: TopicFactory
) -> None:
    model_dir = registry / "bc"
    features = load_version(model_dir / "1").manifest.features
    run = uuid.uuid4().hex[:8]
    topics = {"in": f"t-late-in-{run}", "out": f"t-late-out-{run}", "dlq": new_topic(1, "-dlq")}
    worker = WorkerProcess(*infer_args(kafka, model_dir, topics))
    try:
        missing = worker.wait_for("input_topic_missing")
        assert missing["topic"] == topics["in"]
        assert "scorestream topics create" in missing["fix"]
        assert worker.events("kafka_client_error") == []  # no UNKNOWN_TOPIC "failure"
        create_topics(kafka.bootstrap_servers, {topics["in"]: 3})
        worker.wait_for("input_topic_found", timeout_s=30)
        worker.wait_for("infer_started")
        produce_all(
            kafka.bootstrap_servers, topics["in"], events(feature_rows(50, 9), features, "l")
        )
        predictions = read_topic(kafka.bootstrap_servers, topics["out"], 50)
    finally:
        code, _ = worker.stop()
    assert code == 0
    assert len({r.json()["event_id"] for r in predictions}) == 50
    # The output was made to match the input's partitions once the input existed.
    from workers.kafka_io.admin import list_topics  # noqa: PLC0415

    listed = list_topics(kafka.bootstrap_servers, None, timeout_s=10).topics
    assert len(listed[topics["out"]].partitions) == 3
