from __future__ import annotations

from pathlib import Path

import pytest

from workers.checkpoint import CheckpointError, CheckpointStore
from workers.core.label_join import LabelJoin, PendingPrediction
from workers.core.monitor import MonitorConfig, MonitorState

IDENTITY = {"group_id": "g", "predictions_topic": "p", "labels_topic": "l"}


def test_state_and_offsets_round_trip(tmp_path: Path) -> None:
    state = MonitorState(MonitorConfig(window=10))
    join = LabelJoin(1000, 100, 10)
    join.add_prediction("a", PendingPrediction("m", 1, 1, 5, "1"))
    store = CheckpointStore(tmp_path / "s.sqlite", IDENTITY)
    store.save(state, {3: join}, {("p", 3): 42, ("l", 3): 7})
    store.close()

    store = CheckpointStore(tmp_path / "s.sqlite", IDENTITY)
    restored = store.load_partition(3)
    assert isinstance(restored, LabelJoin)
    assert list(restored.predictions) == ["a"]
    assert store.offset("p", 3) == 42
    assert store.offset("l", 3) == 7
    assert store.offset("p", 0) is None
    assert store.load_partition(0) is None
    assert isinstance(store.load_global(), MonitorState)


def test_a_failed_save_stores_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "s.sqlite", IDENTITY)
    store.save("v1", {}, {("p", 0): 1})

    class Unpicklable:
        def __reduce__(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.save("v2", {0: Unpicklable()}, {("p", 0): 2})
    assert store.load_global() == "v1"
    assert store.offset("p", 0) == 1


def test_another_monitors_state_is_refused(tmp_path: Path) -> None:
    CheckpointStore(tmp_path / "s.sqlite", IDENTITY).close()
    with pytest.raises(CheckpointError, match="another --state-dir"):
        CheckpointStore(tmp_path / "s.sqlite", {**IDENTITY, "labels_topic": "other"})


def test_a_save_by_a_former_owner_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Two monitors share the file; the first stalls, the group gives its partition to the
    second, then the first wakes and saves: its stale rows must not replace the new owner's."""
    first = CheckpointStore(tmp_path / "s.sqlite", IDENTITY, instance="a")
    second = CheckpointStore(tmp_path / "s.sqlite", IDENTITY, instance="b")
    claims_a = first.claim([("p", 0)])
    assert first.save("a-state", {0: "a-join"}, {("p", 0): 10}, owned=claims_a)
    claims_b = second.claim([("p", 0)])
    assert claims_b[("p", 0)] == claims_a[("p", 0)] + 1
    assert second.save("b-state", {0: "b-join"}, {("p", 0): 20}, owned=claims_b)
    assert not first.save("a-stale", {0: "a-stale-join"}, {("p", 0): 15}, owned=claims_a)
    assert first.load_partition(0) == "b-join"
    assert first.offset("p", 0) == 20
    assert first.load_global() == "a-state"  # nothing of the refused save was written
