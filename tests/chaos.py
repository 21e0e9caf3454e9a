"""Chaos driver: real 3-node Kafka, workers and a broker SIGKILLed mid-stream, outputs checked.

One cluster (replication 3, min.insync.replicas 2, producers acks=all) runs three jobs side by
side on one stream of feature events fed at a steady rate:

  exactly-once  two `scorestream infer` processes in one group (static membership, stable
                transactional ids); the committed predictions must be exactly the events,
                once each, with the offline model's scores;
  at-least-once two more in another group on the same input; every event must be predicted,
                duplicates are counted and reported;
  monitor       `scorestream monitor` on its own prediction and label streams; its final join
                counts must equal the offline truth.
  two-stage     the same streams through `monitor --stage join` (two instances) and
                `--stage aggregate`, exactly-once, state in changelog topics only; the
                aggregate's counts must equal the truth and the outcomes topic hold each
                outcome once.

While the stream flows the driver SIGKILLs a random worker of each infer group `worker_kills`
times, the monitor `monitor_kills` times and a random process of the two-stage monitor as
often (restarting each at once, as a supervisor would), and SIGKILLs one broker
`broker_kills` times (restarting it a few seconds later).

    python -m tests.chaos [--events 100000] [--feed-seconds 60] [--worker-kills 5] ...

`make soak` runs it longer; tests/integration/test_chaos.py runs it at CI size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, Producer

from tests.conftest import free_base_port
from tests.integration.test_infer import events, feature_rows
from tests.integration.test_monitor import Scenario, advance_clocks, scenario
from tests.integration.workers import WorkerProcess
from workers.commands.train import train
from workers.kafka_io.admin import create_topics
from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout
from workers.local_kafka.runtime import default_cache_dir
from workers.model_store import load_version


@dataclass
class ChaosConfig:
    work_dir: Path
    events: int = 100_000
    feed_seconds: float = 60.0
    worker_kills: int = 5
    monitor_kills: int = 5
    broker_kills: int = 1
    monitor_events: int = 20_000
    seed: int = 0
    settle_timeout_s: float = 240.0


@dataclass
class ChaosReport:
    events: int
    exactly_once_records: int = 0
    exactly_once_unique: int = 0
    exactly_once_score_mismatches: int = -1
    at_least_once_records: int = 0
    at_least_once_unique: int = 0
    at_least_once_duplicates: int = 0
    monitor_expected: dict[str, int] = field(default_factory=dict)
    monitor_final: dict[str, int] = field(default_factory=dict)
    two_stage_final: dict[str, int] = field(default_factory=dict)
    two_stage_outcomes: int = 0
    two_stage_outcomes_unique: int = 0
    kills: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.exactly_once_records == self.events
            and self.exactly_once_unique == self.events
            and self.exactly_once_score_mismatches == 0
            and self.at_least_once_unique == self.events
            and all(self.monitor_final.get(k) == v for k, v in self.monitor_expected.items())
            and all(self.two_stage_final.get(k) == v for k, v in _stage_counts(self).items())
            and self.two_stage_outcomes
            == self.two_stage_outcomes_unique
            == sum(_stage_counts(self).values())
        )


class Job:
    """Worker processes of one kind, each restartable with the same arguments."""

    def __init__(self, name: str, argvs: list[list[str]]) -> None:
        self.name = name
        self.argvs = argvs
        self.procs = [WorkerProcess(*argv) for argv in argvs]
        self.retired: list[WorkerProcess] = []

    def kill_and_restart(self, rng: random.Random) -> str:
        i = rng.randrange(len(self.procs))
        victim = self.procs[i]
        victim.proc.kill()
        victim.proc.wait()
        self.retired.append(victim)
        self.procs[i] = WorkerProcess(*self.argvs[i])
        return f"{self.name}[{i}]"

    def stop(self) -> list[int]:
        return [p.stop(signal.SIGTERM, timeout_s=60)[0] for p in self.procs]


def run(cfg: ChaosConfig) -> ChaosReport:  # noqa: PLR0915 - a scenario that reads top to bottom
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    report = ChaosReport(events=cfg.events)
    layout = ClusterLayout(3, free_base_port(6), cfg.work_dir / "kafka")
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    kafka_home = os.environ.get("KAFKA_HOME")
    cluster.start(layout, cache, kafka_home, detach=False)
    bootstrap = layout.bootstrap_servers
    run_id = uuid.uuid4().hex[:6]
    t = {name: f"chaos-{run_id}-{name}" for name in (
        "in", "eos-out", "eos-dlq", "alo-out", "alo-dlq", "pred", "lab", "alerts", "outcomes",
    "alerts2")}  # fmt: skip
    jobs: list[Job] = []
    try:
        create_topics(bootstrap, {t["in"]: 4, t["eos-out"]: 4, t["eos-dlq"]: 1, t["alo-out"]: 4,
                                  t["alo-dlq"]: 1, t["pred"]: 4, t["lab"]: 4, t["alerts"]: 1,
                                  t["alerts2"]: 1},
                      replication_factor=3)  # fmt: skip
        models = cfg.work_dir / "models"
        train("bc", models, dataset="breast_cancer", estimator="logistic_regression", seed=0)
        features = load_version(models / "bc" / "1").manifest.features
        rows = feature_rows(cfg.events, cfg.seed)
        stream = events(rows, features, "c")
        monitor_truth = scenario(cfg.monitor_events, seed=cfg.seed)

        def infer(group: str, guarantee: str, out: str, dlq: str, i: int) -> list[str]:
            return ["infer", "--bootstrap-servers", bootstrap, "--model", str(models / "bc"),
                    "--input-topic", t["in"], "--output-topic", out, "--dlq-topic", dlq,
                    "--group-id", group, "--instance-id", f"{group}-{i}",
                    "--processing-guarantee", guarantee, "--log-interval-s", "5"]  # fmt: skip

        eos = Job("exactly-once", [infer(f"eos-{run_id}", "exactly-once", t["eos-out"],
                                         t["eos-dlq"], i) for i in (1, 2)])  # fmt: skip
        alo = Job("at-least-once", [infer(f"alo-{run_id}", "at-least-once", t["alo-out"],
                                          t["alo-dlq"], i) for i in (1, 2)])  # fmt: skip
        monitor = Job("monitor", [[
            "monitor", "--bootstrap-servers", bootstrap, "--predictions-topic", t["pred"],
            "--labels-topic", t["lab"], "--alerts-topic", t["alerts"],
            "--group-id", f"mon-{run_id}", "--state-dir", str(cfg.work_dir / "monitor-state"),
            "--checkpoint-interval-s", "0.5", "--log-interval-s", "0.5"]])  # fmt: skip
        two_stage = Job("two-stage", [
            _stage(bootstrap, t, run_id, stage, name)
            for stage, name in (("join", "j1"), ("join", "j2"), ("aggregate", "a1"))])  # fmt: skip
        jobs = [eos, alo, monitor, two_stage]

        fed = threading.Event()
        feeder = threading.Thread(
            target=_feed, args=(bootstrap, t, stream, monitor_truth, cfg.feed_seconds, fed)
        )
        feeder.start()
        schedule = _schedule(cfg, rng)
        t0 = time.monotonic()
        for at, what in schedule:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "broker":
                report.kills.append(_kill_broker(layout, rng, cache, kafka_home))
            else:
                job = {"eos": eos, "alo": alo, "monitor": monitor, "two-stage": two_stage}[what]
                report.kills.append(job.kill_and_restart(rng))
        feeder.join()
        advance_clocks(bootstrap, {"predictions": t["pred"], "labels": t["lab"]}, 4)

        eos_keys = _read_until_unique(bootstrap, t["eos-out"], cfg.events, cfg.settle_timeout_s)
        alo_keys = _read_until_unique(bootstrap, t["alo-out"], cfg.events, cfg.settle_timeout_s)
        report.exactly_once_records, report.exactly_once_unique = len(eos_keys), len(set(eos_keys))
        report.at_least_once_records = len(alo_keys)
        report.at_least_once_unique = len(set(alo_keys))
        report.at_least_once_duplicates = len(alo_keys) - len(set(alo_keys))
        report.exactly_once_score_mismatches = _score_mismatches(
            bootstrap, t["eos-out"], rows, models
        )
        report.monitor_expected = _expected(monitor_truth)
        report.monitor_final = _monitor_final(monitor, report.monitor_expected)
        stage_expected = _stage_counts(report)
        report.two_stage_final = _monitor_final(two_stage, stage_expected, worker=-1)
        outcomes = _read_until_unique(bootstrap, t["outcomes"], sum(stage_expected.values()), 60,
                                      identity=_outcome_identity)  # fmt: skip
        report.two_stage_outcomes = len(outcomes)
        report.two_stage_outcomes_unique = len(set(outcomes))
    finally:
        _keep_logs(jobs, cfg.work_dir / "logs")
        for job in jobs:
            for code in job.stop():
                if code != 0:
                    report.kills.append(f"{job.name} exited {code} on SIGTERM")
        cluster.stop(layout)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _keep_logs(jobs: list[Job], folder: Path) -> None:
    """Every worker's log lines, killed incarnations included, for a failure to be read."""
    folder.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        for n, proc in enumerate(job.retired + job.procs):
            path = folder / f"{job.name}-{n}.jsonl"
            path.write_text("".join(json.dumps(line) + "\n" for line in proc.lines))


