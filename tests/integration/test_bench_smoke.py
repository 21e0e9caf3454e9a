"""`scorestream bench` (`make bench`) keeps working: its quick mode runs every workload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import KafkaUnderTest

ROOT = Path(__file__).resolve().parents[2]


def quick_bench(kafka: KafkaUnderTest, command: list[str], out: Path) -> tuple[str, Any]:
    """Run a bench against the session's broker; its stdout and the results it wrote."""
    proc = subprocess.run(
        command, env={**os.environ, "SCORESTREAM_BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_throughput_bench_quick_mode_runs_every_workload(
    kafka: KafkaUnderTest, tmp_path: Path
) -> None:
    out = tmp_path / "throughput.json"
    scorestream = str(Path(sys.executable).parent / "scorestream")
    result = quick_bench(kafka, [scorestream, "bench", "--quick", "--out", str(out)], out)[1]
    workloads = result["workloads"]
    assert set(workloads) == {"a passthrough", "b naive", "c infer-lr", "d infer-hgb",
                              "e monitor", "f infer-lr exactly-once", "g infer-mixed",
                              "h infer-hgb-reg"}  # fmt: skip
    assert all(w["events_per_s"] > 0 for w in workloads.values())
    assert workloads["e monitor"]["joined"] == result["events"]
    assert set(result["latency"]) == {"c infer-lr", "a passthrough"}
    assert result["memory"]["bytes_per_pending"] > 0
    assert set(result["checks"]) == {"(c) >= 0.6 x (a)", "(d) >= 0.4 x (a)", "(c) >= 50 x (b)",
                                     "p99 (c) <= p99 (a) + 10 ms", "(e) >= 0.5 x (a)",
                                     "(g) mixed pipeline >= 0.4 x (a)",
                                     "(h) HGB regressor >= 0.4 x (a)",
                                     "<= 300 bytes per pending prediction"}  # fmt: skip
    assert result["machine"]["cpus"] == os.cpu_count()


def test_drift_bench_runs_and_reports_every_check(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drift_quality.py"), "--seeds", "3",
         "--out", str(out), "--no-peers"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a target missed on 3 seeds
    result = json.loads(out.read_text())
    assert len(result["checks"]) == 19
    assert {r["detector"] for r in result["results"]} >= {"page_hinkley_pair", "adwin",
                                                          "error_cusum"}  # fmt: skip
    scenarios = {r["scenario"] for r in result["data_drift"]}
    assert scenarios == {"stationary", "mean_shift", "variance", "new_category",
                         "correlation_flip"}  # fmt: skip
    assert [(c["window"], c["windows"]) for c in result["cbpe"]] == [(1000, 3 * 20),
                                                                     (2000, 3 * 10)]  # fmt: skip
    assert result["peers"] is None


def test_two_stage_bench_runs_every_workload(kafka: KafkaUnderTest, tmp_path: Path) -> None:
    out = tmp_path / "two_stage.json"
    command = [sys.executable, str(ROOT / "bench" / "two_stage.py"), "--quick", "--out", str(out)]
    stdout, result = quick_bench(kafka, command, out)
    workloads = result["workloads"]
    assert set(workloads) == {"single", "join x1", "join x2", "aggregate"}
    assert all(w["events_per_s"] > 0 and w["cpu_s"] > 0 for w in workloads.values())
    assert workloads["single"]["joined"] == result["events"]
    assert workloads["join x2"]["steady_events_per_s"] > 0
    assert result["two_stage_cpu_us_per_event"] == (
        (workloads["join x1"]["cpu_s"] + workloads["aggregate"]["cpu_s"]) / result["events"] * 1e6
    )
    assert "the extra hop costs" in stdout
