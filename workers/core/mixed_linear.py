"""A notebook's linear pipeline on mixed columns, scored without a DataFrame.

`ColumnTransformer(SimpleImputer/StandardScaler on numbers, SimpleImputer/OneHotEncoder on
categories)` into `LogisticRegression` (or `LinearRegression`/`Ridge`) is the most common shape
a team brings. scikit-learn scores a 1,000-row batch of it in about 18 ms, most of it general
machinery: a DataFrame, string encoding per column, validation, a sparse matrix. What the model
computes per event is a few scaled numbers, one coefficient look-up per category and a sum.

`compile_pipeline` computes that sum in the order scikit-learn's own arithmetic adds it up: for a
sparse transformer output (scipy's CSR product adds each row's stored entries one by one, in
column order) term by term in column order; for a dense one, the same matrix product on the same
dense matrix. The result is compared with the pipeline's own output on probe rows (every
category, an unseen one, gaps, several batch sizes) and used only when it is equal bit for bit.
Rows holding a category the encoder would refuse (`handle_unknown="error"`) are handed to the
pipeline itself, which raises for them as it always does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.core.feature_spec import FeatureSpec
from workers.core.linear_model import PROBE_ROWS, proba_from_decision
from workers.core.scoring import Columns, Matrix

Own = Callable[[Columns], Matrix]
Compiled = Callable[[Columns], Matrix]


class Unsupported(Exception):  # noqa: N818 - a signal to score the ordinary way, never escapes
    pass


@dataclass(slots=True)
class _Dense:
    """Output columns of numbers, one per input column: a chain of imputation and scaling."""

    positions: list[int]
    fill: list[float | None] = field(default_factory=list)  # per column, None: no imputer
    steps: list[tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]] = field(
        default_factory=list
    )

    @property
    def width(self) -> int:
        return len(self.positions)


@dataclass(slots=True)
class _OneHot:
    """One output column per category of each input column (at most one of them is 1)."""

    positions: list[int]
    lookups: list[dict[Any, int]] = field(default_factory=list)
    # Per column, the code a null gets: imputed, or its own category, or -1 (unknown).
    null_codes: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    ignore_unknown: bool = True

    @property
    def width(self) -> int:
        return sum(self.widths)


Block = _Dense | _OneHot


def _is_missing(value: Any) -> bool:  # noqa: ANN401
    return value is None or (isinstance(value, float) and math.isnan(value))


def _steps_of(transformer: Any) -> list[Any]:  # noqa: ANN401
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    if type(transformer) is Pipeline:
        return [step for _, step in transformer.steps]
    return [transformer]


def _block(transformer: Any, positions: list[int], specs: Sequence[FeatureSpec]) -> Block | None:  # noqa: ANN401, C901, PLR0912, PLR0915
    from sklearn.impute import SimpleImputer  # noqa: PLC0415
    from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: PLC0415

    if transformer == "drop" or not positions:
        return None
    if transformer == "passthrough":
        steps: list[Any] = []
    else:
        steps = _steps_of(transformer)
    if steps and type(steps[-1]) is OneHotEncoder:
        encoder = steps[-1]
        block = _OneHot(positions)
        imputers = steps[:-1]
        if len(imputers) > 1 or (imputers and type(imputers[0]) is not SimpleImputer):
            raise Unsupported("steps before the encoder other than one SimpleImputer")
        imputer = imputers[0] if imputers else None
        if imputer is not None and (imputer.add_indicator or not _nan_marker(imputer)):
            raise Unsupported("imputer with an indicator or another missing marker")
        if encoder.drop_idx_ is not None or getattr(encoder, "_infrequent_enabled", False):
            raise Unsupported("OneHotEncoder with drop or infrequent categories")
        if encoder.dtype not in {np.float64, "float64"}:
            raise Unsupported("OneHotEncoder of another dtype")
        block.ignore_unknown = encoder.handle_unknown == "ignore"
        for j, categories in enumerate(encoder.categories_):
            values = categories.tolist()
            lookup: dict[Any, int] = {}
            none_code = nan_code = -1
            for code, value in enumerate(values):
                if value is None:
                    none_code = code
                elif _is_missing(value):
                    nan_code = code
                else:
                    lookup[value] = code
            null = specs[positions[j]].null_value
            if imputer is not None and (null is None) == (imputer.missing_values is None):
                fill = imputer.statistics_[j]
                null_code = lookup.get(fill, -1) if not _is_missing(fill) else -1
            else:
                null_code = none_code if null is None else nan_code
            block.lookups.append(lookup)
            block.null_codes.append(null_code)
            block.widths.append(len(values))
        return block
    if any(not specs[p].numeric for p in positions):
        raise Unsupported("a categorical column outside a OneHotEncoder")
    dense = _Dense(positions)
    dense.fill = [None] * len(positions)
    for index, step in enumerate(steps):
        if type(step) is SimpleImputer and index == 0:
            if step.add_indicator or not _nan_marker(step):
                raise Unsupported("imputer with an indicator or another missing marker")
            statistics = np.asarray(step.statistics_, dtype=np.float64)
            if not np.isfinite(statistics).all():
                raise Unsupported("an imputer that drops empty columns")
            dense.fill = statistics.tolist()
        elif type(step) is StandardScaler:
            mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else None
            scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else None
            dense.steps.append((mean, scale))
        else:
            raise Unsupported(f"{type(step).__name__} step")
    return dense


def _nan_marker(imputer: Any) -> bool:  # noqa: ANN401
    marker = imputer.missing_values
    return marker is None or (isinstance(marker, float) and math.isnan(marker))


def _final(model: Any, regression: bool) -> tuple[Any, Any]:  # noqa: ANN401
    from sklearn.compose import ColumnTransformer  # noqa: PLC0415
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: PLC0415
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    if type(model) is not Pipeline or len(model.steps) != 2:
        raise Unsupported("not a two-step Pipeline")
    transformer, final = model.steps[0][1], model.steps[1][1]
    if type(transformer) is not ColumnTransformer:
        raise Unsupported("first step is no ColumnTransformer")
    kinds = (LinearRegression, Ridge) if regression else (LogisticRegression,)
    if type(final) not in kinds:
        raise Unsupported(f"{type(final).__name__} is not {kinds}")
    return transformer, final


def _blocks(transformer: Any, specs: Sequence[FeatureSpec]) -> list[Block]:  # noqa: ANN401
    position = {spec.name: i for i, spec in enumerate(specs)}
    names = [str(n) for n in transformer.feature_names_in_]
    indices = transformer._transformer_to_input_indices  # noqa: SLF001
    blocks = []
    for name, fitted, _ in transformer.transformers_:
        positions = [position[names[i]] for i in indices[name]]
        block = _block(fitted, positions, specs)
        if block is not None:
            blocks.append(block)
    return blocks


def compile_pipeline(
    model: Any,  # noqa: ANN401
    specs: Sequence[FeatureSpec],
    *,
    regression: bool,
    own: Own,
) -> Compiled | None:
    """The pipeline's predict_proba (predict) on Columns without a DataFrame, or None."""
    try:
        transformer, final = _final(model, regression)
        blocks = _blocks(transformer, specs)
        compiled = _compiled(blocks, transformer.sparse_output_, final, regression, own)
        if _same_on_probes(compiled, own, blocks, specs):
            return compiled
    except (Unsupported, AttributeError, KeyError, TypeError, ValueError, IndexError):
        pass
    return None


