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
    for i, row in enumerate(rows.tolist()):
        event_id = f"demo-{i}"
        body = {"event_id": event_id, "features": dict(zip(features, row, strict=True))}
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
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"scored {len(predictions)} events ({len(predicted)} unique) in {elapsed:.1f} s, "
        f"accuracy against the true labels {summary['accuracy_vs_truth']:.3f}"
    )
    print(f"labels: {summary['labels']}; dead letters by reason: {dict(reasons)}")
    if bodies:
        print("a prediction: " + json.dumps(bodies[0]))
    print(f"worker exited {code}; its log: {log_path}; summary: {out_dir / 'summary.json'}")
    ok = len(predicted) == len(records) == len(predictions) and len(dead) == len(bad) and code == 0
    return 0 if ok else 1
