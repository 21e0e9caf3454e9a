from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from workers.core.synthetic import StreamSpec, stream

pytestmark = pytest.mark.unit


def spec(**kw: object) -> StreamSpec:
    rows = np.arange(20, dtype=np.float64).reshape(10, 2) + 1
    labels = np.array([0, 1] * 5, dtype=np.int64)
    return StreamSpec(features=("a", "b"), rows=rows, labels=labels, **kw)  # type: ignore[arg-type]


def test_events_are_feature_events_in_event_time_order() -> None:
    events = list(itertools.islice(stream(spec(noise=0.0), 1_000, 10.0), 50))
    assert [e.event_time for e in events] == [1_000 + 10 * i for i in range(50)]
    for e in events:
        body = json.loads(e.value)
        assert body["event_id"] == e.event_id
        assert set(body["features"]) == {"a", "b"}
        assert body["event_time"] == e.event_time
        delay = e.label_delay_ms
        assert delay is not None
        assert 1_000 <= delay <= 60_000
        label = json.loads(e.label_value())
        assert label == {"event_id": e.event_id, "label": e.label,
                         "label_time": e.event_time + delay}  # fmt: skip


def test_labels_match_their_rows_until_the_drift_then_about_half_flip() -> None:
    rows = np.arange(20, dtype=np.float64).reshape(10, 2) + 1
    events = list(itertools.islice(stream(spec(noise=0.0, drift_at=2000), 0, 1.0), 4000))

    def true_label(value: bytes) -> int:
        a = json.loads(value)["features"]["a"]
        return int(np.flatnonzero(rows[:, 0] == a)[0]) % 2

    before = [e.label == true_label(e.value) for e in events[:2000]]
    after = [e.label == true_label(e.value) for e in events[2000:]]
    assert all(before)
    assert 0.4 < sum(after) / len(after) < 0.6


def test_label_fraction_leaves_some_events_unlabelled() -> None:
    events = list(itertools.islice(stream(spec(label_fraction=0.7), 0, 1.0), 2000))
    labelled = sum(e.label_delay_ms is not None for e in events)
    assert 0.65 < labelled / 2000 < 0.75
