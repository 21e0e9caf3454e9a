"""`scorestream demo`: the whole path on one machine, with numbers a newcomer can check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import consume_exact, produce_all
from workers.model_store import list_versions, read_manifest
from workers.training import load_dataset, train

DEMO_MODEL = "breast_cancer"
BAD_EVENTS = (
    b"{not json",
    b'{"event_id": "no-features"}',
    b'{"event_id": "", "features": {}}',
    b"[1, 2, 3]",
    b'{"event_id": "missing", "features": {"mean_radius": 1}}',
)


def _generate(
    events: int, features: tuple[str, ...], seed: int
) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Events drawn from the breast-cancer rows with a little noise, and their true labels."""
    data = load_dataset("breast_cancer")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data.x), events)
    rows = data.x[picks] * rng.normal(1.0, 0.02, (events, data.x.shape[1]))
    records = []
    # One event per simulated second, ending now: the drift point is a moment in event time.
    start_ms = time.time_ns() // 1_000_000 - events * 1000
    for i, row in enumerate(rows.tolist()):
        event_id = f"demo-{i}"
        body = {
            "event_id": event_id,
            "features": dict(zip(features, row, strict=True)),
            "event_time": start_ms + i * 1000,
        }
        records.append((event_id.encode(), json.dumps(body).encode()))
    return records, [int(y) for y in data.y[picks]]


