"""`scorestream demo`: the whole story on one machine, with numbers a newcomer can check.

A synthetic stream (breast-cancer rows with noise) flows through `scorestream infer` while
`scorestream monitor` joins its labels, sent a little later; half way through, half the labels
flip (a concept drift). A progress bar follows it live; at the end report.png/report.html show
the rolling accuracy, the drift point and the alerts, and the counts are printed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from workers.commands.broker import add_broker_options, start_cluster
from workers.commands.produce import ProduceCounts, ProduceSettings, run_produce
from workers.commands.report import check_drawing_available, report_from_topics, write_report
from workers.commands.shared import StartupError, positive_int
from workers.commands.train import load_dataset, train
from workers.core.report import accuracy_around_drift
from workers.core.synthetic import StreamSpec
from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import produce_all, read_to_end
from workers.model_store import list_versions, read_manifest
from workers.settings import SettingsError, add_option
from workers.signing import load_signer

DEMO_MODEL = "breast_cancer"
WINDOW = 500
BAD_EVENTS = (
    b"{not json",
    b'{"event_id": "no-features"}',
    b'{"event_id": "", "features": {}}',
    b"[1, 2, 3]",
    b'{"event_id": "missing", "features": {"mean_radius": 1}}',
)


@dataclass(slots=True)
class Progress:
    total: int
    sent: int = 0
    labels: int = 0
    scored: int = 0
    joined: int = 0
    accuracy: float | None = None
    alerts: int = 0

    def line(self, width: int = 28) -> str:
        done = min(self.scored, self.total) / self.total if self.total else 1.0
        bar = "#" * round(done * width) + "." * (width - round(done * width))
        accuracy = "  -  " if self.accuracy is None else f"{self.accuracy:.3f}"
        return (
            f"[{bar}] {done:4.0%}  sent {self.sent:,}/{self.total:,}  scored {self.scored:,}  "
            f"labels joined {self.joined:,}  accuracy {accuracy}  alerts {self.alerts}"
        )


class LogTail:
    """The newest line of each event in a worker's JSON log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.latest: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits for next time
        self.offset += complete
        for raw in chunk[:complete].splitlines():
            if raw.startswith(b"{"):
                line = json.loads(raw)
                event = str(line.get("event"))
                self.latest[event] = line
                self.counts[event] += 1


def _start_worker(args: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], TextIO]:
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args, "--log-format", "json"],
        stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    return proc, log_file