def _schedule(cfg: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """Random moments inside the feeding window (not its first or last tenth)."""
    window = (cfg.feed_seconds * 0.1, cfg.feed_seconds * 0.9)
    plan = [(rng.uniform(*window), "eos") for _ in range(cfg.worker_kills)]
    plan += [(rng.uniform(*window), "alo") for _ in range(cfg.worker_kills)]
    plan += [(rng.uniform(*window), "monitor") for _ in range(cfg.monitor_kills)]
    plan += [(rng.uniform(*window), "two-stage") for _ in range(cfg.monitor_kills)]
    plan += [(rng.uniform(*window), "broker") for _ in range(cfg.broker_kills)]
    return sorted(plan)


def _feed(  # noqa: PLR0913, PLR0917
    bootstrap: str,
    t: dict[str, str],
    stream: list[tuple[bytes, bytes]],
    truth: Scenario,
    seconds: float,
    done: threading.Event,
) -> None:
    """Produce the three streams at a steady pace over `seconds` (acks=all, idempotent)."""
    # Half the predictions keyed as infer keys them (murmur2), half as another team's service
    # writes them (librdkafka's default partitioner): the monitors re-key the latter and the
    # labels.
    config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
              "linger.ms": 5}  # fmt: skip
    producer = Producer({**config, "partitioner": "murmur2_random"})
    foreign = Producer(config)
    steps = max(1, int(seconds * 10))
    parts = [(t["in"], stream), (t["pred"], truth.predictions), (t["lab"], truth.labels)]
    start = time.monotonic()
    for step in range(steps):
        for topic, records in parts:
            lo, hi = len(records) * step // steps, len(records) * (step + 1) // steps
            for i, (key, value) in enumerate(records[lo:hi], start=lo):
                out = foreign if topic == t["pred"] and i % 2 else producer
                while True:
                    try:
                        out.produce(topic, value, key)
                        break
                    except BufferError:
                        out.poll(0.1)
        producer.poll(0)
        foreign.poll(0)
        time.sleep(max(0.0, start + (step + 1) * seconds / steps - time.monotonic()))
    if producer.flush(300) != 0 or foreign.flush(300) != 0:
        raise RuntimeError("the feeder could not deliver every record")
    done.set()


