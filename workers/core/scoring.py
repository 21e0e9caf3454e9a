"""Score a matrix of rows with a loaded model: one vectorised call per micro-batch."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    labels: list[Label]
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

    def score(self, matrix: Matrix) -> ScoredBatch: ...


class SklearnClassifierScorer:
    """predict_proba once per batch; label = argmax class, score = its probability."""

    def __init__(self, model: Any, features: Sequence[str]) -> None:  # noqa: ANN401
        self.model = model
        self.features = tuple(features)
        self.classes: list[Label] = [class_label(c) for c in model.classes_]
        self.class_keys = [str(c) for c in self.classes]
        self._probabilities = probabilities_type(self.class_keys)
        width = len(self.features)
        compiled = tree_ensemble.compile_predict_proba(
            model, width
        ) or linear_model.compile_predict_proba(model, width)
        # True when the model is scored without scikit-learn's per-call checks (same numbers):
        # trees walked by workers._trees, or a linear model's arithmetic alone.
        self.accelerated = compiled is not None
        self._predict_proba = compiled or model.predict_proba

    def score(self, matrix: Matrix) -> ScoredBatch:
        proba: Matrix = self._predict_proba(matrix)
        best = proba.argmax(axis=1)
        return ScoredBatch(
            labels=list(map(self.classes.__getitem__, best.tolist())),
            scores=proba[np.arange(len(best)), best].tolist(),
            # One C-level call per row: map() unpacks the columns into the Struct.
            probabilities=list(map(self._probabilities, *proba.T.tolist())),
        )


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