def _compiled(  # noqa: C901, PLR0915 - one builder of closures over the fitted numbers
    blocks: list[Block],
    sparse: bool,
    final: Any,  # noqa: ANN401
    regression: bool,
    own: Own,
) -> Compiled:
    coef = np.asarray(final.coef_, dtype=np.float64)
    coef_t = (coef.reshape(1, -1) if coef.ndim == 1 else coef).T
    intercept = np.asarray(final.intercept_, dtype=np.float64)
    width = sum(block.width for block in blocks)
    if coef_t.shape[0] != width:
        raise Unsupported(f"{coef_t.shape[0]} coefficients for {width} transformed columns")
    outputs = coef_t.shape[1]
    binary = not regression and len(final.classes_) <= 2
    # Per input column of each block, its coefficients: one row per output column of a dense
    # block; for a one-hot column, a table of its categories' rows and a zero row for "no
    # column set" (an unseen category).
    tables: list[list[Matrix]] = []
    offset = 0
    for block in blocks:
        per_column = []
        if isinstance(block, _OneHot):
            for w in block.widths:
                rows = np.vstack([coef_t[offset : offset + w], np.zeros((1, outputs))])
                per_column.append(np.ascontiguousarray(rows))
                offset += w
        else:
            per_column = [coef_t[offset + j] for j in range(block.width)]
            offset += block.width
        tables.append(per_column)

    def dense_values(block: _Dense, columns: Columns) -> list[npt.NDArray[np.float64]]:
        x = np.column_stack([columns.data[p] for p in block.positions])
        for j, fill in enumerate(block.fill):
            if fill is not None:
                column = x[:, j]
                column[np.isnan(column)] = fill
        for mean, scale in block.steps:
            if mean is not None:
                x -= mean
            if scale is not None:
                x /= scale
        return [x[:, j] for j in range(block.width)]

    def codes(block: _OneHot, columns: Columns, refused: npt.NDArray[np.bool_]) -> list[Any]:
        out = []
        for j, p in enumerate(block.positions):
            lookup, null_code = block.lookups[j], block.null_codes[j]
            width_j = block.widths[j]
            values = columns.data[p].tolist()
            code = np.empty(len(values), dtype=np.intp)
            for i, value in enumerate(values):
                c = null_code if value is None else lookup.get(value, -1)
                if c < 0:
                    if not block.ignore_unknown:
                        refused[i] = True
                    c = width_j
                code[i] = c
            out.append(code)
        return out

    def decision(columns: Columns, refused: npt.NDArray[np.bool_]) -> Matrix:
        n = len(columns)
        if sparse:
            acc = np.zeros((n, outputs), dtype=np.float64)
            for block, per_column in zip(blocks, tables, strict=True):
                if isinstance(block, _Dense):
                    values = dense_values(block, columns)
                    for column, row in zip(values, per_column, strict=True):
                        acc += column[:, None] * row
                else:
                    for code, table in zip(codes(block, columns, refused), per_column, strict=True):
                        acc += table[code]
        else:
            x = np.zeros((n, width), dtype=np.float64)
            at = 0
            for block in blocks:
                if isinstance(block, _Dense):
                    for column in dense_values(block, columns):
                        x[:, at] = column
                        at += 1
                else:
                    for code, w in zip(codes(block, columns, refused), block.widths, strict=True):
                        hit = code < w
                        x[np.flatnonzero(hit), at + code[hit]] = 1.0
                        at += w
            acc = x @ (coef.T if coef.ndim == 2 else coef.reshape(-1, 1))
        scores: Matrix = acc + intercept
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict(columns: Columns) -> Matrix:
        refused = np.zeros(len(columns), dtype=bool)
        scores = decision(columns, refused)
        result = scores if regression else proba_from_decision(scores, binary=binary)
        if refused.any():  # the pipeline's own call raises for those rows, as it always did
            result[refused] = own(columns.take(np.flatnonzero(refused)))
        return result

    return predict


