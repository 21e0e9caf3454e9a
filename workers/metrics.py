"""Prometheus metrics and a readiness probe on `--metrics-port`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


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
        self.batch_size = Histogram(
            "scorestream_batch_size", "Events per micro-batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "scorestream_batch_seconds",
            "Decode+score+produce time per micro-batch",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            "scorestream_model_version", "Model version being served", ["model"], registry=r
        )
        self.lag = Gauge("scorestream_consumer_lag", "Events behind the high watermark", registry=r)
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


class MonitorMetrics:
    """What the monitor exposes; gauges set at each summary, alerts counted as raised."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.join = Gauge("scorestream_monitor_join", "Join counters", ["counter"], registry=r)
        self.accuracy = Gauge(
            "scorestream_rolling_accuracy", "Window accuracy", ["model", "version"], registry=r
        )
        self.alerts = Counter("scorestream_alerts", "Alerts raised", ["alert"], registry=r)


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
