"""Models the project did not train, fitted the way a team's notebook fits them, for the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from workers.example_data import customers

NUMERIC = ["tenure_months", "sessions_7d", "support_tickets", "hour", "api_version"]
CATEGORICAL = ["country", "device", "plan"]
FEATURES = NUMERIC + CATEGORICAL


def table(rows: int = 1500, seed: int = 7) -> pd.DataFrame:
    return customers(rows, seed)


def churn_pipeline(  # noqa: PLR0913 - the columns are a stream's or the churn table's
    frame: pd.DataFrame,
    *,
    handle_unknown: str = "ignore",
    sparse: bool = True,
    numeric: list[str] = NUMERIC,
    categorical: list[str] = CATEGORICAL,
    target: str = "churned",
) -> Any:
    """ColumnTransformer(imputed+scaled numbers, imputed+one-hot strings) -> LogisticRegression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prepare = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("categories", make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown=handle_unknown),
            ), categorical),
        ],
        sparse_threshold=1.0 if sparse else 0.0,  # 1.0: sparse whatever the density
    )  # fmt: skip
    model = Pipeline([("prepare", prepare), ("classify", LogisticRegression(max_iter=1000))])
    return model.fit(frame[numeric + categorical], frame[target])


def spend_regressor(frame: pd.DataFrame) -> Any:
    """HistGradientBoostingRegressor with native categories (pandas category dtype)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    x = frame[FEATURES].copy()
    for column in CATEGORICAL:
        x[column] = x[column].astype("category")
    model = HistGradientBoostingRegressor(max_iter=60, categorical_features="from_dtype",
                                          random_state=0)  # fmt: skip
    return model.fit(x, frame["monthly_spend"])


def as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    x = frame.copy()
    for column in CATEGORICAL:
        x[column] = x[column].astype("category")
    return x


def rows_of(frame: pd.DataFrame, features: list[str]) -> list[tuple[Any, ...]]:
    """Rows as events carry them: NaN as None, numpy scalars as Python values."""
    return [
        tuple(None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in row)
        for row in frame[features].itertuples(index=False, name=None)
    ]


def numeric_matrix(frame: pd.DataFrame) -> np.ndarray:
    matrix: np.ndarray = frame[NUMERIC].fillna(0.0).to_numpy(dtype=np.float64)
    return matrix
