from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.special import expit
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from workers.core import linear_model
from workers.core.linear_model import compile_predict_proba
from workers.core.scoring import SklearnClassifierScorer

pytestmark = pytest.mark.unit


def data(classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=2000, n_features=8, n_informative=5, n_classes=classes, random_state=classes
    )
    return x * 50 + 3, y  # far from unit scale, so the scaler's arithmetic matters


def unseen_rows(n: int = 3000) -> np.ndarray:
    return np.random.default_rng(11).normal(3, 80, (n, 8))


@pytest.mark.parametrize(
    ("classes", "steps"),
    [
        (2, []),
        (2, [StandardScaler()]),
        (3, [StandardScaler()]),
        (4, []),
        (2, [StandardScaler(with_mean=False), StandardScaler(with_std=False)]),
    ],
)
def test_compiled_probabilities_are_bit_for_bit_sklearn(classes: int, steps: list[Any]) -> None:
    x, y = data(classes)
    model: Any = (
        make_pipeline(*steps, LogisticRegression(max_iter=2000))
        if steps
        else (LogisticRegression(max_iter=2000))
    )
    model.fit(x, y)
    compiled = compile_predict_proba(model, 8)
    assert compiled is not None
    rows = unseen_rows()
    for n in (1, 2, 5, 100, 999, 1000, len(rows)):
        assert np.array_equal(compiled(rows[:n]), model.predict_proba(rows[:n]))


def test_the_scorer_uses_the_compiled_model_and_scores_the_same() -> None:
    x, y = data(2)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    scorer = SklearnClassifierScorer(model, [f"f{i}" for i in range(8)])
    assert scorer.accelerated
    rows = unseen_rows(500)
    proba = model.predict_proba(rows)
    scored = scorer.score(rows)
    assert scored.scores == proba.max(axis=1).tolist()
    assert scored.labels == model.classes_[proba.argmax(axis=1)].tolist()


def test_non_finite_rows_raise_what_sklearn_raises() -> None:
    x, y = data(2)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    compiled = compile_predict_proba(model, 8)
    assert compiled is not None
    rows = unseen_rows(4)
    rows[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.predict_proba(rows)
    with pytest.raises(ValueError, match="NaN"):
        compiled(rows)


def test_other_models_and_steps_are_left_to_sklearn() -> None:
    x, y = data(2)

    class MyRegression(LogisticRegression):  # type: ignore[misc]
        pass

    assert (
        compile_predict_proba(make_pipeline(MinMaxScaler(), LogisticRegression()).fit(x, y), 8)
        is None
    )
    assert compile_predict_proba(SGDClassifier(loss="log_loss").fit(x, y), 8) is None
    assert compile_predict_proba(MyRegression().fit(x, y), 8) is None
    scorer = SklearnClassifierScorer(make_pipeline(MinMaxScaler(), LogisticRegression()).fit(x, y),
                                     [f"f{i}" for i in range(8)])  # fmt: skip
    assert not scorer.accelerated


def test_a_model_that_disagrees_is_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = data(2)
    model = LogisticRegression().fit(x, y)

    def off_by_a_little(scores: np.ndarray, out: np.ndarray) -> np.ndarray:
        expit(scores, out=out)
        np.nextafter(out, np.inf, out=out)  # one unit in the last place
        return out

    monkeypatch.setattr(linear_model, "expit", off_by_a_little)
    assert compile_predict_proba(model, 8) is None
