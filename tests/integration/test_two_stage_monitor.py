"""The two-stage monitor on the real broker: several join instances on separate state dirs,
crashed, restarted and scaled down mid-stream, end where one process ends and where the
offline truth says."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from tests.conftest import KafkaUnderTest, TopicFactory
from tests.integration.workers import WorkerProcess, murmur2_partition, read_topic
from tests.outcome_stream import Stream, make_stream
from workers.kafka_io.admin import list_topics

pytestmark = pytest.mark.integration

# Order-free checks only: windows larger than any version's outcomes (metrics over all of
# them, whatever order they came in).
WINDOW = 20_000
FAST_GROUP = ["--kafka-config", "session.timeout.ms=6000",
              "--kafka-config", "heartbeat.interval.ms=1000"]  # fmt: skip


def producers(bootstrap: str) -> dict[str, Producer]:
    """Predictions keyed and hashed as `infer` does; labels with librdkafka's own default."""
    return {
        "predictions": Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"}),
        "labels": Producer({"bootstrap.servers": bootstrap}),
    }


def send(out: dict[str, Producer], topics: dict[str, str], records: list[Any]) -> None:
    for stream, event_id, value in records:
        out[stream].produce(topics[stream], json.dumps(value).encode(), event_id.encode())
    for p in out.values():
        assert p.flush(30) == 0


def latest_summary(worker: WorkerProcess) -> dict[str, Any] | None:
    found = worker.events("monitor_summary")
    return found[-1] if found else None


