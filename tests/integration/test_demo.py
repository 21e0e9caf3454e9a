"""The README's demo runs end to end on the test broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import KafkaUnderTest
from workers.demo import run_demo


def test_demo_trains_scores_and_reports(
    kafka: KafkaUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_demo(kafka.bootstrap_servers, 500, tmp_path / "out", tmp_path / "models")
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["predictions"] == summary["unique_event_ids"] == 500
    assert summary["accuracy_vs_truth"] > 0.9
    assert sum(summary["dead_letters"].values()) == 5
    assert summary["worker_exit_code"] == 0
    assert (tmp_path / "models" / "breast_cancer" / "1" / "manifest.json").exists()
    assert "scored 500 events" in capsys.readouterr().out
