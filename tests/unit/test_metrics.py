from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from workers.metrics import (
    BulkHistogram,
    InferMetrics,
    MetricsServer,
    MetricsSnapshot,
    MonitorMetrics,
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_batch_lands_in_the_same_buckets_as_one_observe_per_value() -> None:
    buckets = (0.01, 0.1, 1.0)
    values = np.array([0.0, 0.005, 0.01, 0.02, 0.1, 0.5, 1.0, 3.0, 7.5])
    bulk = BulkHistogram("bulk_seconds", "bulk", buckets)
    bulk.observe_many(values[:4])
    bulk.observe_many(values[4:])
    bulk.observe_many(np.array([]))
    reference_registry = CollectorRegistry()
    one_by_one = Histogram("bulk_seconds", "bulk", buckets=buckets, registry=reference_registry)
    for v in values:
        one_by_one.observe(float(v))
    bulk_registry = CollectorRegistry()
    bulk_registry.register(bulk)
    got, want = samples(bulk_registry), samples(reference_registry)
    want = {k: v for k, v in want.items() if not k[0].endswith("_created")}
    assert got == pytest.approx(want)
    assert got["bulk_seconds_bucket", (("le", "0.01"),)] == 3  # le is inclusive


def test_infer_series_follow_the_served_model_version() -> None:
    metrics = InferMetrics()
    metrics.serving("bc", 1, "aa")
    metrics.serving("bc", 2, "bb")
    metrics.snapshot.snapshot = MetricsSnapshot(lag={("features", 1): 7, ("features", 0): 3})
    got = samples(metrics.registry)
    assert got["scorestream_model_info", (("model", "bc"), ("sha256", "bb"), ("version", "2"))]
    assert (
        "scorestream_model_info",
        (("model", "bc"), ("sha256", "aa"), ("version", "1")),
    ) not in (got)
    assert got["scorestream_model_version", (("model", "bc"),)] == 2
    assert got["scorestream_consumer_lag", (("partition", "1"), ("topic", "features"))] == 7


def test_monitor_snapshot_becomes_counters_and_gauges() -> None:
    metrics = MonitorMetrics()
    metrics.snapshot.snapshot = MetricsSnapshot(
        counters={"joined": 40, "orphan_labels": 2, "pending_predictions": 9},
        accuracy={("m", "3"): 0.75},
        version_joined={("m", "3"): 40},
    )
    metrics.alerts.labels("drift_detected").inc()
    got = samples(metrics.registry)
    assert got["scorestream_monitor_outcomes_total", (("outcome", "joined"),)] == 40
    assert got["scorestream_monitor_outcomes_total", (("outcome", "expired_without_label"),)] == 0
    assert got["scorestream_monitor_pending", (("kind", "predictions"),)] == 9
    assert got["scorestream_rolling_accuracy", (("model", "m"), ("version", "3"))] == 0.75
    assert got["scorestream_monitor_version_joined_total", (("model", "m"), ("version", "3"))] == 40
    assert got["scorestream_alerts_total", (("alert", "drift_detected"),)] == 1


def test_healthz_answers_503_until_ready() -> None:
    ready = [False]
    server = MetricsServer(0, CollectorRegistry(), lambda: ready[0])
    server.start()
    url = f"http://127.0.0.1:{server.port}/healthz"
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 503
        ready[0] = True
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()
