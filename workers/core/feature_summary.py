"""Summaries of training feature distributions, kept in the manifest for data-drift checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.core.feature_spec import FeatureSpec

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def summarize_features(
    matrix: npt.NDArray[np.float64], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per feature: count, mean, std, min, max and the QUANTILES, as plain JSON numbers."""
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"matrix of shape {matrix.shape} does not match {len(names)} names")
    quantiles = np.quantile(matrix, QUANTILES, axis=0)
    summary: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        column = matrix[:, j]
        summary[name] = {
            "count": int(column.size),
            "mean": float(column.mean()),
            "std": float(column.std()),
            "min": float(column.min()),
            "max": float(column.max()),
            "quantiles": {
                str(q): float(v) for q, v in zip(QUANTILES, quantiles[:, j], strict=True)
            },
        }
    return summary


# Categories whose frequency the reference summary lists by name; the rest are "other".
TOP_CATEGORIES = 50


def summarize_table(table: Any, specs: Sequence[FeatureSpec]) -> dict[str, dict[str, Any]]:  # noqa: ANN401 - a DataFrame
    """Per feature of a training table: numeric as `summarize_features` plus the missing rate
    (statistics over the values present); categorical: the frequencies of the most common
    values (as [value, share] pairs, so integers stay integers), the share of all others and
    the missing rate."""
    summary: dict[str, dict[str, Any]] = {}
    rows = len(table)
    for spec in specs:
        column = table[spec.name]
        missing = column.isna().to_numpy()
        missing_rate = float(missing.mean()) if rows else 0.0
        present = column[~missing]
        if spec.numeric:
            values = present.to_numpy(dtype=np.float64)
            if len(values):
                entry = summarize_features(values.reshape(-1, 1), [spec.name])[spec.name]
            else:
                entry = {"count": 0, "mean": 0.0, "std": 0.0}
            summary[spec.name] = {"kind": "numeric", **entry, "missing_rate": missing_rate}
            continue
        counts = present.map(_plain).value_counts()
        total = int(counts.sum())
        top = counts.head(TOP_CATEGORIES)
        summary[spec.name] = {
            "kind": "categorical",
            "count": total,
            "distinct": len(counts),
            "frequencies": [[_plain(v), int(c) / total] for v, c in top.items()] if total else [],
            "other": (total - int(top.sum())) / total if total else 0.0,
            "missing_rate": missing_rate,
        }
    return summary


def _plain(value: Any) -> Any:  # noqa: ANN401 - numpy scalars in, JSON values out
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
