from __future__ import annotations

import random

import pytest

from workers.core.label_join import Outcome
from workers.core.performance import RollingPerformance


def outcomes(n: int, seed: int, *, binary: bool = True) -> list[Outcome]:
    rng = random.Random(seed)
    classes: list[int | str] = [0, 1] if binary else ["a", "b", "c"]
    result = []
    for i in range(n):
        actual = rng.choice(classes)
        predicted = actual if rng.random() < 0.8 else rng.choice(classes)
        result.append(Outcome(f"e{i}", "m", 1, predicted, actual, i * 250, "1" if binary else None))
    return result


def offline(window: list[Outcome]) -> dict[str, float | None]:
    """Recompute from scratch, the way an analyst would."""
    n = len(window)
    correct = sum(o.predicted == o.actual for o in window)
    tp = sum(o.predicted == 1 and o.actual == 1 for o in window)
    fp = sum(o.predicted == 1 and o.actual == 0 for o in window)
    fn = sum(o.predicted == 0 and o.actual == 1 for o in window)
    return {
        "accuracy": correct / n,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    }


@pytest.mark.parametrize(("seed", "window"), [(0, 100), (1, 1000), (2, 7), (3, 5000)])
def test_rolling_metrics_equal_an_offline_recomputation_exactly(seed: int, window: int) -> None:
    stream = outcomes(3000, seed)
    perf = RollingPerformance(window=window, time_window_ms=60_000)
    for i, outcome in enumerate(stream, start=1):
        perf.add(outcome)
        if i % 97 == 0 or i == len(stream):
            snap = perf.snapshot()
            expected = offline(stream[max(0, i - window) : i])
            assert snap.window_accuracy == expected["accuracy"]
            assert snap.precision == expected["precision"]
            assert snap.recall == expected["recall"]
            assert snap.f1 == expected["f1"]
            assert snap.joined == i
            assert snap.window_size == min(i, window)
    reference = stream[:window]
    assert perf.snapshot().reference_accuracy == (
        sum(o.predicted == o.actual for o in reference) / len(reference)
    )


def test_time_windows_are_tumbling_by_event_time() -> None:
    stream = outcomes(1000, 5)  # 250 ms apart: 240 per minute
    perf = RollingPerformance(window=100, time_window_ms=60_000, time_windows_kept=3)
    for outcome in stream:
        perf.add(outcome)
    by_time = perf.snapshot().time_window_accuracy
    assert list(by_time) == [120_000, 180_000, 240_000]
    for start, accuracy in by_time.items():
        inside = [o for o in stream if start <= o.event_time < start + 60_000]
        assert accuracy == sum(o.predicted == o.actual for o in inside) / len(inside)


def test_multiclass_has_accuracy_but_no_precision() -> None:
    perf = RollingPerformance(window=50)
    for outcome in outcomes(200, 6, binary=False):
        perf.add(outcome)
    snap = perf.snapshot()
    assert snap.window_accuracy is not None
    assert snap.precision is None
    assert snap.f1 is None


def test_a_type_mismatch_is_not_a_correct_prediction() -> None:
    # JSON true and 1 are different labels even though Python says True == 1.
    assert not Outcome("e", "m", 1, predicted=True, actual=1, event_time=0, positive=None).correct
    assert Outcome("e", "m", 1, "1", "1", 0, None).correct
