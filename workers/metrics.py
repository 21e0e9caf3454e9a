"""Prometheus metrics and a readiness probe on `--metrics-port`.

The hot path never touches a metric per message: counters move once per batch, latencies go into
a histogram as one numpy call per batch, and what the workers know as state (lag, join counts,
accuracy) is published as a snapshot the loop replaces about once a second and the scrape
thread only reads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from workers.core.alerts import ALERT_NAMES
from workers.core.events import ErrorType

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# How often the loops refresh the snapshot behind lag, join and accuracy series.
REFRESH_INTERVAL_S = 1.0


class BulkHistogram(Collector):
    """A histogram fed a whole batch at once: one searchsorted instead of a Python call per
    event (prometheus_client's `observe` costs about a microsecond each)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        # Prometheus buckets are "less than or equal": side="left" puts v == bound inside it.
        slots = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(slots, minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        buckets = [(_bound(b), c) for b, c in zip(self.bounds.tolist(), cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


def _bound(value: float) -> str:
    return repr(float(value))


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What a worker knows at one moment; replaced whole, never mutated after publishing."""

    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    accuracy: Mapping[tuple[str, str], float] = field(default_factory=dict)
    version_joined: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # Regressors: (model, version) -> rolling MAE and RMSE.
    mae: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rmse: Mapping[tuple[str, str], float] = field(default_factory=dict)
    # Classifiers with a calibrated reference: accuracy estimated from probabilities (CBPE)
    # and, over the same joined outcomes, realized minus estimated.
    estimated_accuracy: Mapping[tuple[str, str], float] = field(default_factory=dict)
    estimation_gap: Mapping[tuple[str, str], float] = field(default_factory=dict)


# Join counters that only grow; the others in `MonitorState.counters()` are levels.
MONITOR_OUTCOMES = (
    "joined",
    "expired_without_label",
    "orphan_labels",
    "late_labels",
    "evicted_predictions",
    "evicted_labels",
    "duplicate_predictions",
    "duplicate_labels",
    "invalid_predictions",
    "invalid_labels",
    "times_clamped",
    "forward_replays",
    "misplaced_predictions",
)


class SnapshotCollector(Collector):
    """Lag per partition for both workers; join counts and accuracy for the monitor."""

    def __init__(self, *, monitor: bool) -> None:
        self.monitor = monitor
        self.snapshot = MetricsSnapshot()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot  # one read: the loop may swap in a new one meanwhile
        lag = GaugeMetricFamily(
            "scorestream_consumer_lag",
            "Records behind the high watermark, per assigned input partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(snap.lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        if not self.monitor:
            return
        outcomes = CounterMetricFamily(
            "scorestream_monitor_outcomes",
            "Predictions and labels by what became of them (joined, expired, orphan, ...)",
            labels=["outcome"],
        )
        for name in MONITOR_OUTCOMES:
            outcomes.add_metric([name], snap.counters.get(name, 0))
        yield outcomes
        pending = GaugeMetricFamily(
            "scorestream_monitor_pending", "Held in memory awaiting their match", labels=["kind"]
        )
        pending.add_metric(["predictions"], snap.counters.get("pending_predictions", 0))
        pending.add_metric(["labels"], snap.counters.get("pending_labels", 0))
        yield pending
        accuracy = GaugeMetricFamily(
            "scorestream_rolling_accuracy",
            "Accuracy over the last --window joined outcomes, per model version",
            labels=["model", "version"],
        )
        for (model, version), share in sorted(snap.accuracy.items()):
            accuracy.add_metric([model, version], share)
        yield accuracy
        per_window = "over the last --window joined outcomes, per regressor version"
        for name, values, text in (
            ("scorestream_rolling_mae", snap.mae, f"Mean absolute error {per_window}"),
            ("scorestream_rolling_rmse", snap.rmse, f"Root mean squared error {per_window}"),
            ("scorestream_estimated_accuracy", snap.estimated_accuracy,
             "Accuracy estimated from probabilities alone (CBPE), last --window predictions"),
            ("scorestream_estimation_gap", snap.estimation_gap,
             "Realized minus estimated accuracy over the same last --window joined outcomes"),
        ):  # fmt: skip
            gauge = GaugeMetricFamily(name, text, labels=["model", "version"])
            for (model, version), error in sorted(values.items()):
                gauge.add_metric([model, version], error)
            yield gauge
        joined = CounterMetricFamily(
            "scorestream_monitor_version_joined",
            "Outcomes joined to a prediction, per model version",
            labels=["model", "version"],
        )
        for (model, version), value in sorted(snap.version_joined.items()):
            joined.add_metric([model, version], value)
        yield joined


class InferMetrics:
    """What the inference worker exposes; updated once per batch, never per message."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "scorestream_events_consumed", "Feature events consumed", registry=r
        )
        self.scored = Counter("scorestream_predictions", "Predictions produced", registry=r)
        self.dead_letters = Counter(
            "scorestream_dead_letters", "Events dead-lettered", ["reason"], registry=r
        )
        # Every reason starts at 0: rate() and alert rules see a series before the first one.
        for reason in ErrorType:
            self.dead_letters.labels(reason.value)
        self.batch_size = Histogram(
            "scorestream_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "scorestream_batch_seconds",
            "Decode, validate, score and encode time per micro-batch",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.latency = BulkHistogram(
            "scorestream_end_to_end_latency_seconds",
            "From an event's Kafka timestamp to its prediction being handed to the producer",
            LATENCY_BUCKETS,
        )
        r.register(self.latency)
        self.model_version = Gauge(
            "scorestream_model_version", "Model version being served", ["model"], registry=r
        )
        self.model_info = Gauge(
            "scorestream_model_info",
            "1 for the model version being served, with its artifact digest",
            ["model", "version", "sha256"],
            registry=r,
        )
        self.snapshot = SnapshotCollector(monitor=False)
        r.register(self.snapshot)
        self.rewinds = Counter(
            "scorestream_delivery_rewinds", "Rewinds after a failed delivery", registry=r
        )
        self.transactions = Counter(
            "scorestream_transactions", "Transactions (exactly-once)", ["outcome"], registry=r
        )
        self.paused = Gauge(
            "scorestream_paused_partitions",
            "Input partitions held back because the DLQ refused their dead letters",
            registry=r,
        )

    def serving(self, model: str, version: int, sha256: str) -> None:
        """Point the model series at a newly loaded version."""
        self.model_version.labels(model).set(version)
        self.model_info.clear()
        self.model_info.labels(model, str(version), sha256).set(1)


class MonitorMetrics:
    """What the monitor exposes: records read per stream, alerts as raised, the rest as a
    snapshot refreshed by the loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "scorestream_monitor_consumed",
            "Records read, by stream (predictions, labels, features)",
            ["stream"],
            registry=r,
        )
        self.alerts = Counter("scorestream_alerts", "Alerts raised", ["alert"], registry=r)
        for name in ALERT_NAMES:
            self.alerts.labels(name)
        self.snapshot = SnapshotCollector(monitor=True)
        r.register(self.snapshot)


class MetricsServer:
    """Serve /metrics and /healthz (200 once `ready()` is true) from a daemon thread."""

    def __init__(self, port: int, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        registry_ref, ready_ref = registry, ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry_ref), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok = ready_ref()
                    body = b"ok\n" if ok else b"not ready\n"
                    status, ctype = (200 if ok else 503), "text/plain"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Scrapes are not worth a log line each."""

        self.server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - scraped
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="metrics"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
