"""The two-stage monitor's pure parts, with plain values: Outcome records from a join
partition, the aggregate partition that reads them, and the changelog's snapshots."""

from __future__ import annotations

import json
import pickle
import random
from typing import Any

import jsonschema
import pytest

from workers.core.alerts import AlertRules
from workers.core.events import EventDecoder
from workers.core.feature_spec import CATEGORICAL, FeatureSpec
from workers.core.inference import ServingModel, score_batch
from workers.core.label_join import Outcome
from workers.core.monitor import Misplaced, MonitorConfig, MonitorState
from workers.core.outcomes import (
    OUTCOME_ENCODER,
    AggregatePartition,
    JoinPartition,
    OutcomeRecord,
)
from workers.core.partitioning import partition_of
from workers.core.scoring import ScoredBatch
from workers.kafka_io.changelog import Assembler, snapshot_records
from workers.schemas import load_schema

MINUTE = 60_000
CONFIG = MonitorConfig(window=50, label_ttl_ms=10 * MINUTE, orphan_label_ttl_ms=10 * MINUTE,
                       rules=AlertRules(accuracy_threshold=0.8, min_outcomes=20))  # fmt: skip
VALIDATOR = jsonschema.Draft202012Validator(load_schema("outcome"))


def prediction(event_id: str, t: int, label: Any = "yes", **extra: Any) -> bytes:
    p = {"event_id": event_id, "model_name": "m", "model_version": 1, "label": label,
         "score": 0.75, "event_time": t, "scored_at": t + 3,
         "probabilities": {"no": 0.25, "yes": 0.75}, **extra}  # fmt: skip
    return json.dumps(p).encode()


def label(event_id: str, value: Any, t: int) -> bytes:
    return json.dumps({"event_id": event_id, "label": value, "label_time": t}).encode()


def wire(records: list[OutcomeRecord]) -> list[dict[str, Any]]:
    """As the outcomes topic carries them, each checked against the schema."""
    out = []
    for record in records:
        data = json.loads(OUTCOME_ENCODER.encode(record))
        VALIDATOR.validate(data)
        out.append(data)
    return out


def test_a_joined_pair_becomes_one_record_keyed_by_its_version() -> None:
    part = JoinPartition.new(CONFIG)
    features = {"city": "Oslo", "amount": None, "hour": 13}
    assert part.on_prediction(prediction("a", 1_000, features=features), 0, now_ms=5) == []
    [record] = part.on_label(label("a", "no", 2_000), 0, (0, 0), now_ms=7)
    assert record.key == b"m/1"
    assert wire([record]) == [{
        "kind": "joined", "event_id": "a", "at": 7, "model_name": "m", "model_version": 1,
        "predicted": "yes", "score": 0.75, "actual": "no", "correct": False,
        "event_time": 1_000, "label_time": 2_000, "features": features,
    }]  # fmt: skip


def test_a_label_first_joins_when_its_prediction_comes() -> None:
    part = JoinPartition.new(CONFIG)
    assert part.on_label(label("a", value=True, t=500), 0, (2, 9), now_ms=1) == []
    joined = part.on_prediction(prediction("a", 400, label=True), 0, now_ms=2)
    assert isinstance(joined, list)
    [record] = wire(joined)
    assert (record["correct"], record["label_time"]) == (True, 500)


def test_expired_predictions_and_orphan_labels_leave_as_records() -> None:
    part = JoinPartition.new(CONFIG)
    part.on_prediction(prediction("never-labelled", 0), 0, now_ms=1)
    part.on_label(label("never-predicted", "yes", 0), 0, (0, 0), now_ms=1)
    # Both sides' clocks move past the TTLs.
    part.on_prediction(prediction("late", 11 * MINUTE), 0, now_ms=2)
    records = part.on_label(label("late", "yes", 11 * MINUTE), 0, (0, 1), now_ms=3)
    kinds = {r["kind"]: r for r in wire(records)}
    assert set(kinds) == {"expired", "orphan", "joined"}
    assert kinds["expired"]["event_id"] == "never-labelled"
    assert "model_name" not in kinds["orphan"]
    assert kinds["orphan"]["actual"] == "yes"
    orphan = next(r for r in records if r.kind == "orphan")
    assert orphan.key == b"never-predicted"
    counters = part.counters()
    assert (counters["expired_without_label"], counters["orphan_labels"]) == (1, 1)


