"""Data drift calibrated on the reference stream: each check with plain values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from workers.core.calibrated_drift import (
    REFERENCE_MARGIN,
    Binning,
    Finding,
    ReferenceDrift,
    UnivariateDrift,
    calibrate,
)
from workers.example_data.streams import CATEGORICAL, FEATURES, cyclic_stream, rows_of

pytestmark = pytest.mark.unit

NUMERIC = [f not in CATEGORICAL for f in FEATURES]


def reference_columns(columns: dict[str, Any]) -> list[Any]:
    return [
        np.asarray(columns[f], dtype=np.float64) if n else list(columns[f])
        for f, n in zip(FEATURES, NUMERIC, strict=True)
    ]


def findings(
    drift: UnivariateDrift | ReferenceDrift, rows: list[tuple[Any, ...]]
) -> list[tuple[int, Finding]]:
    return [(i, f) for i, row in enumerate(rows) for f in drift.update(row)]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return cyclic_stream(20_000, seed=1)


@pytest.fixture(scope="module")
def drift(reference: dict[str, Any]) -> UnivariateDrift:
    return UnivariateDrift(FEATURES, NUMERIC, reference_columns(reference))


def fresh(drift: UnivariateDrift) -> UnivariateDrift:
    """The module's calibrated checks with an empty live window."""
    drift.restart()
    return drift


def test_a_cyclic_stream_like_its_reference_raises_nothing(drift: UnivariateDrift) -> None:
    live = cyclic_stream(20_000, seed=2, start=20_000)
    assert findings(fresh(drift), rows_of(live)) == []
    described = drift.describe()
    # The hour and the weekday cycle: their thresholds widened; independent noise kept its own.
    assert described["hour"]["mean_inflation"] > 20
    assert described["day"]["shape_inflation"] > 20
    assert described["score"]["mean_inflation"] < 1.5


def test_without_calibration_the_same_cycles_are_flagged(reference: dict[str, Any]) -> None:
    # The reference shuffled: its windows are independent samples, the thresholds tight.
    order = np.random.default_rng(0).permutation(20_000)
    shuffled = {k: np.asarray(v, dtype=object)[order].tolist() if k in CATEGORICAL
                else np.asarray(v)[order] for k, v in reference.items()}  # fmt: skip
    naive = UnivariateDrift(FEATURES, NUMERIC, reference_columns(shuffled))
    flagged = {f.feature for _, f in findings(naive, rows_of(cyclic_stream(3000, 2, start=20_000)))}
    assert {"hour", "day", "load"} <= flagged


def test_a_mean_shift_is_named_with_method_statistic_and_threshold(drift: UnivariateDrift) -> None:
    live = cyclic_stream(3000, seed=3, start=20_000, change="mean_shift", change_at=21_000)
    found = findings(fresh(drift), rows_of(live))
    first_at, first = found[0]
    assert first.feature == "score"
    assert first.check == "mean"
    assert first.method == "z_test"
    assert first.statistic > first.threshold > 0
    assert 0.3 < first.stats["shift_sigma"] < 0.8
    assert 1000 < first_at < 1200


def test_a_doubled_variance_is_found_by_tails_and_shape(drift: UnivariateDrift) -> None:
    live = cyclic_stream(3000, seed=4, start=20_000, change="variance", change_at=21_000)
    found = findings(fresh(drift), rows_of(live))
    assert {f.check for _, f in found if f.feature == "score"} >= {"tails", "distribution"}
    assert found[0][0] < 1500
    assert all(f.feature == "score" for _, f in found)


def test_an_unseen_category_is_reported_with_its_share(drift: UnivariateDrift) -> None:
    live = cyclic_stream(3000, seed=5, start=20_000, change="new_category", change_at=21_000)
    found = findings(fresh(drift), rows_of(live))
    at, first = found[0]
    assert (first.feature, first.check, first.method) == ("channel", "frequencies",
                                                          "jensen_shannon")  # fmt: skip
    assert first.stats["unseen_share"] > 0
    assert "(unseen)" in first.stats["most_changed"]
    assert at < 1300


