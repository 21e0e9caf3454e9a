"""A faster predict_proba (predict) for HistGradientBoosting classifiers (regressors), alone or
ending a Pipeline.

scikit-learn walks each row down each tree with a branch per split; with 100 trees that is
most of an event's cost. `compile_predict_proba` lays the trees out for the C walker in
`workers._trees` and returns a predict_proba that is bit-for-bit scikit-learn's: before it is
used it is compared with the model's own predict_proba on rows built to sit on, just below and
just above every threshold (and on missing values), and it is not used if any row differs. It
reads three fitted attributes that are not public API (`_predictors`, `_baseline_prediction`,
`_loss`); a scikit-learn release that changes them fails that comparison and the model is
scored the ordinary way. Categorical splits are left to scikit-learn.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.core.linear_model import Unsupported, compile_transform, same_on_probes

Matrix = npt.NDArray[np.float64]
PredictProba = Callable[[Matrix], Matrix]

NODE = np.dtype([("threshold", "<f8"), ("feature", "<i4"), ("left", "<i4")])

_trees: Any = None
with contextlib.suppress(ImportError):  # built at install when a C compiler is there
    _trees = importlib.import_module("workers._trees")


class _Unsupported(Exception):  # noqa: N818 - internal signal, never escapes
    pass


class Ensemble:
    """The trees of one output (class) column, laid out for `_trees.sum_leaves`."""

    def __init__(self, trees: list[Any], baseline: float, n_features: int) -> None:
        nodes: list[tuple[float, int, int]] = []
        missing: list[int] = []
        values: list[float] = []
        roots: list[int] = []
        depths: list[int] = []
        for tree in trees:
            roots.append(len(values))
            depth = _layout(tree, len(values), nodes, missing, values)
            depths.append(depth)
        self.nodes = np.array(nodes, dtype=NODE)
        self.missing_left = np.array(missing, dtype=np.uint8)
        self.values = np.array(values, dtype=np.float64)
        self.roots = np.array(roots, dtype=np.int32)
        self.depths = np.array(depths, dtype=np.int32)
        self.baseline = float(baseline)
        self.n_features = n_features
        if len(self.nodes) and (
            self.nodes["feature"].min() < 0 or self.nodes["feature"].max() >= n_features
        ):
            raise _Unsupported("a split on a feature the model was not given")

    def sum_leaves(self, matrix: Matrix) -> Matrix:
        out = np.empty(len(matrix), dtype=np.float64)
        _trees.sum_leaves(
            matrix, len(matrix), self.n_features, self.nodes, self.missing_left,
            self.values, self.roots, self.depths, self.baseline, out,
        )  # fmt: skip
        return out


def _layout(
    tree: Any,  # noqa: ANN401 - scikit-learn's TreePredictor
    base: int,
    nodes: list[tuple[float, int, int]],
    missing: list[int],
    values: list[float],
) -> int:
    """Append one tree breadth-first with siblings side by side; return its depth."""
    raw = tree.nodes
    if raw["is_categorical"].any():
        raise _Unsupported("categorical splits")
    order, position, depth = [0], {0: 0}, {0: 0}
    for i in order:  # grows while iterated: a breadth-first walk
        if not raw["is_leaf"][i]:
            for child in (int(raw["left"][i]), int(raw["right"][i])):
                position[child] = len(order)
                depth[child] = depth[i] + 1
                order.append(child)
    for i in order:
        here = base + position[i]
        if raw["is_leaf"][i]:
            # Goes "left" to itself whatever the value, NaN included.
            nodes.append((float("inf"), 0, here))
            missing.append(1)
        else:
            left = base + position[int(raw["left"][i])]
            nodes.append((float(raw["num_threshold"][i]), int(raw["feature_idx"][i]), left))
            missing.append(int(raw["missing_go_to_left"][i]))
        values.append(float(raw["value"][i]))
    return max(depth.values())


def _hgb_and_prefix(model: Any, kind: type) -> tuple[Any, Any]:  # noqa: ANN401
    """The HistGradientBoosting model of `kind` and the pipeline steps before it (or None)."""
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    if isinstance(model, kind):
        return model, None
    if isinstance(model, Pipeline) and isinstance(model[-1], kind):
        return model[-1], (model[:-1] if len(model) > 1 else None)
    raise _Unsupported(f"not a {kind.__name__}")


def compile_predict_proba(model: Any, n_features: int) -> PredictProba | None:  # noqa: ANN401
    """A predict_proba equal to `model.predict_proba` but faster, or None when there is none."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415

    return _compile(model, n_features, HistGradientBoostingClassifier, "predict_proba")


