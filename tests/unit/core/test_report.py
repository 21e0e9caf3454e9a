from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from workers.commands.demo import LogTail, Progress
from workers.commands.report import write_report
from workers.core.report import accuracy_around_drift, build_report


def prediction(i: int, label: str, version: int = 1) -> bytes:
    body = {"event_id": f"e{i}", "model_name": "m", "model_version": version, "label": label,
            "score": 0.9, "event_time": 1000 * i, "scored_at": 1000 * i}  # fmt: skip
    return json.dumps(body).encode()


def label(i: int, value: str) -> bytes:
    return json.dumps({"event_id": f"e{i}", "label": value}).encode()


def alert(name: str, at: int, joined: int) -> bytes:
    body = {"alert": name, "severity": "warning", "model_name": "m", "model_version": 1,
            "joined": joined, "at": at}  # fmt: skip
    return json.dumps(body).encode()


def test_outcomes_join_by_event_id_and_roll_in_event_time_order() -> None:
    # Events 0-9; labels match for 0-4 and disagree for 5-9; sent out of order.
    predictions = [prediction(i, "1") for i in reversed(range(10))]
    labels = [label(i, "1" if i < 5 else "0") for i in range(10)]
    data = build_report(predictions, labels, [], window=4, drift_at_ms=5000)
    points = data.series["m v1"]
    assert [p.time_ms for p in points] == [1000 * i for i in range(10)]
    assert [p.accuracy for p in points] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert points[-1].outcomes == 10
    assert accuracy_around_drift(data) == {"before": 1.0, "after": 0.0}


def test_counts_duplicates_orphans_and_undecodable_records() -> None:
    predictions = [prediction(1, "a"), prediction(1, "b"), prediction(2, "a"), b"{oops", None]
    labels = [label(1, "a"), label(1, "zzz"), label(3, "a"), b"[]"]
    alerts = [alert("drift_detected", 9, 5), alert("accuracy_below_threshold", 7, 4)]
    data = build_report(predictions, labels, alerts, window=10)
    assert data.counts == {
        "predictions": 2, "duplicate_predictions": 1, "labels": 2, "joined": 1, "correct": 1,
        "labels_outside_ttl": 0, "predictions_without_label": 1, "labels_without_prediction": 1,
        "undecodable_predictions": 2, "undecodable_labels": 1, "alerts": 2,
    }  # fmt: skip
    assert [a.alert for a in data.alerts] == ["accuracy_below_threshold", "drift_detected"]
    assert data.start_ms == 7  # the earliest of outcomes and alerts
    assert accuracy_around_drift(data) == {}


def test_versions_roll_separately() -> None:
    predictions = [prediction(i, "1", version=1 + i % 2) for i in range(6)]
    labels = [label(i, "1" if i % 2 else "0") for i in range(6)]
    data = build_report(predictions, labels, [], window=100)
    assert data.series["m v1"][-1].accuracy == 0.0
    assert data.series["m v2"][-1].accuracy == 1.0


def test_window_must_hold_an_outcome() -> None:
    with pytest.raises(ValueError, match="window"):
        build_report([], [], [], window=0)


def test_report_files_hold_a_real_picture(tmp_path: Path) -> None:
    predictions = [prediction(i, "1") for i in range(400)]
    labels = [label(i, "1" if i < 200 or i % 2 else "0") for i in range(400)]
    alerts = [alert("drift_detected", 300_000, 250), alert("feature_drift", 310_000, 260)]
    data = build_report(predictions, labels, alerts, window=50, drift_at_ms=200_000)
    png, page = write_report(data, tmp_path, title="test <report>")
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size[0] > 800
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 50  # lines, markers and text, not a blank canvas
    html = page.read_text()
    assert "data:image/png;base64," in html
    assert "test &lt;report&gt;" in html  # escaped
    assert "drift_detected" in html
    assert "feature_drift" in html
    assert "accuracy after the drift" in html


def test_progress_line_and_log_tail(tmp_path: Path) -> None:
    line = Progress(total=200, sent=150, scored=100, joined=90, accuracy=0.9, alerts=1).line(10)
    assert line.startswith("[#####.....]  50%")
    assert "accuracy 0.900" in line
    log = tmp_path / "w.log"
    log.write_text('{"event": "a", "n": 1}\nnot json\n{"event": "a", "n": 2}\n{"event": "b"')
    tail = LogTail(log)
    tail.read()
    assert tail.latest["a"]["n"] == 2
    assert "b" not in tail.latest  # an unfinished line waits
    with log.open("a") as f:
        f.write(', "n": 3}\n')
    tail.read()
    assert tail.latest["b"]["n"] == 3
    assert tail.counts["a"] == 2


def test_a_pair_the_monitor_expired_is_not_joined() -> None:
    # Prediction i at event time 1000 i; its label's record comes `delay` ms later.
    predictions = [prediction(i, "1") for i in range(4)]
    labels = [label(i, "1") for i in range(4)]
    delays = [500, 5_000, -500, -5_000]  # late, later than the TTL, early, too early
    stamps = [1000 * i + d for i, d in enumerate(delays)]
    data = build_report(predictions, labels, [], window=10, label_timestamps=stamps,
                        label_ttl_ms=1_000, orphan_label_ttl_ms=1_000)  # fmt: skip
    assert [p.time_ms for p in data.series["m v1"]] == [0, 2000]
    assert data.counts["labels_outside_ttl"] == 2
    assert data.counts["predictions_without_label"] == 0
    # Without the TTLs (or a timestamp) every pair joins, as before.
    assert build_report(predictions, labels, [], window=10).counts["joined"] == 4


def test_a_label_time_in_the_label_wins_over_its_record_timestamp() -> None:
    predictions = [prediction(1, "1")]
    labels = [json.dumps({"event_id": "e1", "label": "1", "label_time": 1500}).encode()]
    data = build_report(predictions, labels, [], window=10, label_timestamps=[999_999],
                        label_ttl_ms=1_000)  # fmt: skip
    assert data.counts["joined"] == 1
