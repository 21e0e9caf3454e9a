from __future__ import annotations

import random

import pytest

from workers.core.label_join import LabelJoin, Outcome, PendingPrediction

HOUR = 3_600_000


def prediction(t: int, label: int = 1, version: int = 1) -> PendingPrediction:
    return PendingPrediction("m", version, label, t, positive="1")


def new_join(max_pending: int = 100) -> LabelJoin:
    return LabelJoin(label_ttl_ms=HOUR, orphan_label_ttl_ms=600_000, max_pending=max_pending)


def test_prediction_then_label_joins() -> None:
    join = new_join()
    assert join.add_prediction("a", prediction(1000, label=1)) is None
    outcome = join.add_label("a", 0, 2000)
    assert outcome == Outcome("a", "m", 1, 1, 0, 1000, "1")
    assert outcome is not None
    assert not outcome.correct
    assert join.counters.joined == 1
    assert not join.predictions
    assert not join.labels


def test_label_then_prediction_joins() -> None:
    join = new_join()
    assert join.add_label("a", 1, 5000) is None
    outcome = join.add_prediction("a", prediction(1000, label=1))
    assert outcome is not None
    assert outcome.correct
    assert join.counters.joined == 1


def test_a_prediction_expires_after_the_label_ttl_of_event_time() -> None:
    join = new_join()
    join.add_prediction("a", prediction(0))
    join.advance(HOUR)  # exactly at the TTL: still waiting
    assert "a" in join.predictions
    join.advance(HOUR + 1)
    assert "a" not in join.predictions
    assert join.counters.expired_without_label == 1
    # Its label, arriving now, is late: counted, never joined.
    assert join.add_label("a", 1, HOUR + 2) is None
    assert join.counters.late_labels == 1
    assert join.counters.joined == 0
    assert not join.labels


def test_an_early_label_waits_the_shorter_orphan_ttl() -> None:
    join = new_join()
    join.add_label("x", 1, 0)
    join.add_prediction("other", prediction(600_001))
    assert "x" in join.labels  # the label side has not moved on yet
    join.add_label("y", 1, 600_001)
    assert join.counters.orphan_labels == 1
    assert "x" not in join.labels
    assert "other" in join.predictions


def test_one_side_read_far_ahead_expires_nothing_the_other_may_still_bring() -> None:
    join = new_join(max_pending=1000)
    join.add_prediction("a", prediction(0))
    for i in range(100):  # predictions read hours ahead of the labels
        join.add_prediction(f"p{i}", prediction(i * HOUR))
    join.add_label("early", 1, 10)
    assert join.counters.expired_without_label == 0
    assert join.add_label("a", 1, 20) is not None


def test_buffers_are_bounded_oldest_first() -> None:
    join = new_join(max_pending=3)
    for i in range(5):
        join.add_prediction(f"p{i}", prediction(i))
        join.add_label(f"l{i}", 1, i)
    assert list(join.predictions) == ["p2", "p3", "p4"]
    assert list(join.labels) == ["l2", "l3", "l4"]
    assert join.counters.evicted_predictions == 2
    assert join.counters.evicted_labels == 2


def test_duplicates_never_count_twice() -> None:
    join = new_join()
    join.add_prediction("a", prediction(0))
    join.add_prediction("a", prediction(0))  # duplicate while pending
    assert join.add_label("a", 1, 1) is not None
    assert join.add_prediction("a", prediction(0)) is None  # duplicate after the join
    assert join.add_label("a", 1, 2) is None  # duplicate label after the join
    join.add_label("b", 1, 3)
    join.add_label("b", 1, 3)  # duplicate while pending
    assert join.counters.joined == 1
    assert join.counters.duplicate_predictions == 2
    assert join.counters.duplicate_labels == 2
    assert list(join.labels) == ["b"]


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_streams_give_exact_counts(seed: int) -> None:
    rng = random.Random(seed)
    records: list[tuple[str, str, int]] = []
    for i in range(1000):
        t = i * 1000
        if i % 10 != 0:  # every tenth prediction never gets a label
            records.append(("prediction", f"e{i}", t))
        if i % 7 != 0 or i % 10 == 0:
            records.append(("label", f"e{i}", t + rng.randrange(0, 60_000)))
    records += [("label", f"orphan{i}", 500_000 + i) for i in range(13)]
    # Arrival order: shuffled within two minutes, so a label may come before its prediction
    # or after it, but event time never jumps past a TTL.
    records.sort(key=lambda r: r[2] + rng.uniform(0, 120_000))
    join = new_join(max_pending=10_000)
    for kind, event_id, t in records:
        if kind == "prediction":
            join.add_prediction(event_id, prediction(t))
        else:
            join.add_label(event_id, 1, t)
    join.advance(10**12)
    both = sum(1 for i in range(1000) if i % 10 != 0 and i % 7 != 0)
    only_prediction = sum(1 for i in range(1000) if i % 10 != 0 and i % 7 == 0)
    only_label = sum(1 for i in range(1000) if i % 10 == 0) + 13
    assert join.counters.joined == both
    assert join.counters.expired_without_label == only_prediction
    assert join.counters.orphan_labels == only_label
    assert not join.predictions
    assert not join.labels
