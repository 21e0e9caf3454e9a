"""The chaos run at CI size: 100,000 events, 5 worker kills per guarantee, 5 monitor kills,
one broker killed, on a real 3-node cluster (see tests/chaos.py; `make soak` runs it longer)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import ChaosConfig, run


def test_kills_lose_nothing_and_exactly_once_duplicates_nothing(tmp_path: Path) -> None:
    report = run(ChaosConfig(tmp_path, events=100_000, feed_seconds=60, worker_kills=5,
                             monitor_kills=5, broker_kills=1, monitor_events=20_000))  # fmt: skip
    assert len(report.kills) == 5 + 5 + 5 + 1, report.kills  # and every worker exited 0 at the end
    assert report.exactly_once_records == 100_000
    assert report.exactly_once_unique == 100_000
    assert report.exactly_once_score_mismatches == 0
    assert report.at_least_once_unique == 100_000
    assert report.at_least_once_records == 100_000 + report.at_least_once_duplicates
    print(f"at-least-once duplicates after the kills: {report.at_least_once_duplicates}")
    assert report.monitor_final == report.monitor_expected
    assert report.seconds < 300