def wait_for_counts(
    workers: list[WorkerProcess], want: dict[str, int], timeout_s: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        for worker in workers:
            last = latest_summary(worker)
            if last is not None and all(last.get(k) == v for k, v in want.items()):
                return last
        time.sleep(0.5)
    raise AssertionError(f"counts never reached {want}; last summary: {last}")


def check_versions(versions: dict[str, Any], s: Stream) -> None:
    assert set(versions) == set(s.joined)
    for key, n in s.joined.items():
        assert versions[key]["joined"] == n, key
        if key in s.abs_error:
            assert versions[key]["window_mae"] == pytest.approx(s.abs_error[key] / n, rel=1e-9)
        else:
            assert versions[key]["window_accuracy"] == pytest.approx(s.correct[key] / n)


def alert_names(bootstrap: str, topic: str) -> Counter[tuple[str, str, int]]:
    """Alerts as (alert, model, version); drift_detected aside: a sequential detector sees
    outcomes in arrival order, which no two runs share."""
    admin_meta = list_topics(bootstrap, None, timeout_s=10).topics.get(topic)
    if admin_meta is None:
        return Counter()
    records = read_topic(bootstrap, topic, expected=10**6, timeout_s=8, settle_s=0)
    alerts = [json.loads(r.value or b"") for r in records]
    return Counter((a["alert"], a["model_name"], a["model_version"]) for a in alerts
                   if a["alert"] != "drift_detected")  # fmt: skip


def monitor(bootstrap: str, topics: dict[str, str], group: str, guarantee: str,
            *extra: str) -> WorkerProcess:  # fmt: skip
    return WorkerProcess(
        "monitor", "--bootstrap-servers", bootstrap, "--predictions-topic",
        topics["predictions"], "--labels-topic", topics["labels"], "--group-id", group,
        "--window", str(WINDOW), "--label-ttl-s", "600", "--orphan-label-ttl-s", "600",
        "--checkpoint-interval-s", "1", "--log-interval-s", "1",
        "--processing-guarantee", guarantee, *FAST_GROUP, *extra,
    )  # fmt: skip


@dataclass
class SplitRun:
    """Three join instances and an aggregate in one group, beside a one-process monitor."""

    bootstrap: str
    topics: dict[str, str]
    guarantee: str
    state: Path
    group: str
    everyone: list[WorkerProcess] = field(default_factory=list)

    def start(self, stage: str, name: str) -> WorkerProcess:
        t = self.topics
        extra = ["--alerts-topic", t["alerts_split"]] if stage == "aggregate" else []
        worker = monitor(self.bootstrap, t, self.group, self.guarantee, "--stage", stage,
                         "--instance-id", name, "--outcomes-topic", t["outcomes"],
                         "--state-dir", str(self.state / name), *extra)  # fmt: skip
        self.everyone.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.everyone:
            if worker.proc.poll() is None:
                worker.stop()


def test_three_join_instances_crashed_restarted_and_scaled_down_equal_one_process_and_the_truth(
    kafka: KafkaUnderTest, new_topic: TopicFactory, tmp_path: Path, guarantee: str
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(4, "-pred"), "labels": new_topic(3, "-lab"),
              "alerts_single": new_topic(1, "-al1"),
              "alerts_split": new_topic(1, "-al2")}  # fmt: skip
    topics["outcomes"] = f"{topics['predictions']}-outcomes"
    stream = make_stream(4500, seed=17)
    truth = stream.counters()
    chunks = [stream.records[i : i + 1000] for i in range(0, len(stream.records), 1000)]
    run = SplitRun(bootstrap, topics, guarantee, tmp_path, f"split-{topics['labels'][-8:]}")
    single = monitor(bootstrap, topics, f"single-{run.group}", guarantee, "--alerts-topic",
                     topics["alerts_single"], "--state-dir", str(tmp_path / "single"))  # fmt: skip
    run.everyone.append(single)
    joins = {name: run.start("join", name) for name in ("j1", "j2", "j3")}
    out = producers(bootstrap)
    try:
        for worker in run.everyone:
            worker.wait_for("partitions_assigned", timeout_s=90)
        agg = run.start("aggregate", "agg")
        agg.wait_for("partitions_assigned", timeout_s=90)
        # Mid-stream: j1 killed and restarted, then j2 and the aggregate; j3 scaled away.
        actions = {
            1: lambda: joins["j1"].stop(signal.SIGKILL),
            2: lambda: (run.start("join", "j1"), joins["j2"].stop(signal.SIGKILL),
                        agg.stop(signal.SIGKILL)),
            4: lambda: (run.start("join", "j2"), run.start("aggregate", "agg")),
            6: lambda: joins["j3"].stop(signal.SIGTERM),
        }  # fmt: skip
        for n, chunk in enumerate(chunks):
            send(out, topics, chunk)
            time.sleep(1.5)  # let the instances get into the middle of it
            actions.get(n, lambda: None)()
        split_final = wait_for_counts([run.everyone[-1]], truth)
        single_final = wait_for_counts([single], truth)
    finally:
        run.stop_all()
    assert joins["j3"].proc.returncode == 0  # scaled away cleanly
    # Partitions did move: instances resumed them from snapshots another one wrote.
    restored = [line for w in run.everyone for line in w.events("state_restored")
                if line["from_snapshot"]]  # fmt: skip
    assert {line["stage"] for line in restored} == {"join", "aggregate"}
    # One process and the two stages agree with the truth, version by version.
    check_versions(single_final["versions"], stream)
    check_versions(split_final["versions"], stream)
    assert {k: split_final[k] for k in truth} == {k: single_final[k] for k in truth} == truth
    check_outcomes_and_alerts(
        bootstrap, topics, stream, split_final, exact=guarantee == "exactly-once"
    )


def check_outcomes_and_alerts(
    bootstrap: str, topics: dict[str, str], stream: Stream, split_final: dict[str, Any],
    *, exact: bool,
) -> None:  # fmt: skip
    """The outcomes topic holds every joined pair, expired prediction and orphan label (once
    each when exact), features where the prediction carried them; the alerts match."""
    total = sum(stream.counters().values())
    received = read_topic(bootstrap, topics["outcomes"], total, 60, 2)
    records = [json.loads(r.value or b"") for r in received]
    by_kind: dict[str, set[str]] = {"joined": set(), "expired": set(), "orphan": set()}
    for record, raw in zip(records, received, strict=True):
        by_kind[record["kind"]].add(record["event_id"])
        # Keyed by version (an orphan by its event_id), placed as a Java producer would.
        key = record["event_id"] if record["kind"] == "orphan" else (
            f"{record['model_name']}/{record['model_version']}")  # fmt: skip
        assert raw.key == key.encode()
        assert raw.partition == murmur2_partition(key.encode(), 4)
    assert by_kind == {"joined": stream.joined_ids, "expired": stream.expired,
                       "orphan": stream.orphans}  # fmt: skip
    carried = {r["event_id"]: r for r in records if "features" in r}
    assert set(carried) == stream.with_features & (stream.joined_ids | stream.expired)
    assert all(set(r["features"]) == {"city", "hour", "amount"} for r in carried.values())
    single_alerts = alert_names(bootstrap, topics["alerts_single"])
    split_alerts = alert_names(bootstrap, topics["alerts_split"])
    repeats = len(records) - len({(r["kind"], r["event_id"]) for r in records})
    if exact:
        assert repeats == 0
        assert split_alerts == single_alerts
    else:
        # At-least-once: repeats may reach the topics; the aggregate counted them apart.
        assert set(split_alerts) == set(single_alerts)
    assert split_final.get("duplicate_outcomes", 0) == repeats
    assert ("accuracy_below_threshold", "m", 2) in split_alerts
    assert not any(version == 1 and model == "m" for _, model, version in split_alerts)


def test_an_aggregate_started_before_its_outcomes_topic_waits_and_says_so(
    kafka: KafkaUnderTest, new_topic: TopicFactory
) -> None:
    bootstrap = kafka.bootstrap_servers
    topics = {"predictions": new_topic(2, "-pred"), "labels": new_topic(2, "-lab")}
    outcomes = f"{topics['predictions']}-outcomes"
    aggregate = monitor(bootstrap, topics, f"g-{outcomes}", "at-least-once", "--stage",
                        "aggregate", "--outcomes-topic", outcomes)  # fmt: skip
    try:
        waiting = aggregate.wait_for("waiting_for_topics")
        assert waiting["topics"] == [outcomes]
        assert "--stage join" in waiting["fix"]
        join = monitor(bootstrap, topics, f"g-{outcomes}", "at-least-once", "--stage", "join",
                       "--outcomes-topic", outcomes)  # fmt: skip
        try:
            aggregate.wait_for("partitions_assigned", timeout_s=90)
        finally:
            assert join.stop()[0] == 0
    finally:
        assert aggregate.stop()[0] == 0