def _wait_assigned(tails: list[LogTail], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for tail in tails:
            tail.read()
        if all("partitions_assigned" in t.latest for t in tails):
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    names = ", ".join(str(t.path) for t in tails)
    raise StartupError(f"the workers did not join their groups within 60 s; see {names}")


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
    demo = commands.add_parser(
        "demo",
        help="start the local broker and show events flowing through it",
        description="Start the local broker (as `broker start`), train the demo model if "
        "missing, run `scorestream infer` and `scorestream monitor`, stream --events synthetic "
        "feature events (plus a few malformed ones) at --rate with each label 0.5-3 s later "
        "and half the labels flipped from the midpoint on (a drift), follow it with a progress "
        "bar, then write --out/report.png and report.html (rolling accuracy, the drift point, "
        "the alerts) and summary.json, and print the counts. Needs matplotlib for the "
        "picture (pip install 'scorestream[report]'), checked before anything starts.",
    )
    add_option(demo, "--events", environ=environ, type=positive_int, default=5000,
               help="how many events to send")  # fmt: skip
    add_option(demo, "--rate", environ=environ, type=float, default=1000.0,
               help="events per second")  # fmt: skip
    add_option(demo, "--models-dir", environ=environ, type=Path, default=Path("models"),
               help="registry root; the demo model is trained there on first run")  # fmt: skip
    add_option(demo, "--out", environ=environ, type=Path, default=Path("demo-out"),
               help="where the demo writes its results")  # fmt: skip
    add_broker_options(demo, environ)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.rate <= 0:
        raise SettingsError("--rate must be > 0")
    # The picture comes last: a missing library must stop the demo before it streams anything.
    check_drawing_available()
    result = start_cluster(args, environ)
    print(f"Kafka ready at {result.bootstrap_servers} (stop it with `scorestream broker stop`)")
    return run_demo(result.bootstrap_servers, args.events, args.out, args.models_dir, args.rate)


def run_demo(
    bootstrap_servers: str,
    events: int,
    out_dir: Path,
    models_dir: Path,
    rate: float = 1000.0,
) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    # The progress bar tells the story; the in-process producer's info lines would interrupt it.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    model_dir = models_dir / DEMO_MODEL
    if not list_versions(model_dir):
        print(f"training {DEMO_MODEL} (first run) ...")
        # Signed when SCORESTREAM_MODEL_HMAC_KEY is set: the demo's infer then requires it.
        train(DEMO_MODEL, models_dir, dataset="breast_cancer", signer=load_signer(None, os.environ))
    manifest = read_manifest(model_dir / str(list_versions(model_dir)[-1]))
    print(
        f"model {manifest.name} v{manifest.version}: {len(manifest.features)} features, "
        f"held-out accuracy {manifest.raw['metrics']['accuracy']:.3f}"
    )
    run = uuid.uuid4().hex[:8]
    topics = {k: f"demo-{run}.{k}" for k in ("features", "predictions", "labels", "alerts")}
    topics["dlq"] = f"demo-{run}.features.dlq"
    create_topics(
        bootstrap_servers,
        {topics["features"]: 4, topics["predictions"]: 4, topics["labels"]: 4,
         topics["dlq"]: 1, topics["alerts"]: 1},
    )  # fmt: skip
    infer_log, monitor_log = out_dir / "infer.log", out_dir / "monitor.log"
    common = ["--bootstrap-servers", bootstrap_servers, "--log-interval-s", "0.5"]
    infer, infer_file = _start_worker(
        ["infer", *common, "--model", str(model_dir), "--input-topic", topics["features"],
         "--output-topic", topics["predictions"], "--dlq-topic", topics["dlq"],
         "--group-id", f"demo-{run}"], infer_log,
    )  # fmt: skip
    monitor, monitor_file = _start_worker(
        ["monitor", *common, "--predictions-topic", topics["predictions"],
         "--labels-topic", topics["labels"], "--alerts-topic", topics["alerts"],
         "--group-id", f"demo-monitor-{run}", "--state-dir", str(out_dir / f"state-{run}"),
         "--window", str(WINDOW)], monitor_log,
    )  # fmt: skip
    tails = [LogTail(infer_log), LogTail(monitor_log)]
    drift_at = events // 2
    counts = ProduceCounts()
    try:
        _wait_assigned(tails, [infer, monitor])
        print(
            f"streaming {events:,} events at {rate:,.0f}/s through {topics['features']}, each "
            f"labelled 0.5-3 s later; from event {drift_at:,} half the labels flip (the drift)"
        )
        data = load_dataset("breast_cancer")
        spec = StreamSpec(
            features=manifest.features, rows=data.x, labels=data.y.astype("int64"),
            prefix=f"demo-{run}", seed=int(run, 16) % 2**32, drift_at=drift_at,
            label_delay_ms=(500, 3000),
        )  # fmt: skip
        # First, and acknowledged: on a fresh broker this also waits out the transaction
        # coordinator's loading, which the stream's producer would otherwise log.
        produce_all(bootstrap_servers, topics["features"],
                    [(f"bad-{i}".encode(), v) for i, v in enumerate(BAD_EVENTS)])  # fmt: skip
        # Event time starts now, as the stream does: labels then follow their events by the
        # delays the story tells.
        start_ms = time.time_ns() // 1_000_000
        drift_at_ms = start_ms + int(drift_at * 1000 / rate)
        settings = ProduceSettings(
            bootstrap_servers=bootstrap_servers, features_topic=topics["features"],
            labels_topic=topics["labels"], events=events, rate=rate, spec=spec,
            kafka_config={}, log_interval_s=3600, start_ms=start_ms,
        )  # fmt: skip
        stop = threading.Event()
        producer = threading.Thread(target=run_produce, args=(settings, stop, counts),
                                    name="demo-produce", daemon=True)  # fmt: skip
        producer.start()
        progress = _follow(tails, counts, events, producer, deadline_s=events / rate + 120)
        stop.set()
    finally:
        codes = {}
        for name, proc in (("infer", infer), ("monitor", monitor)):
            proc.send_signal(signal.SIGTERM)
            codes[name] = proc.wait(timeout=60)
        infer_file.close()
        monitor_file.close()
    return _finish(bootstrap_servers, topics, out_dir, progress, codes, drift_at, drift_at_ms,
                   manifest.name, manifest.version)  # fmt: skip


def _follow(
    tails: list[LogTail],
    counts: ProduceCounts,
    events: int,
    producer: threading.Thread,
    deadline_s: float,
) -> Progress:
    """Show the progress bar until every event is scored and every label joined."""
    progress = Progress(events)
    live = sys.stdout.isatty()
    next_print = 0.0
    deadline = time.monotonic() + deadline_s
    infer, monitor = tails
    while time.monotonic() < deadline:
        for tail in tails:
            tail.read()
        progress.sent, progress.labels = counts.events, counts.labels
        progress.scored = int(infer.latest.get("infer_summary", {}).get("scored_total", 0))
        summary = monitor.latest.get("monitor_summary", {})
        progress.joined = int(summary.get("joined", 0))
        versions: dict[str, dict[str, Any]] = summary.get("versions") or {}
        newest: dict[str, Any] = next(iter(versions.values()), {})
        progress.accuracy = newest.get("window_accuracy")
        progress.alerts = sum((summary.get("alerts") or {}).values())
        finished = not producer.is_alive() and progress.scored >= events
        finished = finished and progress.joined >= counts.labels
        if live:
            print("\r" + progress.line(), end="", flush=True)
        elif finished or time.monotonic() >= next_print:
            print(progress.line(), flush=True)
            next_print = time.monotonic() + 2.0
        if finished:
            break
        time.sleep(0.25)
    if live:
        print()
    return progress


def _finish(  # noqa: PLR0913, PLR0917 - the demo's state so far
    bootstrap_servers: str,
    topics: dict[str, str],
    out_dir: Path,
    progress: Progress,
    codes: dict[str, int],
    drift_at: int,
    drift_at_ms: int,
    model: str,
    version: int,
) -> int:
    data = report_from_topics(
        bootstrap_servers, predictions_topic=topics["predictions"],
        labels_topic=topics["labels"], alerts_topic=topics["alerts"], window=WINDOW,
        drift_at_ms=drift_at_ms,
    )  # fmt: skip
    png, page = write_report(
        data, out_dir, title=f"scorestream demo: {model} v{version}, drift after event {drift_at:,}"
    )
    dead = read_to_end(bootstrap_servers, topics["dlq"])
    reasons = Counter(r.headers.get("error.type", b"?").decode() for r in dead)
    around = accuracy_around_drift(data)
    alerts: list[dict[str, Any]] = [
        {"alert": a.alert, "severity": a.severity, "model": a.version, "joined": a.joined,
         "seconds_after_drift": round((a.time_ms - drift_at_ms) / 1000, 2)}
        for a in data.alerts
    ]  # fmt: skip
    summary = {
        "bootstrap_servers": bootstrap_servers,
        "topics": topics,
        "model": {"name": model, "version": version},
        "events": progress.total,
        **data.counts,
        "dead_letters": dict(reasons),
        "accuracy_before_drift": around.get("before"),
        "accuracy_after_drift": around.get("after"),
        "drift_injected_at_event": drift_at,
        "alerts": alerts,
        "exit_codes": codes,
        "report_png": str(png),
        "report_html": str(page),
    }  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"scored {data.counts['predictions']:,} of {progress.total:,} events "
        f"({data.counts['duplicate_predictions']} duplicates); dead letters by reason: "
        f"{dict(reasons)}"
    )
    print(
        f"monitor joined {data.counts['joined']:,} labels; accuracy before the drift "
        f"{_fmt(around.get('before'))}, after it {_fmt(around.get('after'))}"
    )
    for alert in alerts:
        print(
            f"  ALERT {alert['alert']:26} severity={alert['severity']:8} after "
            f"{alert['joined']:,} outcomes, {alert['seconds_after_drift']:+.1f} s from the drift"
        )
    print(f"report: {png} and {page}; summary: {out_dir / 'summary.json'}")
    print(f"worker logs: {out_dir / 'infer.log'}, {out_dir / 'monitor.log'}; exit codes {codes}")
    ok = data.counts["predictions"] == progress.total == data.counts["joined"]
    ok = ok and sum(reasons.values()) == len(BAD_EVENTS) and set(codes.values()) == {0}
    return 0 if ok and png.stat().st_size > 0 else 1


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
