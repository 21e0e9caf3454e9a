from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from msgspec import to_builtins

from workers.commands.train import load_dataset, train
from workers.core.scoring import RiverClassifierScorer, SklearnClassifierScorer
from workers.model_store import load_version

# BLAS sums a 1-row product (gemv, small-matrix kernels) in another order than a 1000-row one
# (gemm), so the same row can differ in its last bit between batch sizes: measured here, at most
# 3.3e-16 absolute. Labels must be identical; probabilities equal to a few ulps.
ULPS = 1e-12


def test_batched_scores_equal_row_by_row_scores(trained_registry: Path) -> None:
    loaded = load_version(trained_registry / "bc" / "1")
    x = load_dataset("breast_cancer").x[:300]
    batch = loaded.scorer.score(x)
    assert batch.probabilities is not None
    for i in range(len(x)):
        single = loaded.scorer.score(x[i : i + 1])
        assert single.labels[0] == batch.labels[i]
        assert single.scores[0] == pytest.approx(batch.scores[i], rel=ULPS, abs=ULPS)
        assert single.probabilities is not None
        assert to_builtins(single.probabilities[0]) == pytest.approx(
            to_builtins(batch.probabilities[i]), rel=ULPS, abs=ULPS
        )


def test_sklearn_scores_are_predict_proba(trained_registry: Path) -> None:
    loaded = load_version(trained_registry / "bc" / "1")
    assert isinstance(loaded.scorer, SklearnClassifierScorer)
    x = load_dataset("breast_cancer").x[:50]
    proba = loaded.scorer.model.predict_proba(x)
    scored = loaded.scorer.score(x)
    assert scored.scores == proba.max(axis=1).tolist()
    assert scored.labels == [int(c) for c in loaded.scorer.model.classes_[proba.argmax(axis=1)]]
    assert all(type(label) is int for label in scored.labels)  # JSON-native, not numpy
    assert scored.probabilities is not None
    assert to_builtins(scored.probabilities[0]) == {"0": proba[0, 0], "1": proba[0, 1]}


def test_river_batched_equals_row_by_row(tmp_path: Path) -> None:
    folder = train("ph", tmp_path, dataset="phishing", estimator="river_logistic_regression")
    loaded = load_version(folder)
    assert isinstance(loaded.scorer, RiverClassifierScorer)
    assert json.loads((folder / "manifest.json").read_text())["framework"] == "river"
    x = load_dataset("phishing").x[:100]
    batch = loaded.scorer.score(x)
    for i in range(len(x)):
        single = loaded.scorer.score(x[i : i + 1])
        assert (single.labels[0], single.scores[0]) == (batch.labels[i], batch.scores[i])
    assert {type(label) for label in batch.labels} == {bool}


def test_an_empty_matrix_scores_to_nothing(trained_registry: Path) -> None:
    loaded = load_version(trained_registry / "bc" / "1")
    with pytest.raises(ValueError):  # noqa: PT011 - sklearn's own message varies
        loaded.scorer.score(np.empty((0, 30)))


def test_a_model_fitted_on_a_float_target_predicts_integer_labels() -> None:
    import numpy as np  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from workers.core.scoring import SklearnClassifierScorer  # noqa: PLC0415

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(x, np.array([0.0, 0.0, 1.0, 1.0]))
    scorer = SklearnClassifierScorer(model, ["x"])
    scored = scorer.score(x)
    assert scorer.classes == [0, 1]
    assert all(type(label) is int for label in scored.labels)


def test_a_class_that_is_no_whole_number_is_refused_with_the_fix() -> None:
    import numpy as np  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    from workers.core.events import ClassLabelError  # noqa: PLC0415
    from workers.core.scoring import SklearnClassifierScorer  # noqa: PLC0415

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(x, np.array([0, 0, 1, 1]))
    model.classes_ = np.array([0.5, 1.5])  # as a hand-rolled classifier might report them
    with pytest.raises(ClassLabelError, match=r"y\.astype\(int\)"):
        SklearnClassifierScorer(model, ["x"])