def probe_columns(
    blocks: list[Block], specs: Sequence[FeatureSpec], rows: int, seed: int
) -> Columns:
    """Rows made of every known category, an unseen one, gaps where legal and spread numbers."""
    rng = np.random.default_rng(seed)
    data: list[npt.NDArray[Any]] = []
    known: dict[int, list[Any]] = {}
    for block in blocks:
        if isinstance(block, _OneHot):
            for j, p in enumerate(block.positions):
                choices = list(block.lookups[j])
                unseen = _unseen(specs[p])
                if block.ignore_unknown and unseen is not None:
                    choices.append(unseen)
                known.setdefault(p, []).extend(choices)
    for p, spec in enumerate(specs):
        if spec.numeric:
            column = rng.normal(0, 3, rows)
            if spec.nullable:
                column[rng.random(rows) < 0.2] = np.nan
            data.append(column)
        else:
            choices = known.get(p) or [_unseen(spec)]
            picked = np.empty(rows, dtype=object)
            picked[:] = [choices[i] for i in rng.integers(0, len(choices), rows)]
            if spec.nullable:
                picked[rng.random(rows) < 0.2] = None
            data.append(picked)
    return Columns(tuple(data), rows)


def _unseen(spec: FeatureSpec) -> Any:  # noqa: ANN401
    return {"string": "\x00unseen", "integer": -987654321, "boolean": None}.get(spec.json_type)


def _same_on_probes(
    compiled: Compiled, own: Own, blocks: list[Block], specs: Sequence[FeatureSpec]
) -> bool:
    for seed, rows in enumerate(PROBE_ROWS):
        probe = probe_columns(blocks, specs, rows, seed)
        try:
            expected = own(probe)
        except Exception:  # noqa: BLE001 - the pipeline refuses these rows: no comparison
            return False
        if not np.array_equal(compiled(probe), expected):
            return False
    return True
