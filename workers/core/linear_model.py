"""A faster predict_proba for LogisticRegression, alone or after StandardScaler steps.

For a micro-batch, scikit-learn's arithmetic is the small part: a Pipeline of StandardScaler
and LogisticRegression spends about 0.2 ms per call validating its input (dtype, finiteness,
feature count, namespace) and routing it through the steps, against 30 us of arithmetic for a
thousand rows. That fixed cost is what makes small batches expensive, and small batches are
what keeps latency low when the stream is not saturating the worker.

`compile_predict_proba` returns the same arithmetic without the checks, in the same order of
operations as scikit-learn 1.9, so the result is bit-for-bit scikit-learn's. Before it is used
it is compared with the model's own predict_proba on probe rows of several batch sizes; a
release that computes differently fails that comparison and the model is scored the ordinary
way. The checks skipped are the caller's job: the inference path hands over only finite rows
of the manifest's width, and a result that is not finite is recomputed by scikit-learn, which
raises the error it always raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import expit

Matrix = npt.NDArray[np.float64]
Transform = Callable[[Matrix], Matrix]
PredictProba = Callable[[Matrix], Matrix]

# Row counts the comparison runs at: one row, a few, and batch sizes on both sides of the
# sizes BLAS switches kernels at.
PROBE_ROWS = (1, 3, 64, 257, 1000)


class Unsupported(Exception):  # noqa: N818 - a signal to score the ordinary way, never escapes
    pass


def compile_transform(steps: Sequence[Any]) -> Transform | None:
    """StandardScaler steps as one function (None for no steps); Unsupported for any other."""
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    scalers: list[tuple[Matrix | None, Matrix | None]] = []
    for step in steps:
        if type(step) is not StandardScaler:  # a subclass may transform differently
            raise Unsupported(f"{type(step).__name__} step")
        mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
        scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else None
        scalers.append((mean, scale))
    if not scalers:
        return None

    def transform(matrix: Matrix) -> Matrix:
        x = np.array(matrix, dtype=np.float64)  # a copy, as the scaler's copy=True makes
        for mean, scale in scalers:
            if mean is not None:
                x -= mean
            if scale is not None:
                x /= scale
        return x

    return transform


def compile_predict_proba(model: Any, n_features: int) -> PredictProba | None:  # noqa: ANN401
    """A predict_proba equal to `model.predict_proba` but faster, or None when there is none."""
    try:
        classifier, transform = _classifier_and_transform(model)
        predict_proba = _logistic(classifier, transform, model.predict_proba)
        if same_on_probes(model, predict_proba, n_features):
            return predict_proba
    except (Unsupported, AttributeError, TypeError, ValueError):
        pass
    return None


def _classifier_and_transform(model: Any) -> tuple[Any, Transform | None]:  # noqa: ANN401
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    if type(model) is LogisticRegression:
        return model, None
    if type(model) is Pipeline and type(model[-1]) is LogisticRegression:
        return model[-1], compile_transform([step for _, step in model.steps[:-1]])
    raise Unsupported("not a LogisticRegression")


def _logistic(
    classifier: Any,  # noqa: ANN401
    transform: Transform | None,
    checked: PredictProba,
) -> PredictProba:
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    coef_t = coef.T  # the same strided view scikit-learn multiplies by
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)
    binary = len(classifier.classes_) <= 2

    def decision(x: Matrix) -> Matrix:
        scores: Matrix = x @ coef_t + intercept
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict_proba(matrix: Matrix) -> Matrix:
        x = np.asarray(matrix, dtype=np.float64) if transform is None else transform(matrix)
        proba = proba_from_decision(decision(x), binary=binary)
        if not len(proba) or not np.isfinite(proba).all():
            # No rows or not finite ones: scikit-learn's own call raises the error it names.
            return checked(matrix)
        return proba

    return predict_proba


def proba_from_decision(scores: Matrix, *, binary: bool) -> Matrix:
    """LogisticRegression.predict_proba from its decision function (`scores` is overwritten)."""
    if binary:  # LinearClassifierMixin._predict_proba_lr
        expit(scores, out=scores)
        return np.stack([1 - scores, scores], axis=1)
    # sklearn.utils.extmath.softmax
    scores -= scores.max(axis=1).reshape(-1, 1)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1).reshape(-1, 1)
    return scores


def same_on_probes(
    model: Any,  # noqa: ANN401
    predict_proba: PredictProba,
    n_features: int,
    method: str = "predict_proba",
) -> bool:
    """Whether `predict_proba` gives `model.predict_proba`'s (or `method`'s) numbers exactly on
    random rows, in batches of each of PROBE_ROWS."""
    rng = np.random.default_rng(0)
    for rows in PROBE_ROWS:
        probe = rng.normal(0, 3, (rows, n_features))
        if not np.array_equal(predict_proba(probe), getattr(model, method)(probe)):
            return False
    return True