def test_constants_are_compared_exactly_never_with_round_off() -> None:
    # 0.1 summed 20,000 times is not 2,000 * 1.0: a check on sums would see a shift.
    values = np.full(20_000, 0.1)
    assert float(np.cumsum(values)[-1]) != 2000.0
    drift = UnivariateDrift(["fee", "currency"], [True, False], [values, ["EUR"] * 20_000])
    steady = [(0.1, "EUR")] * 50_000
    assert findings(drift, steady) == []
    moved = findings(drift, [(0.1 + 1e-12, "EUR"), (0.1, "USD"), *steady[:18]])
    assert {(f.feature, f.check, f.method) for _, f in moved} == {
        ("fee", "constant", "exact"),
        ("currency", "constant", "exact"),
    }
    assert all(f.threshold == 0.0 for _, f in moved)


def test_a_rising_missing_rate_is_found() -> None:
    rng = np.random.default_rng(6)
    values = rng.normal(size=20_000)
    values[rng.random(20_000) < 0.05] = np.nan
    drift = UnivariateDrift(["x"], [True], [values])
    live = [(None if rng.random() < 0.3 else float(rng.normal()),) for _ in range(400)]
    checks = {f.check for _, f in findings(drift, live)}
    assert "missing_rate" in checks


def test_categories_keep_their_json_types_apart() -> None:
    binning = Binning(numeric=False, reference=[1, 1, True, "1", None] * 10)
    codes = binning.codes([1, True, "1", None, 2]).tolist()
    assert len(set(codes[:3])) == 3
    assert codes[3] == 0
    assert codes[4] == binning.unseen


def test_calibration_inflates_by_the_reference_windows_and_never_below_their_max() -> None:
    iid = calibrate(np.array([0.5, 1.0, 1.5]), null_mean=1.0, null_quantile=25.0)
    assert iid.inflation == 1.0
    assert iid.value == 25.0
    cyclic = calibrate(np.array([40.0, 60.0, 200.0]), null_mean=1.0, null_quantile=25.0)
    assert cyclic.inflation == pytest.approx(100.0)
    assert cyclic.value == pytest.approx(2500.0)
    spiky = calibrate(np.array([1.0] * 99 + [90.0]), null_mean=1.0, null_quantile=25.0)
    assert spiky.value == pytest.approx(REFERENCE_MARGIN * 90.0)
    short = calibrate(np.array([]), null_mean=1.0, null_quantile=25.0)
    assert (short.value, short.reference_max) == (25.0, None)


def test_a_correlation_flip_is_multivariate_drift_and_no_univariate_one(
    reference: dict[str, Any],
) -> None:
    drift = ReferenceDrift(FEATURES, NUMERIC, reference_columns(reference))
    names = set(drift.multivariate.names)
    # Constant columns are compared exactly, and columns that follow the clock would put
    # their cycle into every row's reconstruction error: both are left out of the PCA.
    assert names.isdisjoint({"region", "fee", "hour", "load", "visits"})
    assert {"x1", "x2", "score", "amount"} <= names
    live = cyclic_stream(4000, seed=7, start=20_000, change="correlation_flip", change_at=21_000)
    found = findings(drift, rows_of(live))
    assert found
    at, first = found[0]
    assert 1000 < at < 2000
    assert first.check == "multivariate"
    assert first.method == "pca_reconstruction_error"
    assert first.statistic > first.threshold
    assert set(list(first.stats["contributions"])[:2]) == {"x1", "x2"}
    assert all(f.check == "multivariate" for _, f in found)


def test_with_fewer_than_two_steady_features_the_pca_takes_them_all() -> None:
    t = np.arange(20_000)
    hour = (t % 1440) // 60
    rng = np.random.default_rng(8)
    load = 50 + 20 * np.sin(2 * np.pi * (t % 1440) / 1440) + rng.normal(0, 5, t.size)
    drift = ReferenceDrift(["hour", "load", "noise"], [True, True, True],
                           [hour.astype(float), load, rng.normal(size=t.size)])  # fmt: skip
    assert set(drift.multivariate.names) == {"hour", "load", "noise"}


def test_an_inflation_within_its_own_noise_is_taken_as_none() -> None:
    # A mean of 1.2 over 100 windows' worth of independent events: chance, not a cycle.
    noisy = calibrate(np.array([1.2] * 50), null_mean=1.0, null_quantile=25.0, independent=100)
    assert noisy.inflation == 1.0
    cyclic = calibrate(np.array([150.0] * 50), null_mean=1.0, null_quantile=25.0,
                       independent=100)  # fmt: skip
    assert cyclic.inflation == pytest.approx(150.0 - 2 * math.sqrt(2) / 10)