def test_a_regressor_outcome_carries_its_error_and_a_bad_label_is_counted() -> None:
    part = JoinPartition.new(CONFIG)
    value = {"event_id": "r", "model_name": "m", "model_version": 1, "label": 10.5,
             "score": 10.5, "event_time": 0, "scored_at": 0}  # fmt: skip
    part.on_prediction(json.dumps(value).encode(), 0, now_ms=1)
    [record] = wire(part.on_label(label("r", 12, 1), 0, (0, 0), now_ms=2))
    assert record["error"] == pytest.approx(1.5)
    assert "correct" not in record
    part.on_prediction(json.dumps({**value, "event_id": "s"}).encode(), 0, now_ms=3)
    assert part.on_label(label("s", "twelve", 1), 0, (0, 1), now_ms=4) == []
    assert part.counters()["invalid_labels"] == 1


def test_a_label_forwarded_again_after_a_restart_is_not_joined_twice() -> None:
    part = JoinPartition.new(CONFIG)
    part.on_prediction(prediction("a", 0), 0, now_ms=1)
    assert len(part.on_label(label("a", "yes", 1), 0, (1, 40), now_ms=2)) == 1
    assert part.on_label(label("a", "yes", 1), 0, (1, 40), now_ms=3) == []
    assert part.counters()["forward_replays"] == 1


def test_a_prediction_off_its_partition_is_re_keyed_and_joins_where_its_label_goes() -> None:
    home = partition_of(b"a", 6)
    away = JoinPartition.new(CONFIG)
    assert away.on_prediction(prediction("a", 0), 0, 1, ((home + 2) % 6, 6)) == Misplaced(b"a")
    assert away.counters()["misplaced_predictions"] == 1
    assert away.counters()["pending_predictions"] == 0
    there = JoinPartition.new(CONFIG)
    assert there.on_prediction(prediction("b", 0), 0, 1, (partition_of(b"b", 6), 6)) == []
    assert there.on_label(label("a", "yes", 1), 0, (1, 40), now_ms=2) == []
    [record] = there.on_forwarded_prediction(prediction("a", 0), 0, ((home + 2) % 6, 9), 3)
    assert (record.kind, record.correct) == ("joined", True)
    assert there.on_forwarded_prediction(prediction("a", 0), 0, ((home + 2) % 6, 9), 4) == []
    assert there.counters()["forward_replays"] == 1


def test_a_join_partition_resumes_from_its_pickle_as_it_was() -> None:
    part = JoinPartition.new(CONFIG)
    part.on_prediction(prediction("a", 0), 0, now_ms=1)
    part.offsets["predictions"] = 12
    back = pickle.loads(pickle.dumps(part))  # noqa: S301 - our own bytes
    assert back.offsets == {"predictions": 12}
    [record] = back.on_label(label("a", "yes", 5), 0, (0, 0), now_ms=2)
    assert record.correct is True


