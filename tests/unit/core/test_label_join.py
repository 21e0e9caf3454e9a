from __future__ import annotations

import pickle
import random

import pytest

from workers.core.label_join import SOURCE_IDLE_MS, LabelJoin, Outcome, PendingPrediction

HOUR = 3_600_000


def prediction(t: int, label: int = 1, version: int = 1) -> PendingPrediction:
    return PendingPrediction("m", version, label, t, positive="1")


def new_join(max_pending: int = 100) -> LabelJoin:
    return LabelJoin(label_ttl_ms=HOUR, orphan_label_ttl_ms=600_000, max_pending=max_pending)


def test_prediction_then_label_joins() -> None:
    join = new_join()
    assert join.add_prediction("a", prediction(1000, label=1)) is None
    outcome = join.add_label("a", 0, 2000)
    assert outcome == Outcome("a", "m", 1, 1, 0, 1000, "1", label_time=2000)
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


def test_one_far_future_event_time_holds_back_no_expiry() -> None:
    """Expiry goes by time: an entry stamped in microseconds (or in 2100) that arrived first
    must not keep the 2,000 behind it pending."""
    join = new_join(max_pending=10_000)
    join.add_prediction("micros", prediction(1_700_000_000_000_000))
    for i in range(2000):
        join.add_prediction(f"p{i}", prediction(i * 1000))
    join.advance(2000 * 1000 + HOUR + 1)
    assert join.counters.expired_without_label == 2000
    assert list(join.predictions) == ["micros"]


def test_expiry_is_exact_inside_a_bucket_whatever_the_arrival_order() -> None:
    join = new_join(max_pending=10_000)
    times = [5, 900, 3, 1500, 1000, 2, 1023, 1024, 700]
    for i, t in enumerate(times):
        join.add_prediction(f"p{i}", prediction(t))
    for horizon in range(1600):
        join.advance(HOUR + horizon)
        due = {f"p{i}" for i, t in enumerate(times) if t < horizon}
        assert set(join.predictions) == {f"p{i}" for i in range(len(times))} - due, horizon
    assert join.counters.expired_without_label == len(times)


def test_labels_expire_by_time_too() -> None:
    join = new_join()
    join.add_label("future", 1, 10**15)
    join.add_label("a", 1, 0)
    join.add_prediction("clock", prediction(600_001))
    join.add_label("b", 1, 600_001)  # the label side's clock: "a" is past the orphan TTL
    assert join.counters.orphan_labels == 1
    assert set(join.labels) == {"future", "b"}


def test_the_expiry_index_stays_small_when_most_entries_join() -> None:
    join = new_join(max_pending=100_000)
    for i in range(50_000):
        join.add_prediction(f"p{i}", prediction(i))
        assert join.add_label(f"p{i}", 1, i) is not None
    keys = sum(len(k) for k in join.prediction_expiry.buckets.values())
    assert keys < 2_000  # compacted as entries join, not kept until their bucket expires
    assert len(join.prediction_expiry) == 0


def test_a_checkpoint_from_before_the_expiry_index_loads_and_expires() -> None:
    import pickle  # noqa: PLC0415

    join = new_join()
    join.add_prediction("a", prediction(0))
    join.add_label("x", 1, 5)
    slots = {name: getattr(join, name) for name in LabelJoin.__slots__}
    del slots["prediction_expiry"], slots["label_expiry"]  # as an older version wrote it
    old = LabelJoin.__new__(LabelJoin)
    old.__setstate__((None, slots))
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - our own bytes
    restored.advance(HOUR + 1)
    assert restored.counters.expired_without_label == 1
    assert restored.counters.orphan_labels == 1


def test_re_keyed_labels_move_the_clock_only_as_far_as_their_slowest_source() -> None:
    """Labels of several source partitions arrive merged, one source read far ahead: its
    label times must not expire predictions whose labels another source still brings."""
    join = new_join(max_pending=10_000)
    join.add_prediction("a", prediction(0))
    join.add_prediction("late-clock", prediction(10 * HOUR))
    join.add_label("y", 1, 5, source=1)  # both sources start together...
    join.add_label("w", 1, 4, source=0)
    join.add_label("x", 1, 10 * HOUR, source=0)  # ...then source 0 is read far ahead
    assert join.counters.expired_without_label == 0
    assert join.add_label("a", 1, 6, source=1) is not None
    join.add_label("z", 1, 10 * HOUR, source=1)  # now both are far ahead
    assert join.counters.expired_without_label == 0  # "late-clock" is within its TTL
    assert join.watermark == 10 * HOUR


