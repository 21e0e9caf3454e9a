"""Data drift for categorical features, gaps and numbers with gaps (reference from register)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workers.core.feature_spec import FeatureSpec
from workers.core.feature_summary import summarize_table
from workers.core.kind_drift import KindDrift

pytestmark = pytest.mark.unit

SPECS = [
    FeatureSpec("amount", "numeric", nullable=True),
    FeatureSpec("country", "categorical", nullable=True, json_type="string"),
    FeatureSpec("weekday", "categorical", json_type="integer"),
    FeatureSpec("constant", "numeric"),
]


def table(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = pd.DataFrame({
        "amount": rng.gamma(2.0, 30.0, n),
        "country": rng.choice(["FR", "DE", "US", "ES"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "weekday": np.arange(n) % 7,
        "constant": np.ones(n),
    })  # fmt: skip
    frame.loc[rng.random(n) < 0.05, "amount"] = np.nan
    frame["country"] = frame["country"].astype(object)
    frame.loc[rng.random(n) < 0.1, "country"] = None
    return frame


def rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    return [
        tuple(None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in row)
        for row in frame.itertuples(index=False, name=None)
    ]


def run(live: pd.DataFrame, reference: pd.DataFrame) -> list[set[tuple[str, str]]]:
    drift = KindDrift(SPECS, summarize_table(reference, SPECS))
    return [{(d.name, d.check) for d in drift.update(row)} for row in rows(live)]


def test_a_stable_stream_with_gaps_categories_and_a_weekly_cycle_raises_nothing() -> None:
    rng = np.random.default_rng(0)
    found = run(table(rng, 6000), table(rng, 20_000))
    assert not any(found)


def test_a_new_category_is_named_unseen() -> None:
    rng = np.random.default_rng(1)
    live = table(rng, 2000)
    live.loc[1000:, "country"] = rng.choice(["FR", "XX"], 1000, p=[0.7, 0.3])
    found = run(live, table(rng, 20_000))
    first = next(i for i, f in enumerate(found) if ("country", "frequencies") in f)
    assert 1000 <= first < 1200
    drift = KindDrift(SPECS, summarize_table(table(rng, 20_000), SPECS))
    moved = [d for row in rows(live) for d in drift.update(row) if d.name == "country"]
    assert moved[0].stats["unseen_share"] > 0


def test_a_missing_rate_rise_and_a_numeric_shift_are_found_per_feature() -> None:
    rng = np.random.default_rng(2)
    live = table(rng, 2000)
    live.loc[1000:, "amount"] = np.where(rng.random(1000) < 0.5, np.nan, live.loc[1000:, "amount"])
    found = run(live, table(rng, 20_000))
    assert any(("amount", "missing_rate") in f for f in found[1000:1300])
    assert not any(("amount", "missing_rate") in f for f in found[:1000])


def test_a_constant_reference_feature_that_moves_is_flagged_and_not_before() -> None:
    rng = np.random.default_rng(3)
    live = table(rng, 1000)
    live.loc[500:, "constant"] = 2.0
    found = run(live, table(rng, 5000))
    assert not any(("constant", "mean") in f for f in found[:500])
    assert any(("constant", "mean") in f for f in found[500:])