def _kill_broker(
    layout: ClusterLayout, rng: random.Random, cache: Path, kafka_home: str | None
) -> str:
    node = rng.choice(layout.nodes)
    pid = cluster.read_pid(node)
    if pid is None:
        return f"broker {node.node_id}: no pid"
    os.kill(pid, signal.SIGKILL)
    while cluster.process_alive(pid, node):
        time.sleep(0.05)  # SIGKILL is delivered asynchronously
    time.sleep(5)  # down for a while: partitions move, producers and consumers notice
    cluster.start(layout, cache, kafka_home, detach=False)
    return f"broker {node.node_id}"


def _outcome_identity(msg: Message) -> bytes:
    """An Outcome is keyed by its version: what it is about is in its value."""
    body = json.loads(msg.value() or b"")
    return f"{body['kind']}:{body['event_id']}".encode()


def _read_until_unique(
    bootstrap: str,
    topic: str,
    unique: int,
    timeout_s: float,
    identity: Callable[[Message], bytes] = lambda m: m.key() or b"",
) -> list[bytes]:
    """Every committed record's identity (its key), read until `unique` distinct ones and 3
    quiet seconds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    keys: list[bytes] = []
    seen: set[bytes] = set()
    deadline, last_record = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            for m in batch:
                key = identity(m)
                keys.append(key)
                seen.add(key)
            if batch:
                last_record = time.monotonic()
            elif len(seen) >= unique and time.monotonic() - last_record >= 3:
                break
    finally:
        consumer.close()
    return keys


def _score_mismatches(bootstrap: str, topic: str, rows: np.ndarray, models: Path) -> int:
    model = load_version(models / "bc" / "1").scorer.model  # type: ignore[attr-defined]
    proba = model.predict_proba(rows)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe([topic])
    mismatches, seen, idle = 0, 0, 0
    try:
        while seen < len(rows) and idle < 20:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            idle = 0 if batch else idle + 1
            for m in batch:
                body = json.loads(m.value() or b"")
                i = int(body["event_id"].split("-")[1])
                best = int(proba[i].argmax())
                same_label = body["label"] == int(model.classes_[best])
                mismatches += int(not same_label or abs(body["score"] - proba[i][best]) > 1e-12)
                seen += 1
    finally:
        consumer.close()
    return int(mismatches + (len(rows) - seen))


def _expected(s: Scenario) -> dict[str, int]:
    return {"joined": s.joined, "expired_without_label": s.expired, "orphan_labels": s.orphans,
            "duplicate_predictions": 0, "duplicate_labels": 0, "late_labels": 0}  # fmt: skip


def _stage(bootstrap: str, t: dict[str, str], run_id: str, stage: str, name: str) -> list[str]:
    """One process of the two-stage monitor, exactly-once, its state in Kafka only. A killed
    instance's partitions move once its session lapses: 10 s here, 45 s by default."""
    return ["monitor", "--stage", stage, "--bootstrap-servers", bootstrap,
            "--predictions-topic", t["pred"], "--labels-topic", t["lab"],
            "--alerts-topic", t["alerts2"], "--outcomes-topic", t["outcomes"],
            "--group-id", f"two-{run_id}", "--instance-id", name,
            "--processing-guarantee", "exactly-once", "--checkpoint-interval-s", "0.5",
            "--log-interval-s", "0.5", "--kafka-config", "session.timeout.ms=10000"]  # fmt: skip


def _stage_counts(report: ChaosReport) -> dict[str, int]:
    """What the aggregate stage counts of the truth (duplicates stay in the join stage)."""
    return {k: v for k, v in report.monitor_expected.items()
            if k in ("joined", "expired_without_label", "orphan_labels")}  # fmt: skip


def _monitor_final(
    monitor: Job, expected: dict[str, int], timeout_s: float = 120, worker: int = 0
) -> dict[str, int]:
    proc = monitor.procs[worker]
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        summaries = proc.events("monitor_summary")
        last = summaries[-1] if summaries else {}
        if all(last.get(k) == v for k, v in expected.items()):
            break
        time.sleep(0.5)
    return {k: int(last.get(k, -1)) for k in expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--feed-seconds", type=float, default=60.0)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--monitor-kills", type=int, default=5)
    parser.add_argument("--broker-kills", type=int, default=1)
    parser.add_argument("--monitor-events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scorestream-chaos-"))
    cfg = ChaosConfig(work, args.events, args.feed_seconds, args.worker_kills,
                      args.monitor_kills, args.broker_kills, args.monitor_events,
                      args.seed)  # fmt: skip
    report = run(cfg)
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    print(f"worker logs: {work / 'logs'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
