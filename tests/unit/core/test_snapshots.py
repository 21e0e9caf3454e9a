"""A changelog record is read back as data: the stages' own state comes back whole, anything
else (a foreign record, a crafted pickle, another group's snapshot) is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.unit.core.test_outcomes import CONFIG, _outcomes, label, prediction
from workers.core import snapshots
from workers.core.drift import DETECTORS
from workers.core.monitor import MonitorConfig
from workers.core.outcomes import OUTCOME_ENCODER, AggregatePartition, JoinPartition
from workers.kafka_io.changelog import Assembler, claim_record, snapshot_records

TAG = "g-join-changelog"


def busy_join() -> JoinPartition:
    part = JoinPartition.new(CONFIG)
    for i in range(50):
        part.on_prediction(prediction(f"p{i}", i), 0, now_ms=i)
        part.on_label(label(f"l{i}", "yes", i), 0, (1, i), now_ms=i)
    part.on_label(label("p3", "no", 9), 0, (1, 99), now_ms=9)
    return part


def test_a_join_partition_comes_back_whole() -> None:
    part = busy_join()
    back = snapshots.load(snapshots.dump(part, TAG), TAG, JoinPartition)
    assert back.join.predictions == part.join.predictions
    assert back.join.labels == part.join.labels
    assert back.join.counters == part.join.counters
    assert back.join.forwarded == part.join.forwarded


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_an_aggregate_partition_comes_back_whole_with_every_detector(detector: str) -> None:
    config = MonitorConfig(window=50, detector=detector, rules=CONFIG.rules)
    part = AggregatePartition.new(config, dedupe=100)
    for r in _outcomes(300, seed=5):
        part.on_record(OUTCOME_ENCODER.encode(r), now_ms=0)
    back = snapshots.load(snapshots.dump(part, TAG), TAG, AggregatePartition)
    assert back.state.metrics() == part.state.metrics()
    assert back.counts == part.counts
    more = _outcomes(350, seed=6)[300:]
    for r in more:  # and goes on exactly as the original would
        assert part.on_record(OUTCOME_ENCODER.encode(r), 0) == back.on_record(
            OUTCOME_ENCODER.encode(r), 0
        )


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_record_runs_nothing_and_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = pickle.dumps(Exploit(marker), protocol=5)
    for blob in (snapshots.MAGIC + snapshots._tag(TAG) + payload, payload):  # noqa: SLF001
        with pytest.raises(snapshots.SnapshotRefused, match=r"names (posix|os)\.system"):
            snapshots.load(blob, TAG, JoinPartition)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b'{"event_id": "x"}', "not a scorestream snapshot"),
        (snapshots.dump(JoinPartition.new(CONFIG), "other-join-changelog"), "another group"),
        (snapshots.dump({"a": 1}, TAG), "holds a dict"),
        (snapshots.dump(JoinPartition.new(CONFIG), TAG)[:-20], "unreadable"),
        (snapshots.MAGIC + snapshots._tag(TAG) + pickle.dumps(print), "builtins.print"),  # noqa: SLF001
    ],
)
def test_what_is_no_snapshot_of_this_group_is_refused(blob: bytes, reason: str) -> None:
    with pytest.raises(snapshots.SnapshotRefused, match=reason):
        snapshots.load(blob, TAG, JoinPartition)


def test_an_untagged_snapshot_of_an_earlier_release_still_loads() -> None:
    part = busy_join()
    back = snapshots.load(pickle.dumps(part, protocol=5), TAG, JoinPartition)
    assert back.join.predictions == part.join.predictions


def compacted(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """What log compaction leaves: the newest record of each key, in log order."""
    last = {key: i for i, (key, _) in enumerate(records)}
    return [r for i, r in enumerate(records) if last[r[0]] == i]


def read(records: list[tuple[bytes, bytes]]) -> bytes | None:
    assembler = Assembler()
    for key, value in records:
        assembler.add(value, key)
    return assembler.latest


def test_a_torn_snapshot_then_compaction_leaves_the_last_complete_one() -> None:
    w = b"w" * 8
    log = snapshot_records(0, w, 1, b"one" * 300, slot=0, chunk_bytes=400)
    log += snapshot_records(0, w, 2, b"two" * 300, slot=1, chunk_bytes=400)
    log += snapshot_records(0, w, 3, b"tri" * 300, slot=0, chunk_bytes=400)[:1]  # crash
    assert read(log) == b"two" * 300
    assert read(compacted(log)) == b"two" * 300


def test_after_a_claim_a_stalled_former_owners_snapshot_never_wins() -> None:
    old, new = b"o" * 8, b"n" * 8
    log = snapshot_records(0, old, 1, b"before", slot=0)
    log.append(claim_record(0, new))  # the new owner claims, then reads "before"
    log += snapshot_records(0, new, 1, b"successor", slot=1)
    log += snapshot_records(0, old, 2, b"stale", slot=1)  # the old owner wakes up
    assert read(log) == b"successor"
    assert read(compacted(log)) == b"before"  # its slot was overwritten by the stale one...
    # ...which still does not count, and the successor's next snapshot is read.
    log += snapshot_records(0, new, 2, b"next", slot=0)
    assert read(compacted(log)) == b"next"


def test_getattr_reaches_a_method_of_an_allowed_object_and_nothing_else() -> None:
    class Reach:
        def __init__(self, target: object, name: str) -> None:
            self.target, self.name = target, name

        def __reduce__(self) -> tuple[object, ...]:
            return (getattr, (self.target, self.name))

    for target, name in ((JoinPartition, "new"), (busy_join(), "__class__"), ("x", "join")):
        blob = snapshots.dump(Reach(target, name), TAG)
        with pytest.raises(snapshots.SnapshotRefused):
            snapshots.load(blob, TAG, JoinPartition)
