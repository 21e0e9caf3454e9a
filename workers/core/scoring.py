"""Score a matrix of rows with a loaded model: one vectorised call per micro-batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from workers.core import linear_model, tree_ensemble
from workers.core.events import class_label

Matrix = npt.NDArray[np.float64]
Label = str | int | bool
# What a regressor predicts, or a classifier's class.
Predicted = str | int | bool | float


@dataclass(frozen=True, slots=True)
class Columns:
    """A batch of rows of a model with categorical or nullable features, column by column in
    manifest order: float64 per numeric feature (NaN where null), object per categorical one
    (None where null). Plain numeric models get a float matrix instead."""

    data: tuple[npt.NDArray[Any], ...]
    rows: int

    def __len__(self) -> int:
        return self.rows

    def take(self, rows: Sequence[int] | npt.NDArray[np.intp]) -> Columns:
        index = np.asarray(rows, dtype=np.intp)
        return Columns(tuple(column[index] for column in self.data), len(index))

    def __getitem__(self, rows: slice) -> Columns:
        return self.take(np.arange(self.rows)[rows])

    def not_finite(self, numeric: Sequence[bool]) -> dict[int, int]:
        """Row -> its first numeric feature that overflowed to infinity (null is NaN, legal)."""
        bad: dict[int, int] = {}
        for j, column in enumerate(self.data):
            if numeric[j]:
                for row in np.flatnonzero(np.isinf(column)).tolist():
                    bad.setdefault(row, j)
        return bad


def columns_from_rows(rows: Sequence[tuple[Any, ...]], numeric: Sequence[bool]) -> Columns:
    """Decoded rows (features in manifest order) as Columns."""
    data: list[npt.NDArray[Any]] = []
    for values, is_numeric in zip(zip(*rows, strict=True), numeric, strict=True):
        if is_numeric:
            floats = [math.nan if v is None else v for v in values]
            data.append(np.array(floats, dtype=np.float64))
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = values
            data.append(column)
    return Columns(tuple(data), len(rows))


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    labels: Sequence[Predicted]
    scores: list[float]
    # Per row, an object that encodes as {class: probability}: a msgspec Struct generated for
    # the model's classes (built in C, far cheaper than a dict per row) or a dict.
    probabilities: list[Any] | None


def probabilities_type(class_keys: Sequence[str]) -> Any:  # noqa: ANN401 - a generated Struct
    """A Struct whose fields encode as the model's classes, in order: {"0": p0, "1": p1}."""
    fields = [f"c{i}" for i in range(len(class_keys))]
    return msgspec.defstruct(
        "Probabilities",
        [(f, float) for f in fields],
        rename=dict(zip(fields, class_keys, strict=True)),
        gc=False,
    )


class Scorer(Protocol):
    features: tuple[str, ...]

    # A float matrix for a plain numeric model's decoder, Columns for any other.
    def score(self, matrix: Any) -> ScoredBatch: ...  # noqa: ANN401


def as_matrix(batch: Matrix | Columns) -> Matrix:
    """A float matrix for a model that takes one (Columns of numeric features, NaN for null)."""
    if isinstance(batch, Columns):
        return np.column_stack(batch.data).astype(np.float64, copy=False)
    return batch


class _Classes:
    """A classifier's classes and how a probability matrix becomes labels, scores and
    per-class probabilities."""

    def __init__(self, classes: Sequence[Any]) -> None:
        self.classes: list[Label] = [class_label(c) for c in classes]
        self.class_keys = [str(c) for c in self.classes]
        self._probabilities = probabilities_type(self.class_keys)

    def scored(self, proba: Matrix) -> ScoredBatch:
        best = proba.argmax(axis=1)
        return ScoredBatch(
            labels=list(map(self.classes.__getitem__, best.tolist())),
            scores=proba[np.arange(len(best)), best].tolist(),
            # One C-level call per row: map() unpacks the columns into the Struct.
            probabilities=list(map(self._probabilities, *proba.T.tolist())),
        )


def regression_scored(values: npt.NDArray[Any]) -> ScoredBatch:
    """A regressor's predictions: label and score are both the predicted value."""
    predicted = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if predicted.shape[1] != 1:
        raise ValueError(f"a regressor returned {predicted.shape[1]} values per row, not one")
    flat: list[float] = predicted[:, 0].tolist()
    return ScoredBatch(labels=flat, scores=flat, probabilities=None)


class SklearnClassifierScorer(_Classes):
    """predict_proba once per batch; label = argmax class, score = its probability."""

    def __init__(self, model: Any, features: Sequence[str]) -> None:  # noqa: ANN401
        super().__init__(model.classes_)
        self.model = model
        self.features = tuple(features)
        width = len(self.features)
        compiled = tree_ensemble.compile_predict_proba(
            model, width
        ) or linear_model.compile_predict_proba(model, width)
        # True when the model is scored without scikit-learn's per-call checks (same numbers):
        # trees walked by workers._trees, or a linear model's arithmetic alone.
        self.accelerated = compiled is not None
        self._predict_proba = compiled or model.predict_proba

    def score(self, matrix: Matrix | Columns) -> ScoredBatch:
        return self.scored(self._predict_proba(as_matrix(matrix)))


class SklearnRegressorScorer:
    """predict once per batch on a float matrix; label and score are the predicted value."""

    def __init__(self, model: Any, features: Sequence[str]) -> None:  # noqa: ANN401
        self.model = model
        self.features = tuple(features)
        compiled = tree_ensemble.compile_predict(model, len(self.features))
        self.accelerated = compiled is not None
        self._predict = compiled or model.predict

    def score(self, matrix: Matrix | Columns) -> ScoredBatch:
        return regression_scored(self._predict(as_matrix(matrix)))


class RiverClassifierScorer:
    """river models score one dict at a time; the batch is looped here, not in the caller."""

    def __init__(
        self,
        model: Any,  # noqa: ANN401
        features: Sequence[str],
        classes: Sequence[Label],
    ) -> None:
        self.model = model
        self.features = tuple(features)
        self.classes = list(classes)
        self.class_keys = [str(c) for c in self.classes]

    def score(self, matrix: Matrix) -> ScoredBatch:
        labels: list[Label] = []
        scores: list[float] = []
        probabilities: list[dict[str, float]] = []
        for row in matrix.tolist():
            proba = self.model.predict_proba_one(dict(zip(self.features, row, strict=True)))
            full = [float(proba.get(c, 0.0)) for c in self.classes]
            best = max(range(len(full)), key=full.__getitem__)
            labels.append(self.classes[best])
            scores.append(full[best])
            probabilities.append(dict(zip(self.class_keys, full, strict=True)))
        return ScoredBatch(labels, scores, probabilities)


def rows_to_matrix(rows: Sequence[tuple[float, ...]], width: int) -> Matrix:
    """Stack decoded rows (already in manifest order) into one C-contiguous float64 matrix."""
    if not rows:
        return np.empty((0, width), dtype=np.float64)
    return np.array(rows, dtype=np.float64)