def run_demo(bootstrap_servers: str, events: int, out_dir: Path, models_dir: Path) -> int:
    """Train if needed, run `scorestream infer` on generated events, report what came out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = models_dir / DEMO_MODEL
    if not list_versions(model_dir):
        print(f"training {DEMO_MODEL} (first run) ...")
        train(DEMO_MODEL, models_dir, dataset="breast_cancer")
    manifest = read_manifest(model_dir / str(list_versions(model_dir)[-1]))
    print(
        f"model {manifest.name} v{manifest.version}: {len(manifest.features)} features, "
        f"held-out accuracy {manifest.raw['metrics']['accuracy']:.3f}"
    )

    run = uuid.uuid4().hex[:8]
    topics = {
        "in": f"demo-{run}.features",
        "out": f"demo-{run}.predictions",
        "dlq": f"demo-{run}.features.dlq",
    }
    create_topics(bootstrap_servers, {topics["in"]: 4, topics["out"]: 4, topics["dlq"]: 1})
    records, truth = _generate(events, manifest.features, seed=int(run, 16) % 2**32)
    bad = [(f"bad-{i}".encode(), value) for i, value in enumerate(BAD_EVENTS)]
    produce_all(bootstrap_servers, topics["in"], records + bad)
    print(f"produced {len(records)} feature events and {len(bad)} malformed ones to {topics['in']}")

    log_path = out_dir / "infer.log"
    started = time.monotonic()
    with log_path.open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "infer",
             "--bootstrap-servers", bootstrap_servers, "--model", str(model_dir),
             "--input-topic", topics["in"], "--output-topic", topics["out"],
             "--dlq-topic", topics["dlq"], "--group-id", f"demo-{run}",
             "--log-format", "json", "--log-interval-s", "2"],
            stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ),
        )  # fmt: skip
        try:
            predictions = consume_exact(bootstrap_servers, topics["out"], f"r-{run}", len(records))
            dead = consume_exact(bootstrap_servers, topics["dlq"], f"d-{run}", len(bad), 30)
            elapsed = time.monotonic() - started
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=30)

    bodies = [json.loads(r.value or b"{}") for r in predictions]
    predicted = {b["event_id"]: b["label"] for b in bodies}
    correct = sum(predicted.get(f"demo-{i}") == y for i, y in enumerate(truth))
    reasons = Counter(r.headers.get("error.type", b"?").decode() for r in dead)
    summary = {
        "bootstrap_servers": bootstrap_servers,
        "topics": topics,
        "model": {"name": manifest.name, "version": manifest.version},
        "events": len(records),
        "predictions": len(predictions),
        "unique_event_ids": len(predicted),
        "accuracy_vs_truth": round(correct / len(truth), 4),
        "labels": dict(Counter(str(b["label"]) for b in bodies)),
        "dead_letters": dict(reasons),
        "seconds_to_all_predictions": round(elapsed, 2),
        "worker_exit_code": code,
        "worker_log": str(log_path),
        "drift_injected_at_event": len(truth) // 2,
    }
    print(
        f"scored {len(predictions)} events ({len(predicted)} unique) in {elapsed:.1f} s, "
        f"accuracy against the true labels {summary['accuracy_vs_truth']:.3f}"
    )
    print(f"labels: {summary['labels']}; dead letters by reason: {dict(reasons)}")
    if bodies:
        print("a prediction: " + json.dumps(bodies[0]))
    monitor_summary, alerts = _monitor_phase(bootstrap_servers, run, topics, bodies, truth,
                                             out_dir)  # fmt: skip
    summary["monitor"], summary["alerts"] = monitor_summary, alerts
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"monitor joined {monitor_summary.get('joined')} labels to their predictions; "
        f"accuracy before the drift {monitor_summary.get('accuracy_before', 0):.3f}, "
        f"in the last window {monitor_summary.get('window_accuracy', 0):.3f}"
    )
    for alert in alerts:
        print(
            f"  ALERT {alert['event']:26} severity={alert['severity']} after "
            f"{alert['joined']} outcomes (drift injected after {len(truth) // 2})"
        )
    print(f"worker exited {code}; its log: {log_path}; summary: {out_dir / 'summary.json'}")
    ok = len(predicted) == len(records) == len(predictions) and len(dead) == len(bad) and code == 0
    ok = ok and monitor_summary.get("joined") == len(truth)
    return 0 if ok else 1


def _monitor_phase(  # noqa: PLR0913, PLR0917 - the demo's state so far
    bootstrap_servers: str,
    run: str,
    topics: dict[str, str],
    predictions: list[dict[str, Any]],
    truth: list[int],
    out_dir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send delayed labels (flipped at random after the midpoint: an injected drift), run
    `scorestream monitor`, and return its final counts and the alerts it logged."""
    labels_topic, alerts_topic = f"demo-{run}.labels", f"demo-{run}.alerts"
    create_topics(bootstrap_servers, {labels_topic: 4, alerts_topic: 1})
    rng = np.random.default_rng(int(run, 16) % 2**32)
    event_times = {p["event_id"]: p["event_time"] for p in predictions}
    labels = []
    for i, actual in enumerate(truth):
        event_id = f"demo-{i}"
        # After the midpoint the world changes: half of the true labels no longer match what
        # the model learned, so its accuracy drops towards one half.
        label = 1 - actual if i >= len(truth) // 2 and rng.random() < 0.5 else actual
        label_time = event_times.get(event_id, 0) + int(rng.integers(1_000, 60_000))
        body = {"event_id": event_id, "label": label, "label_time": label_time}
        labels.append((label_time, event_id.encode(), json.dumps(body).encode()))
    labels.sort()
    log_path = out_dir / "monitor.log"
    with log_path.open("w") as log_file:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "monitor",
             "--bootstrap-servers", bootstrap_servers,
             "--predictions-topic", topics["out"], "--labels-topic", labels_topic,
             "--alerts-topic", alerts_topic, "--group-id", f"demo-monitor-{run}",
             "--state-dir", str(out_dir / f"monitor-state-{run}"), "--window", "500",
             "--log-format", "json", "--log-interval-s", "0.5"],
            stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ),
        )  # fmt: skip
        try:
            _wait_for_event(log_path, "partitions_assigned", timeout_s=60)
            # Labels trickle in as they would in production (about 5,000 a second), so the
            # monitor sees them in time order rather than one partition's backlog at a time.
            for start in range(0, len(labels), 250):
                chunk = labels[start : start + 250]
                produce_all(bootstrap_servers, labels_topic, [(k, v) for _, k, v in chunk])
                time.sleep(0.05)
            print(
                f"produced {len(labels)} labels, each 1-60 s after its event, with a drift "
                f"injected after event {len(truth) // 2}"
            )
            summary = _wait_for_joined(log_path, len(truth), timeout_s=60)
        finally:
            monitor.send_signal(signal.SIGTERM)
            monitor.wait(timeout=30)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    alerts = [x for x in lines if x.get("event") in ALERT_NAMES]
    version: dict[str, Any] = next(iter((summary.get("versions") or {}).values()), {})
    result = {
        "joined": summary.get("joined"),
        "expired_without_label": summary.get("expired_without_label"),
        "orphan_labels": summary.get("orphan_labels"),
        "window_accuracy": version.get("window_accuracy"),
        "accuracy_before": version.get("reference_accuracy"),
        "log": str(log_path),
    }
    return result, alerts


ALERT_NAMES = ("drift_detected", "accuracy_below_threshold", "feature_drift", "accuracy_recovered")


def _wait_for_event(log_path: Path, event: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if f'"{event}"' in log_path.read_text():
            return
        time.sleep(0.1)
    raise TimeoutError(f"no {event} in {log_path} within {timeout_s} s")


def _wait_for_joined(log_path: Path, expected: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if '"monitor_summary"' in line:
                last = json.loads(line)
        if last.get("joined", 0) >= expected:
            return last
        time.sleep(0.25)
    return last
