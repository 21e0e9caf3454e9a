"""Both workers' metrics on the real broker, scraped directly and by a real Prometheus that
loads docker/'s alerting rules and answers every query of the Grafana dashboard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, KafkaUnderTest, free_base_port
from tests.integration.workers import WorkerProcess, scrape
from tests.prometheus import PrometheusUnavailableError, prometheus_binaries, wait_ready
from workers.core.alerts import ALERT_NAMES
from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import produce_all
from workers.local_kafka.runtime import default_cache_dir

DOCKER = Path(__file__).resolve().parents[2] / "docker"
RULES = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "scorestream.json"
BC_V1 = (("model", "bc"), ("version", "1"))
BAD_EVENTS = [(b"bad-1", b"{not json"), (b"bad-2", b'{"event_id": "x"}')]


@pytest.fixture(scope="module")
def binaries() -> tuple[Path, Path]:
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    try:
        return prometheus_binaries(cache)
    except PrometheusUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no Prometheus: {exc}", pytrace=False)
        pytest.skip(f"no Prometheus: {exc}")


@dataclass
class Stack:
    infer_port: int
    monitor_port: int
    prometheus_url: str
    workers: dict[str, WorkerProcess]


def _prometheus_config(path: Path, infer_port: int, monitor_port: int) -> None:
    # The compose stack finds its targets by DNS; here they are on loopback. Job names and the
    # rule file are the compose stack's own.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "scorestream-infer",
             "static_configs": [{"targets": [f"127.0.0.1:{infer_port}"]}]},
            {"job_name": "scorestream-monitor",
             "static_configs": [{"targets": [f"127.0.0.1:{monitor_port}"]}]},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(config))  # JSON is YAML


@pytest.fixture(scope="module")
def stack(
    kafka: KafkaUnderTest,
    trained_registry: Path,
    binaries: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("observability")
    run = uuid.uuid4().hex[:8]
    topics = {k: f"obs-{run}.{k}" for k in ("features", "predictions", "labels", "dlq", "alerts")}
    create_topics(
        kafka.bootstrap_servers,
        {topics["features"]: 4, topics["predictions"]: 4, topics["labels"]: 4,
         topics["dlq"]: 1, topics["alerts"]: 1},
    )  # fmt: skip
    model = str(trained_registry / "bc")
    base = free_base_port(3)
    infer_port, monitor_port, prometheus_port = base, base + 1, base + 2
    servers = kafka.bootstrap_servers
    workers = {
        "infer": WorkerProcess(
            "infer", "--bootstrap-servers", servers, "--model", model,
            "--input-topic", topics["features"], "--output-topic", topics["predictions"],
            "--dlq-topic", topics["dlq"], "--group-id", f"obs-infer-{run}",
            "--metrics-port", str(infer_port), "--log-interval-s", "1",
        ),
        "monitor": WorkerProcess(
            "monitor", "--bootstrap-servers", servers,
            "--predictions-topic", topics["predictions"], "--labels-topic", topics["labels"],
            "--alerts-topic", topics["alerts"], "--features-topic", topics["features"],
            "--model", model, "--group-id", f"obs-monitor-{run}", "--window", "200",
            "--state-dir", str(work / "state"), "--metrics-port", str(monitor_port),
            "--log-interval-s", "1",
        ),
    }  # fmt: skip
    _prometheus_config(work / "prometheus.yml", infer_port, monitor_port)
    prometheus = subprocess.Popen(
        [str(binaries[0]), f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=(work / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for worker in workers.values():
            worker.wait_for("partitions_assigned")
        # Events at 300/s with labels 0.2-1 s later; half the labels flip after event 900.
        workers["producer"] = WorkerProcess(
            "produce", "--bootstrap-servers", servers, "--model", model,
            "--features-topic", topics["features"], "--labels-topic", topics["labels"],
            "--events", "0", "--rate", "300", "--drift-at", "900",
            "--label-delay-min-s", "0.2", "--label-delay-max-s", "1", "--prefix", f"obs-{run}",
        )  # fmt: skip
        produce_all(servers, topics["features"], BAD_EVENTS)
        url = f"http://127.0.0.1:{prometheus_port}"
        wait_ready(url)
        yield Stack(infer_port, monitor_port, url, workers)
    finally:
        for worker in workers.values():
            worker.stop()
        prometheus.terminate()
        prometheus.wait(timeout=30)


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _series(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> int:
    return sum(1 for sample_name, _ in samples if sample_name == name)


def test_both_workers_series_move(stack: Stack) -> None:
    for port in (stack.infer_port, stack.monitor_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    stack.workers["monitor"].wait_for("monitor_summary")
    before = {"infer": scrape(stack.infer_port), "monitor": scrape(stack.monitor_port)}
    time.sleep(3)  # the producer sends 300 events/s meanwhile: the counters must move
    after = {"infer": scrape(stack.infer_port), "monitor": scrape(stack.monitor_port)}
    moved = [
        ("infer", "scorestream_events_consumed_total", ()),
        ("infer", "scorestream_predictions_total", ()),
        ("infer", "scorestream_end_to_end_latency_seconds_count", ()),
        ("infer", "scorestream_batch_size_count", ()),
        ("infer", "scorestream_batch_seconds_count", ()),
        ("monitor", "scorestream_monitor_consumed_total", (("stream", "predictions"),)),
        ("monitor", "scorestream_monitor_consumed_total", (("stream", "labels"),)),
        ("monitor", "scorestream_monitor_consumed_total", (("stream", "labels_repartitioned"),)),
        ("monitor", "scorestream_monitor_consumed_total", (("stream", "features"),)),
        ("monitor", "scorestream_monitor_outcomes_total", (("outcome", "joined"),)),
        ("monitor", "scorestream_monitor_version_joined_total", BC_V1),
    ]  # fmt: skip
    for worker, name, labels in moved:
        assert after[worker][name, labels] > before[worker].get((name, labels), 0), name
    infer, monitor = after["infer"], after["monitor"]
    assert infer["scorestream_dead_letters_total", (("reason", "decode"),)] >= 1
    assert infer["scorestream_dead_letters_total", (("reason", "schema"),)] >= 1
    assert infer["scorestream_model_version", (("model", "bc"),)] == 1
    assert _series(infer, "scorestream_consumer_lag") == 4  # one per input partition
    # Four topics of four partitions: predictions, labels, the labels re-keyed, features.
    assert _series(monitor, "scorestream_consumer_lag") == 16
    accuracy = monitor["scorestream_rolling_accuracy", BC_V1]
    assert 0.0 <= accuracy <= 1.0
    assert _series(monitor, "scorestream_alerts_total") == len(
        ALERT_NAMES
    )  # every alert type, from 0


def test_prometheus_answers_every_dashboard_query(stack: Stack) -> None:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    # rate() over [1m] needs two scrapes; the monitor needs joined labels: allow a minute.
    deadline = time.monotonic() + 90
    empty = queries
    while empty and time.monotonic() < deadline:
        empty = [q for q in queries if not _query(stack.prometheus_url, q)]
        if empty:
            time.sleep(1)
    assert not empty, f"no data for: {empty}"
    assert len(queries) >= 12


def test_prometheus_loads_and_evaluates_the_alerting_rules(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = [rule for rule in rules if rule.get("lastEvaluation", "").startswith("2")]
        if len(evaluated) == len(rules) > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {rule["name"] for rule in rules} == {
        "ScorestreamConsumerLagGrowing", "ScorestreamDeadLetterRate", "ScorestreamNoPredictions",
        "ScorestreamAccuracyBelowThreshold", "ScorestreamDriftDetected", "ScorestreamWorkerDown",
    }  # fmt: skip
    for rule in rules:
        assert rule["health"] == "ok", rule
    # Both workers are up, so that alert has nothing to say; two dead letters among
    # hundreds of events make the DLQ rate pending or firing only if above 1%.
    down = next(rule for rule in rules if rule["name"] == "ScorestreamWorkerDown")
    assert down["alerts"] == []


def test_promtool_passes_the_rules_their_unit_tests_and_the_config(
    binaries: tuple[Path, Path],
) -> None:
    promtool = str(binaries[1])
    prometheus_dir = DOCKER / "prometheus"
    for argv in (
        [promtool, "check", "rules", "alerts.yml"],
        [promtool, "test", "rules", "alerts.test.yml"],
        [promtool, "check", "config", "prometheus.yml"],
    ):
        done = subprocess.run(argv, cwd=prometheus_dir, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{' '.join(argv[1:])}:\n{done.stdout}{done.stderr}"
        assert "SUCCESS" in done.stdout + done.stderr


def test_compose_pins_the_prometheus_release_tested_here(binaries: tuple[Path, Path]) -> None:
    """The rules and queries are checked by this Prometheus: the stack must run the same."""
    prometheus, _ = binaries
    shown = subprocess.run(
        [str(prometheus), "--version"], capture_output=True, text=True, check=True
    )
    tested = re.search(r"version (\d+\.\d+\.\d+)", shown.stdout + shown.stderr)
    pinned = re.search(r"image: prom/prometheus:v(\S+)", (DOCKER / "compose.yaml").read_text())
    assert tested is not None
    assert pinned is not None
    assert pinned.group(1) == tested.group(1)