def compile_predict(model: Any, n_features: int) -> PredictProba | None:  # noqa: ANN401
    """A regressor's predict equal to `model.predict` but faster, or None when there is none."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

    return _compile(model, n_features, HistGradientBoostingRegressor, "predict")


def _compile(model: Any, n_features: int, kind: type, method: str) -> PredictProba | None:  # noqa: ANN401
    if _trees is None:
        return None
    try:
        hgb, prefix = _hgb_and_prefix(model, kind)
        baseline = np.asarray(hgb._baseline_prediction, dtype=np.float64).ravel()  # noqa: SLF001
        per_class = list(zip(*hgb._predictors, strict=True))  # noqa: SLF001
        ensembles = [
            Ensemble(list(trees), baseline[k], hgb.n_features_in_)
            for k, trees in enumerate(per_class)
        ]
        loss = hgb._loss  # noqa: SLF001
    except (_Unsupported, AttributeError, TypeError, ValueError, IndexError):
        return None

    def raw_predict(features: Matrix) -> Matrix:
        x = np.ascontiguousarray(features, dtype=np.float64)
        raw = np.empty((len(x), len(ensembles)), dtype=np.float64, order="F")
        for k, ensemble in enumerate(ensembles):
            raw[:, k] = ensemble.sum_leaves(x)
        return raw

    transform = _prefix_transform(prefix)

    def output(raw: Matrix) -> Matrix:
        if method == "predict":  # HistGradientBoostingRegressor.predict
            predicted: Matrix = loss.link.inverse(raw.ravel())
            return predicted
        proba: Matrix = loss.predict_proba(raw)
        return proba

    def predict_proba(matrix: Matrix) -> Matrix:
        features = matrix if transform is None else transform(matrix)
        return output(raw_predict(features))

    try:
        same = _same_as_sklearn(hgb, raw_predict, output, method)
        if same and prefix is not None:  # the steps before the trees, compiled or not
            same = same_on_probes(model, predict_proba, n_features, method)
    except (AttributeError, TypeError, ValueError):
        return None
    return predict_proba if same else None


def _prefix_transform(prefix: Any) -> Callable[[Matrix], Matrix] | None:  # noqa: ANN401
    """The steps before the trees: compiled when they are scalers, else their own transform
    (the comparison with the whole pipeline below covers both)."""
    if prefix is None:
        return None
    try:
        return compile_transform([step for _, step in prefix.steps])
    except Unsupported:
        transform: Callable[[Matrix], Matrix] = prefix.transform
        return transform


def _same_as_sklearn(
    hgb: Any,  # noqa: ANN401
    raw: Callable[[Matrix], Matrix],
    output: Callable[[Matrix], Matrix],
    method: str,
) -> bool:
    """Compare on rows made of every threshold, its neighbours on both sides, and NaN."""
    rng = np.random.default_rng(0)
    width = hgb.n_features_in_
    candidates: list[list[float]] = [[0.0, float("nan")] for _ in range(width)]
    for trees in hgb._predictors:  # noqa: SLF001
        for tree in trees:
            splits = tree.nodes[tree.nodes["is_leaf"] == 0]
            pairs = zip(
                splits["feature_idx"].tolist(), splits["num_threshold"].tolist(), strict=True
            )
            for feature, threshold in pairs:
                below, above = np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)
                candidates[feature] += [threshold, float(below), float(above)]
    rows = np.empty((2048, width), dtype=np.float64)
    for j, values in enumerate(candidates):
        rows[:, j] = rng.choice(np.array(values), size=len(rows))
    return bool(np.array_equal(output(raw(rows)), getattr(hgb, method)(rows)))
