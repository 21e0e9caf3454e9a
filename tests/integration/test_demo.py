"""The README's demo runs end to end on the test broker (a small run: CI's check that the
picture is drawn), and `scorestream report` draws the same story from the topics alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import KafkaUnderTest
from workers.cli import main
from workers.commands.demo import run_demo


def test_demo_streams_scores_monitors_and_draws_the_report(
    kafka: KafkaUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = run_demo(kafka.bootstrap_servers, 2000, out, tmp_path / "models", rate=2000)
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predictions"] == summary["joined"] == 2000
    assert summary["duplicate_predictions"] == 0
    assert sum(summary["dead_letters"].values()) == 5
    assert summary["exit_codes"] == {"infer": 0, "monitor": 0}
    # Half the labels flip from event 1000 on: accuracy falls from ~0.97 towards 0.5 and the
    # monitor says so after the drift, not before.
    assert summary["accuracy_before_drift"] > 0.9
    assert summary["accuracy_after_drift"] < 0.65
    assert summary["alerts"], printed
    assert all(a["seconds_after_drift"] > 0 for a in summary["alerts"])
    assert (tmp_path / "models" / "breast_cancer" / "1" / "manifest.json").exists()
    assert "sent 2,000/2,000" in printed
    assert "scored 2,000 of 2,000 events" in printed

    png = out / "report.png"
    assert png.stat().st_size > 10_000
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
    assert "data:image/png;base64," in (out / "report.html").read_text()

    # The same picture from the topics alone.
    topics = summary["topics"]
    again = tmp_path / "again"
    assert main(["report", "--bootstrap-servers", kafka.bootstrap_servers,
                 "--predictions-topic", topics["predictions"], "--labels-topic", topics["labels"],
                 "--alerts-topic", topics["alerts"], "--out", str(again)], {}) == 0  # fmt: skip
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["joined"] == 2000
    assert counts["alerts"] == len(summary["alerts"])
    assert (again / "report.png").stat().st_size > 10_000


def test_report_names_a_missing_topic(
    kafka: KafkaUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["report", "--bootstrap-servers", kafka.bootstrap_servers,
            "--predictions-topic", "no-such-topic-here", "--out", str(tmp_path)]  # fmt: skip
    code = main(argv, {})
    assert code == 1
    err = capsys.readouterr().err
    assert "no-such-topic-here" in err
    assert "check the topic names" in err
