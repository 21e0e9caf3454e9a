"""Performance estimated from probabilities alone (CBPE), with plain values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.core.estimation import (
    BINARY,
    CONFIDENCE,
    Calibration,
    EstimateCheck,
    EstimatedPerformance,
    Expected,
    expected,
    fit_calibration,
)

pytestmark = pytest.mark.unit


def overconfident(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A binary model whose probabilities are too sure: P(y=1) is really 0.5 + (p - 0.5) / 2."""
    p = rng.random(n)
    truth = (rng.random(n) < 0.5 + (p - 0.5) / 2).astype(int)
    return np.stack([1 - p, p], axis=1), truth


def test_binary_calibration_corrects_overconfidence_and_estimates_accuracy() -> None:
    rng = np.random.default_rng(0)
    proba, truth = overconfident(rng, 20_000)
    calibration = fit_calibration(proba, truth.tolist())
    assert calibration is not None
    assert calibration.kind == BINARY
    assert calibration(0.9) == pytest.approx(0.7, abs=0.03)
    # Live under covariate shift: only confident rows (|p - 0.5| large), same relation.
    live_p = np.where(rng.random(5000) < 0.5, rng.uniform(0.8, 1.0, 5000),
                      rng.uniform(0.0, 0.2, 5000))  # fmt: skip
    live_truth = rng.random(5000) < 0.5 + (live_p - 0.5) / 2
    window = EstimatedPerformance(5000)
    for p in live_p.tolist():
        e = expected(calibration, [1 - p, p])
        assert e is not None
        window.add(e)
    realized = float(((live_p > 0.5) == live_truth).mean())
    estimate = window.accuracy()
    assert estimate is not None
    assert abs(estimate - realized) < 0.02
    # The raw probabilities would have promised about 0.9.
    assert float(np.maximum(live_p, 1 - live_p).mean()) > 0.85
    f1 = window.f1()
    assert f1 is not None
    assert 0 < f1 < 1


def test_multiclass_calibrates_the_confidence_of_the_predicted_class() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6000, 3)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(3, p=row) for row in proba])
    calibration = fit_calibration(proba, truth.tolist())
    assert calibration is not None
    assert calibration.kind == CONFIDENCE
    e = expected(calibration, [0.1, 0.7, 0.2])
    assert e is not None
    assert e.correct == pytest.approx(0.7, abs=0.06)
    assert (e.tp, e.fp, e.fn) == (0.0, 0.0, 0.0)


def test_nothing_to_calibrate_on_gives_none() -> None:
    assert fit_calibration(np.zeros((0, 2)), []) is None
    assert fit_calibration(np.array([[0.3, 0.7]] * 5), [1] * 5) is None


def test_expected_outcomes_of_a_binary_prediction() -> None:
    calibration = Calibration(BINARY, (0.0, 1.0), (0.0, 1.0), 2)
    binary = expected(calibration, [0.2, 0.8])
    assert binary is not None
    assert (binary.correct, binary.tp, binary.fn) == (0.8, 0.8, 0.0)
    assert binary.fp == pytest.approx(0.2)
    assert expected(calibration, [0.7, 0.3]) == Expected(0.7, fn=0.3)
    assert expected(calibration, [math.nan, 0.3]) is None
    assert expected(calibration, []) is None
    assert Calibration.from_json(calibration.to_json()) == calibration
    with pytest.raises(ValueError, match="kind"):
        Calibration.from_json({"kind": "other", "x": [0], "y": [0]})


def test_running_sums_equal_exact_sums_over_the_window() -> None:
    rng = np.random.default_rng(2)
    window = EstimatedPerformance(100)
    values = [Expected(float(c)) for c in rng.random(1234)]
    for v in values:
        window.add(v)
    assert window.size == 100
    exact = math.fsum(v.correct for v in values[-100:]) / 100
    assert window.accuracy() == pytest.approx(exact, abs=1e-12)


def test_estimate_check_puts_realized_beside_estimated() -> None:
    check = EstimateCheck(4)
    assert check.snapshot() is None
    for estimate, correct in [(0.9, True), (0.9, False), (0.8, True), (0.7, True), (0.6, False)]:
        check.add(estimate, correct)
    snapshot = check.snapshot()
    assert snapshot is not None
    assert snapshot[0] == pytest.approx(0.75)
    assert snapshot[1] == 0.5


def test_probabilities_already_calibrated_are_left_as_they_are() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(20_000)
    truth = (rng.random(20_000) < p).astype(int)  # P(y=1) is p: nothing to correct
    calibration = fit_calibration(np.stack([1 - p, p], axis=1), truth.tolist())
    assert calibration is not None
    assert (calibration.x, calibration.y) == ((0.0, 1.0), (0.0, 1.0))
    assert calibration(0.37) == pytest.approx(0.37)