def test_re_keyed_predictions_behind_this_partitions_own_still_meet_their_labels() -> None:
    """After a restart this partition's own predictions are read a backlog ahead of those
    re-keyed from other partitions (a round trip behind): a label waiting for one of the
    latter must not expire as an orphan meanwhile."""
    join = new_join(max_pending=10_000)
    join.add_prediction("own", prediction(0))
    join.add_prediction("re-keyed-early", prediction(1), source=2)  # source 2 seen
    join.add_label("e", 1, 2, source=0)  # its prediction is still on its way from source 2
    join.add_prediction("own-ahead", prediction(HOUR // 2))  # own partition read ahead
    join.add_label("clock", 1, HOUR // 2, source=0)
    assert join.counters.orphan_labels == 0
    assert join.add_prediction("e", prediction(3), source=2) is not None


def test_a_source_that_stops_holds_the_prediction_clock_back_for_a_minute_at_most() -> None:
    join = new_join(max_pending=10_000)
    join.add_prediction("stray", prediction(0), source=3, now_ms=0)  # one written by hand
    join.add_label("orphan", 1, 1, source=0)
    for second in range(0, 60, 5):  # own predictions keep coming, far ahead in event time
        join.add_prediction(f"own{second}", prediction(5 * HOUR + second), now_ms=second * 1000)
        join.add_label(f"clock{second}", 1, 5 * HOUR, source=0)
    assert join.counters.orphan_labels == 0  # held back while the stray source may send
    join.add_prediction("own-later", prediction(6 * HOUR), now_ms=SOURCE_IDLE_MS + 1)
    assert join.counters.orphan_labels == 1
    assert join.prediction_sources == {}  # the one clock is back


def test_a_partition_not_heard_from_yet_may_still_send() -> None:
    """A backlog's partitions are read at different speeds (by bytes, not by event time): the
    first predictions another partition re-keys here may come long after labels that wait
    for them, however far this partition's own have gone."""
    join = LabelJoin(HOUR, 600_000, 10_000, prediction_partitions=4)
    join.add_prediction("own", prediction(0), now_ms=0)
    join.add_label("e", 1, 1, source=0)  # its prediction is still unread on partition 2
    join.add_prediction("own-ahead", prediction(10 * HOUR), now_ms=30_000)
    join.add_label("clock", 1, 10 * HOUR, source=0)
    assert join.counters.orphan_labels == 0
    assert join.add_prediction("e", prediction(2), source=2, now_ms=40_000) is not None
    # Partition 2 keeps sending; the others never do: a minute on, only 2 holds the clock.
    join.add_label("orphan", 1, 10, source=0)
    join.add_prediction("from-2", prediction(10 * HOUR), source=2, now_ms=SOURCE_IDLE_MS + 1)
    join.add_prediction("own-later", prediction(10 * HOUR), now_ms=SOURCE_IDLE_MS + 2)
    assert join.counters.orphan_labels == 1
    assert set(join.prediction_sources) == {2}


def test_a_restored_join_gives_every_source_its_minute_afresh() -> None:
    join = LabelJoin(HOUR, 600_000, 10_000, prediction_partitions=2)
    join.add_prediction("own", prediction(0), now_ms=0)
    restored = pickle.loads(pickle.dumps(join))  # noqa: S301 - our own object
    restored.add_label("e", 1, 1, source=0)
    restored.add_prediction("own-ahead", prediction(10 * HOUR), now_ms=10 * SOURCE_IDLE_MS)
    restored.add_label("clock", 1, 10 * HOUR, source=0)
    assert restored.counters.orphan_labels == 0  # down for ten minutes: no source idle yet


def test_at_the_end_of_a_stream_idle_sources_let_go_without_another_record() -> None:
    join = LabelJoin(HOUR, 600_000, 10_000, prediction_partitions=3)
    join.add_prediction("a", prediction(0), now_ms=0)
    join.add_prediction("clock", prediction(10 * HOUR), now_ms=1_000)
    join.add_label("clock-label", 1, 10 * HOUR, source=0)
    assert join.counters.expired_without_label == 0  # partitions 1 and 2 might still send
    assert not join.tick(now_ms=SOURCE_IDLE_MS // 2)
    assert join.tick(now_ms=SOURCE_IDLE_MS + 1_001)
    assert join.counters.expired_without_label == 1
