"""A customer table shaped like the ones teams bring: string categories, gaps, a weekly cycle,
a constant column, a boolean, a class to predict (`churned`) and a number (`monthly_spend`).

`customers.csv` beside this file is `customers(4000, seed=7)`, shipped so the README's "Serve your
own model" runs without downloading anything. Regenerate it with
`python -m workers.example_data workers/example_data/customers.csv`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

COUNTRIES = ("FR", "DE", "US", "GB", "ES", "IT", "NL", "BR", "IN", "JP")
DEVICES = ("ios", "android", "web")
PLANS = ("free", "basic", "pro", "team")


def customers(rows: int = 4000, seed: int = 7) -> Any:  # noqa: ANN401 - a DataFrame
    import pandas as pd  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-01-05T00:00")  # a Monday
    minutes = np.sort(rng.integers(0, 28 * 24 * 60, rows))
    when = start + minutes.astype("timedelta64[m]")
    hour = (minutes // 60) % 24
    weekday = (minutes // (24 * 60)) % 7
    country = rng.choice(
        COUNTRIES, rows, p=[0.25, 0.2, 0.2, 0.1, 0.06, 0.06, 0.05, 0.04, 0.03, 0.01]
    )
    device = rng.choice(DEVICES, rows, p=[0.45, 0.35, 0.2])
    plan = rng.choice(PLANS, rows, p=[0.4, 0.3, 0.2, 0.1])
    tenure = rng.gamma(2.0, 10.0, rows).round(1)
    sessions = rng.poisson(5 + 3 * np.sin(2 * np.pi * hour / 24) ** 2, rows).astype(float)
    support = rng.poisson(0.3, rows).astype(float)
    discount = rng.random(rows) < 0.2
    plan_price = np.select([plan == "free", plan == "basic", plan == "pro"], [0.0, 9.0, 29.0], 79.0)
    spend = plan_price + 0.8 * sessions + 2.0 * support + rng.normal(0, 4, rows)
    spend = np.round(np.maximum(spend, 0) * np.where(discount, 0.8, 1.0), 2)
    logit = (
        -1.0 - 0.06 * tenure + 0.5 * support - 0.15 * sessions
        + np.select([plan == "free", plan == "team"], [1.2, -0.8], 0.0)
        + np.where(device == "web", 0.6, 0.0) + np.where(country == "BR", 0.8, 0.0)
    )  # fmt: skip
    churned = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    table = pd.DataFrame({
        "customer_id": [f"c{seed}-{i:06d}" for i in range(rows)],
        "event_time": when.astype("datetime64[ms]").astype(np.int64),
        "country": country,
        "device": device,
        "plan": plan,
        "weekday": weekday.astype(int),
        "hour": hour.astype(int),
        "tenure_months": tenure,
        "sessions_7d": sessions,
        "support_tickets": support,
        "discount": discount,
        "api_version": 3.0,  # constant: one value in every row
        "churned": churned,
        "monthly_spend": spend,
    })  # fmt: skip
    # Gaps where real tables have them: an unknown device, a tenure not yet computed.
    table["device"] = table["device"].astype(object)
    table.loc[rng.random(rows) < 0.04, "device"] = None
    table.loc[rng.random(rows) < 0.07, "tenure_months"] = np.nan
    table.loc[rng.random(rows) < 0.03, "sessions_7d"] = np.nan
    return table


def shipped_table() -> Path:
    """Where the shipped customers.csv is."""
    return Path(str(resources.files("workers.example_data").joinpath("customers.csv")))
