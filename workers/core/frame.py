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


def typed_column(values: npt.NDArray[Any], spec: FeatureSpec) -> Any:  # noqa: ANN401
    """One column in the dtype the model was fitted with; a gap as the training table wrote it
    (None or NaN), in a column that can hold one as pandas would have held it."""
    import pandas as pd  # noqa: PLC0415 - only models that take a frame need pandas

    if spec.numeric:
        # float64 whatever the training column's number type: an event may send 2.5 for a
        # column that held integers, and casting it would score another row than was sent.
        return values
    dtype = spec.dtype or "object"
    if dtype == "category":
        return pd.Categorical(values, categories=list(spec.categories or ()))
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    if dtype.startswith("float"):  # integer categories that had gaps in training
        return np.where(missing, np.nan, values).astype(np.float64)
    if not missing.any():
        return _series(values, dtype)
    filled = values.copy()
    filled[missing] = spec.null_value if dtype == "object" else np.nan
    if dtype in _HOLDS_NA:
        return _series(filled, dtype)
    # A numpy bool or int column cannot hold a gap: pandas holds such a column as objects
    # (and would turn NaN into True if asked for bool).
    return pd.Series(filled, dtype=object, copy=False)


# pandas dtypes with a missing-value marker of their own.
_HOLDS_NA = frozenset({"str", "string", "boolean", "Int64", "Int32", "object"})


def _series(values: npt.NDArray[Any], dtype: str) -> Any:  # noqa: ANN401
    import pandas as pd  # noqa: PLC0415

    try:
        # Explicit: pandas 3 would make an object array of strings its own `str` dtype.
        return pd.Series(values, dtype=dtype, copy=False)
    except (TypeError, ValueError):
        return pd.Series(values, dtype=object, copy=False)


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