def _outcomes(n: int, seed: int) -> list[OutcomeRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        version = 1 + i % 2
        right = rng.random() < (0.95 if version == 1 else 0.5)
        out.append(OutcomeRecord("joined", f"e{i}", i, "m", version, "yes",
                                 0.7, "yes" if right else "no", right, event_time=i,
                                 label_time=i))  # fmt: skip
    return out


def test_the_aggregate_gives_what_one_process_gives_for_the_same_outcomes() -> None:
    records = _outcomes(400, seed=1)
    aggregate = AggregatePartition.new(CONFIG)
    single = MonitorState(CONFIG)
    aggregate_alerts, single_alerts = [], []
    for r in records:
        aggregate_alerts += aggregate.on_record(OUTCOME_ENCODER.encode(r), now_ms=0)
        outcome = Outcome(r.event_id, "m", r.model_version or 0, r.predicted or "",
                          r.actual or "", r.event_time or 0, None)  # fmt: skip
        single_alerts += single.on_outcome(outcome, now_ms=0)
    assert aggregate.state.metrics() == single.metrics()
    assert [a.fields() for a in aggregate_alerts] == [a.fields() for a in single_alerts]
    assert any(a.alert == "accuracy_below_threshold" and a.model_version == 2
               for a in aggregate_alerts)  # fmt: skip
    assert aggregate.counts == {"joined": 400}


def test_the_aggregate_counts_expired_orphans_repeats_and_junk_apart() -> None:
    aggregate = AggregatePartition.new(CONFIG, dedupe=10)
    joined = OUTCOME_ENCODER.encode(_outcomes(1, seed=2)[0])
    for value in (
        joined, joined,  # a repeat, as at-least-once may send after a crash
        OUTCOME_ENCODER.encode(OutcomeRecord("expired", "x", 1, "m", 1, "yes")),
        OUTCOME_ENCODER.encode(OutcomeRecord("orphan", "y", 1, actual="no")),
        b"not json",
        OUTCOME_ENCODER.encode(OutcomeRecord("joined", "z", 1)),  # no version: unusable
    ):  # fmt: skip
        assert aggregate.on_record(value, now_ms=0) == []
    assert aggregate.counts == {"joined": 1, "duplicate_outcomes": 1, "expired_without_label": 1,
                                "orphan_labels": 1, "invalid_outcomes": 2}  # fmt: skip


def test_a_replay_that_decides_expired_where_the_first_pass_joined_counts_once() -> None:
    aggregate = AggregatePartition.new(CONFIG, dedupe=10)
    first = _outcomes(1, seed=4)[0]
    aggregate.on_record(OUTCOME_ENCODER.encode(first), now_ms=0)
    # After a crash the join partition resumed, its clock ran ahead of the label: "expired".
    again = OutcomeRecord("expired", first.event_id, 2, "m", 1, first.predicted)
    aggregate.on_record(OUTCOME_ENCODER.encode(again), now_ms=0)
    # An orphan label of the same event is about the label, not the prediction: taken.
    orphan = OutcomeRecord("orphan", first.event_id, 3, actual="no")
    aggregate.on_record(OUTCOME_ENCODER.encode(orphan), now_ms=0)
    assert aggregate.counts == {"joined": 1, "duplicate_outcomes": 1, "orphan_labels": 1}


def test_the_aggregate_forgets_the_oldest_outcome_past_its_horizon() -> None:
    aggregate = AggregatePartition.new(CONFIG, dedupe=3)
    records = [OUTCOME_ENCODER.encode(r) for r in _outcomes(5, seed=3)]
    for value in records:
        aggregate.on_record(value, now_ms=0)
    aggregate.on_record(records[0], now_ms=0)  # beyond the horizon: taken as new
    aggregate.on_record(records[4], now_ms=0)  # within it: a repeat
    assert aggregate.counts == {"joined": 6, "duplicate_outcomes": 1}


def test_a_snapshot_in_chunks_comes_back_whole() -> None:
    blob = bytes(range(256)) * 41
    assembler = Assembler()
    for _, value in snapshot_records(3, b"w" * 8, 1, blob, chunk_bytes=1000):
        assembler.add(value)
    assert assembler.latest == blob


def test_the_last_complete_snapshot_wins_and_a_torn_one_is_ignored() -> None:
    old, new, torn = b"old" * 500, b"new" * 500, b"torn" * 500
    first = snapshot_records(0, b"a" * 8, 1, old, chunk_bytes=400)
    # A stalled old owner's chunks interleave with the new owner's.
    second = snapshot_records(0, b"b" * 8, 1, new, chunk_bytes=400)
    third = snapshot_records(0, b"a" * 8, 2, torn, chunk_bytes=400)[:-1]  # crashed mid-write
    assembler = Assembler()
    assembler.add(None)  # a tombstone is no snapshot
    for (_, a), (_, b) in zip(first, second, strict=True):
        assembler.add(a)
        assembler.add(b)
    for _, value in third:
        assembler.add(value)
    assert assembler.latest == new


def test_infer_emits_the_features_with_gaps_as_null_when_asked() -> None:
    class Fixed:
        features: tuple[str, ...] = ("amount", "city")

        def score(self, batch: Any) -> ScoredBatch:
            n = len(batch)
            return ScoredBatch(["yes"] * n, [0.75] * n, None)

    specs = (
        FeatureSpec("amount", nullable=True),
        FeatureSpec("city", CATEGORICAL, json_type="string"),
    )
    event = {"event_id": "e", "features": {"amount": None, "city": "Oslo"}}
    values = [json.dumps(event).encode()]
    for emit, expected in ((True, {"amount": None, "city": "Oslo"}), (False, None)):
        model = ServingModel("m", 1, EventDecoder(specs), Fixed(), emit_features=emit)
        [(_, _, value)] = score_batch(values, [0], model, scored_at_ms=1).predictions
        data = json.loads(value)
        jsonschema.validate(data, load_schema("prediction"))
        assert data.get("features") == expected
