from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workers.core import tree_ensemble
from workers.core.scoring import SklearnClassifierScorer
from workers.core.tree_ensemble import compile_predict_proba

pytestmark = pytest.mark.unit


def data(classes: int, *, nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=3000, n_features=8, n_informative=5, n_classes=classes, random_state=classes
    )
    if nan:  # trained with missing values: splits learn where NaN goes
        x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan
    return x, y


def unseen_rows(n: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = rng.normal(0, 2, (n, 8))
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows


@pytest.mark.parametrize(
    ("classes", "nan", "in_pipeline"),
    [(2, False, True), (2, True, False), (3, False, False), (4, True, True)],
)
def test_compiled_probabilities_are_bit_for_bit_sklearn(
    classes: int, *, nan: bool, in_pipeline: bool
) -> None:
    x, y = data(classes, nan=nan)
    hgb = HistGradientBoostingClassifier(max_iter=60, early_stopping=False, random_state=0)
    model: Any = make_pipeline(StandardScaler(), hgb) if in_pipeline else hgb
    model.fit(x, y)
    compiled = compile_predict_proba(model, 8)
    assert compiled is not None
    rows = unseen_rows()
    # Every batch size, including ones that leave a partial block of rows in the C loop.
    for n in (1, 7, 8, 9, 1000, len(rows)):
        assert np.array_equal(compiled(rows[:n]), model.predict_proba(rows[:n]))


def test_the_scorer_uses_the_compiled_trees_and_scores_the_same() -> None:
    x, y = data(2)
    model = make_pipeline(
        StandardScaler(), HistGradientBoostingClassifier(max_iter=30, random_state=0)
    ).fit(x, y)
    scorer = SklearnClassifierScorer(model, [f"f{i}" for i in range(8)])
    assert scorer.accelerated
    rows = np.nan_to_num(unseen_rows(500))
    proba = model.predict_proba(rows)
    scored = scorer.score(rows)
    assert scored.scores == proba.max(axis=1).tolist()
    assert scored.labels == model.classes_[proba.argmax(axis=1)].tolist()


def test_models_without_plain_trees_are_left_to_sklearn() -> None:
    x, y = data(2)
    assert compile_predict_proba(LogisticRegression().fit(x, y), 8) is None
    cats = np.column_stack([x[:, :7], (x[:, 7] > 0).astype(float) + (x[:, 7] > 1)])
    categorical = HistGradientBoostingClassifier(
        max_iter=10, categorical_features=[7], random_state=0
    ).fit(cats, y)
    assert compile_predict_proba(categorical, 8) is None


def test_without_the_extension_the_scorer_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data(2)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    monkeypatch.setattr(tree_ensemble, "_trees", None)
    scorer = SklearnClassifierScorer(model, [f"f{i}" for i in range(8)])
    assert not scorer.accelerated
    assert scorer.score(x[:5]).scores == model.predict_proba(x[:5]).max(axis=1).tolist()


def test_a_model_that_disagrees_is_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data(2)
    model = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    real = tree_ensemble.Ensemble.sum_leaves
    monkeypatch.setattr(tree_ensemble.Ensemble, "sum_leaves", lambda self, m: real(self, m) + 1e-12)
    assert compile_predict_proba(model, 8) is None


def test_the_c_walker_checks_buffer_sizes() -> None:
    trees = importlib.import_module("workers._trees")  # CI builds it: gcc is there
    empty = np.zeros(0, dtype=np.float64)
    with pytest.raises(ValueError, match="X"):
        trees.sum_leaves(
            empty, 10, 8, np.zeros(0, tree_ensemble.NODE), b"", empty,
            np.zeros(0, np.int32), np.zeros(0, np.int32), 0.0, np.zeros(10),
        )  # fmt: skip
