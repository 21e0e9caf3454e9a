"""A feature stream shaped like real ones, for the drift bench and the tests: one event a minute
with daily and weekly cycles, categories, gaps, constant columns and a class that depends on
the features through a fixed relation (so accuracy moves only when the features do).

Columns:
- `hour` (0-23) and `day` ("mon".."sun"): the clock, cycling by day and by week;
- `load`: a daily sine plus a weekend step plus noise; `visits`: counts following the day;
- `amount`: log-normal with 5% gaps; `score`: standard normal, no cycle;
- `x1`, `x2`: standard normals with correlation 0.8;
- `channel`: "web"/"app"/"store" with 2% gaps;
- `region` (7.0), `fee` (0.1) and `currency` ("EUR"): constant;
- `label`: 1 with probability sigmoid(1.5 x1 + score + (amount - 20) / 10), else 0.
Changes (`change_at` onwards): "mean_shift" (score + 0.5), "variance" (score's variance x2),
"new_category" (10% of channels become "kiosk"), "correlation_flip" (x2's correlation with x1
becomes -0.8; every marginal is unchanged), "covariate_shift" (x1 and score shrink to 0.35 of
themselves: the cases crowd the decision boundary, accuracy falls, the relation to the label
stays).
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

EVENTS_PER_DAY: Final = 1440
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHANGES: Final = ("mean_shift", "variance", "new_category", "correlation_flip", "covariate_shift")
FEATURES: Final = (
    "hour", "day", "load", "visits", "amount", "score", "x1", "x2", "channel", "region", "fee",
    "currency",
)  # fmt: skip
CATEGORICAL: Final = ("day", "channel", "currency")


def cyclic_stream(
    rows: int,
    seed: int,
    *,
    start: int = 0,
    change: str | None = None,
    change_at: int = 0,
) -> dict[str, Any]:
    """`rows` events from minute `start` on, as columns (lists and float arrays)."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + rows)
    after = t >= change_at if change is not None else np.zeros(rows, bool)
    minute_of_day = t % EVENTS_PER_DAY
    weekday = (t // EVENTS_PER_DAY) % 7
    hour = (minute_of_day // 60).astype(np.float64)
    weekend = weekday >= 5
    phase = 2 * np.pi * minute_of_day / EVENTS_PER_DAY
    load = 50 + 20 * np.sin(phase) - 10 * weekend + rng.normal(0, 5, rows)
    visits = rng.poisson(3 + 2 * np.sin(phase) ** 2 + weekend).astype(np.float64)
    amount = rng.lognormal(3.0, 0.5, rows)
    amount[rng.random(rows) < 0.05] = np.nan
    score = rng.normal(0, 1, rows)
    x1 = rng.normal(0, 1, rows)
    noise = rng.normal(0, 1, rows)
    rho = np.where(after & (change == "correlation_flip"), -0.8, 0.8)
    x2 = rho * x1 + np.sqrt(1 - 0.8**2) * noise
    if change == "mean_shift":
        score = np.where(after, score + 0.5, score)
    elif change == "variance":
        score = np.where(after, score * np.sqrt(2.0), score)
    elif change == "covariate_shift":
        # Closer to the decision boundary: harder cases, the same relation to the label.
        x1 = np.where(after, 0.35 * x1, x1)
        score = np.where(after, 0.35 * score, score)
    channel = rng.choice(np.array(["web", "app", "store"]), rows, p=[0.5, 0.3, 0.2]).tolist()
    kiosk = rng.random(rows) < 0.1
    gaps = rng.random(rows) < 0.02
    for i in range(rows):
        if change == "new_category" and after[i] and kiosk[i]:
            channel[i] = "kiosk"
        elif gaps[i]:
            channel[i] = None
    filled = np.where(np.isnan(amount), 20.0, amount)
    logit = 1.5 * x1 + score + (filled - 20.0) / 10.0
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return {
        "hour": hour,
        "day": [DAYS[d] for d in weekday.tolist()],
        "load": load,
        "visits": visits,
        "amount": amount,
        "score": score,
        "x1": x1,
        "x2": x2,
        "channel": channel,
        "region": np.full(rows, 7.0),
        "fee": np.full(rows, 0.1),
        "currency": ["EUR"] * rows,
        "label": label.tolist(),
    }


def as_frame(columns: dict[str, Any]) -> Any:  # noqa: ANN401 - a DataFrame
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame(columns)


def rows_of(columns: dict[str, Any], names: tuple[str, ...] = FEATURES) -> list[tuple[Any, ...]]:
    """Events as the monitor decodes them: one tuple per event (gaps as None)."""
    lists = [
        list(columns[n]) if n in CATEGORICAL
        else [None if math.isnan(v) else v for v in np.asarray(columns[n], np.float64).tolist()]
        for n in names
    ]  # fmt: skip
    return list(zip(*lists, strict=True))
