"""Summaries of training feature distributions, kept in the manifest for data-drift checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

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
