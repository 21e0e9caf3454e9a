"""The chaos run at CI size: 100,000 events, 5 worker kills per guarantee, 5 kills of the
monitor and 5 of the two-stage monitor, one broker killed, on a real 3-node cluster (see
tests/chaos.py; `make soak` runs it longer)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import ChaosConfig, run


def test_kills_lose_nothing_and_exactly_once_duplicates_nothing(tmp_path: Path) -> None:
    report = run(ChaosConfig(tmp_path, events=100_000, feed_seconds=60, worker_kills=5,
                             monitor_kills=5, broker_kills=1, monitor_events=20_000))  # fmt: skip
    # 5 per infer group, 5 of the monitor, 5 of the two-stage monitor, one broker; and every
    # worker exited 0 at the end.
    assert len(report.kills) == 5 + 5 + 5 + 5 + 1, report.kills
    assert report.exactly_once_records == 100_000
    assert report.exactly_once_unique == 100_000
    assert report.exactly_once_score_mismatches == 0
    assert report.at_least_once_unique == 100_000
    assert report.at_least_once_records == 100_000 + report.at_least_once_duplicates
    print(f"at-least-once duplicates after the kills: {report.at_least_once_duplicates}")
    assert report.monitor_final == report.monitor_expected
    # The two-stage monitor, exactly-once: the truth, and each outcome once on its topic.
    assert report.two_stage_final == {k: report.monitor_expected[k] for k in report.two_stage_final}
    assert (
        report.two_stage_outcomes
        == report.two_stage_outcomes_unique
        == sum(report.two_stage_final.values())
    )
    assert report.seconds < 300
