"""Score models that take a pandas DataFrame: one frame per micro-batch, with the training dtypes.

A pipeline fitted in a notebook on a DataFrame (a ColumnTransformer routing string columns to an
encoder) is handed exactly what it was fitted with: each column in the dtype the training table
had, missing values written as pandas writes them (NaN), so it scores an event as it would score
the same row of that table. Where the pipeline's shape is one `mixed_linear` knows, the same
numbers are computed without building the frame (checked on probe rows before it is used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.core import mixed_linear
from workers.core.feature_spec import FeatureSpec
from workers.core.scoring import (
    Columns,
    Matrix,
    ScoredBatch,
    _Classes,
    regression_scored,
)


def typed_column(values: npt.NDArray[Any], spec: FeatureSpec) -> Any:  # noqa: ANN401, PLR0911
    """One column in the dtype the model was fitted with (None -> NaN, as pandas reads gaps)."""
    import pandas as pd  # noqa: PLC0415 - only models that take a frame need pandas

    if spec.numeric:
        # float64 whatever the training column's number type: an event may send 2.5 for a
        # column that held integers, and casting it would score another row than was sent.
        return values
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    dtype = spec.dtype or "object"
    if dtype == "category":
        return pd.Categorical(values, categories=list(spec.categories or ()))
    if not missing.any():
        if dtype in {"bool", "int64", "int32"}:
            return values.astype(dtype)
        if dtype in {"object", "str", "string"}:
            # Explicit: pandas 3 would make an object array of strings its own `str` dtype.
            return pd.Series(values, dtype=dtype, copy=False)
    if spec.json_type in {"integer", "boolean"} and dtype.startswith("float"):
        floats = np.where(missing, np.nan, values)
        return floats.astype(np.float64)
    with_nan = values.copy()
    with_nan[missing] = spec.null_value if dtype == "object" else np.nan
    if dtype == "object":
        return pd.Series(with_nan, dtype=object, copy=False)
    try:
        return pd.array(with_nan, dtype=dtype)
    except (TypeError, ValueError):
        return with_nan


def frame(columns: Columns, specs: Sequence[FeatureSpec]) -> Any:  # noqa: ANN401 - a DataFrame
    import pandas as pd  # noqa: PLC0415

    return pd.DataFrame(
        {
            spec.name: typed_column(column, spec)
            for spec, column in zip(specs, columns.data, strict=True)
        },
        copy=False,
    )


class FrameScorer:
    """predict_proba (classifiers) or predict (regressors) on one DataFrame per batch."""

    def __init__(
        self,
        model: Any,  # noqa: ANN401
        specs: Sequence[FeatureSpec],
        *,
        regression: bool,
    ) -> None:
        self.model = model
        self.specs = tuple(specs)
        self.features = tuple(spec.name for spec in specs)
        self.regression = regression
        self._classes = None if regression else _Classes(model.classes_)
        self._own = model.predict if regression else model.predict_proba
        compiled = mixed_linear.compile_pipeline(
            model, self.specs, regression=regression, own=self.own_output
        )
        # True when the pipeline's arithmetic runs without a DataFrame (same numbers).
        self.accelerated = compiled is not None
        self._compiled = compiled

    def own_output(self, columns: Columns) -> Matrix:
        """The estimator's own predict_proba / predict on these rows."""
        result: Matrix = np.asarray(self._own(frame(columns, self.specs)))
        return result

    def score(self, batch: Columns | Matrix) -> ScoredBatch:
        if not isinstance(batch, Columns):  # every feature a number: the decoder's matrix
            batch = Columns(tuple(batch.T), len(batch))
        output = self._compiled(batch) if self._compiled is not None else self.own_output(batch)
        if self._classes is None:
            return regression_scored(output)
        return self._classes.scored(output)
