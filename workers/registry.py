"""Register a model fitted elsewhere (a notebook's pipeline, XGBoost, LightGBM, an ONNX graph).

    from workers.registry import register
    register(pipeline, name="churn", training_data=df, target="churned")

works out what the model takes (feature names, each feature's kind and JSON type, where null is
legal), checks that it scores, records a reference summary and metrics when given the data it
was fitted on, and writes the next version of `models/<name>/` atomically. Every refusal is a
RegistrationError whose message says what to change.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import msgspec
import numpy as np
import numpy.typing as npt

from workers import drift_reference
from workers.core.estimation import Calibration, fit_calibration
from workers.core.events import ClassLabelError, class_label, json_value
from workers.core.feature_spec import CATEGORICAL, NUMERIC, FeatureSpec, plain_numeric
from workers.core.feature_summary import summarize_table
from workers.core.scoring import ScoredBatch, Scorer, columns_from_rows
from workers.drift_reference import REFERENCE_FILE
from workers.library_versions import model_versions
from workers.model_store import (
    ARTIFACT,
    MANIFEST,
    ONNX_ARTIFACT,
    Manifest,
    ModelError,
    make_scorer,
    model_folder,
    sha256_hex,
)
from workers.model_store import (
    register as register_folder,
)
from workers.signing import SIGNATURE, Signer

# Rows of the training data scored at registration to check the model and probe for nulls.
PROBE_ROWS = 64
DATA_SUFFIXES = (".csv", ".parquet", ".pq")


class RegistrationError(Exception):
    """The model cannot be registered as it is; the message names the fix."""


def read_table(path: Path) -> Any:  # noqa: ANN401 - a DataFrame
    """A CSV or Parquet file as a DataFrame, read with pandas."""
    import pandas as pd  # noqa: PLC0415

    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise RegistrationError(f"{path}: give a .csv or .parquet file")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise RegistrationError(f"{path} does not exist") from exc
    except ImportError as exc:
        raise RegistrationError(f"{path}: reading Parquet needs pyarrow: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise RegistrationError(f"{path} cannot be read as {suffix[1:]}: {exc}") from exc


def load_artifact(path: Path) -> Any:  # noqa: ANN401 - an estimator, or ONNX bytes
    """A joblib/pickle file's estimator, or an ONNX graph's bytes (by the `.onnx` suffix)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise RegistrationError(f"{path} does not exist") from exc
    if path.suffix.lower() == ".onnx":
        return blob
    try:
        return joblib.load(io.BytesIO(blob))
    except ModuleNotFoundError as exc:
        raise RegistrationError(
            f"{path} needs the library {exc.name!r}, which is not installed here: install the "
            "version the model was saved with"
        ) from exc
    except Exception as exc:  # unpickling can raise anything
        raise RegistrationError(
            f"{path} cannot be loaded in this environment ({exc!r}): save it with joblib.dump "
            "under the library versions installed here, or install the ones it was saved with"
        ) from exc


def register(  # noqa: PLR0913 - one keyword per CLI flag
    model: Any,  # noqa: ANN401 - an estimator, ONNX bytes, or a path to either
    *,
    name: str,
    models_dir: Path | str = "models",
    training_data: Any = None,  # noqa: ANN401 - a DataFrame or a path to a CSV/Parquet file
    target: str | None = None,
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    signer: Signer | None = None,
    extra: Mapping[str, Any] | None = None,
    calibration_data: Any = None,  # noqa: ANN401 - a DataFrame or a path, with the target column
) -> Path:
    """Register `model` as the next version of `name`; return its folder.

    A classifier's probabilities are calibrated (for estimates before labels) on
    `calibration_data` when given — rows it was not fitted on, the honest choice — else on the
    labelled rows of `training_data`."""
    if isinstance(model, str | Path):
        model = load_artifact(Path(model))
    training_data, calibration_data = _tables(training_data, calibration_data, target)
    if target is not None and training_data is None:
        raise RegistrationError("--target names a column of --training-data: give both")
    if training_data is not None and target is not None and target not in training_data.columns:
        raise RegistrationError(
            f"target column {target!r} is not in the training data (columns: "
            f"{_listed(training_data.columns)}): name the column that holds the labels"
        )
    onnx = isinstance(model, bytes | bytearray)
    if onnx:
        draft = _onnx_manifest(bytes(model), name, training_data, target, features, categorical)
        artifact_bytes = bytes(model)
    else:
        draft = _sklearn_manifest(model, name, training_data, target, features, categorical)
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        artifact_bytes = buffer.getvalue()
    draft["sha256"] = sha256_hex(artifact_bytes)
    draft = _checked(model, draft, artifact_bytes, training_data)
    reference = None
    if training_data is not None:
        draft, reference = _described(
            model, draft, artifact_bytes, (training_data, calibration_data), target
        )
    draft.update(extra or {})

    def write(folder: Path, version: int) -> None:
        draft["version"] = version
        (folder / (ONNX_ARTIFACT if onnx else ARTIFACT)).write_bytes(artifact_bytes)
        if reference is not None:
            (folder / REFERENCE_FILE).write_bytes(reference)
        manifest_bytes = (json.dumps(draft, indent=2, default=_json_default) + "\n").encode()
        (folder / MANIFEST).write_bytes(manifest_bytes)
        if signer is not None and signer.enabled:
            (folder / SIGNATURE).write_text(signer.sign(manifest_bytes))

    return register_folder(model_folder(Path(models_dir), name), write)


def _tables(
    training_data: Any,  # noqa: ANN401
    calibration_data: Any,  # noqa: ANN401
    target: str | None,
) -> tuple[Any, Any]:
    """The tables read (from paths) and checked against the target."""
    if isinstance(training_data, str | Path):
        training_data = read_table(Path(training_data))
    if isinstance(calibration_data, str | Path):
        calibration_data = read_table(Path(calibration_data))
    if calibration_data is not None and (target is None or target not in calibration_data):
        raise RegistrationError(
            "the calibration data needs the target column too: give --target and a table "
            "that holds it"
        )
    return training_data, calibration_data


def _listed(columns: Any) -> str:  # noqa: ANN401
    names = [str(c) for c in columns]
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def _json_default(value: Any) -> Any:  # noqa: ANN401
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- what the model is ---------------------------------------------------------------------


def _check_fitted(model: Any) -> None:  # noqa: ANN401
    from sklearn.exceptions import NotFittedError  # noqa: PLC0415
    from sklearn.utils.validation import check_is_fitted  # noqa: PLC0415

    if not hasattr(model, "predict") and not hasattr(model, "predict_proba"):
        raise RegistrationError(
            f"{type(model).__name__} has no predict or predict_proba: register a fitted "
            "classifier (predict_proba, classes_) or regressor (predict)"
        )
    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise RegistrationError(
            f"{type(model).__name__} is not fitted: call .fit(X, y) on it before registering"
        ) from exc
    except TypeError:  # not a scikit-learn estimator: its predict is tried below
        pass


def _task(model: Any) -> str:  # noqa: ANN401
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        return "classification"
    if hasattr(model, "predict"):
        return "regression"
    raise RegistrationError(
        f"{type(model).__name__} has neither predict_proba with classes_ nor predict"
    )


def _feature_names(
    model_names: Sequence[str] | None,
    given: Sequence[str] | None,
    training_data: Any,  # noqa: ANN401
    target: str | None,
    width: int | None,
) -> list[str]:
    if model_names is not None:
        names = [str(n) for n in model_names]
        if given is not None and list(given) != names:
            raise RegistrationError(
                f"--features {list(given)} disagree with the names the model was fitted with "
                f"{names}: leave --features out (the model knows its own)"
            )
    elif given is not None:
        names = list(given)
    elif training_data is not None:
        names = [str(c) for c in training_data.columns if c != target]
    else:
        raise RegistrationError(
            "the model does not know its feature names (it was fitted on an array): give them "
            "in order with --features a,b,... or give --training-data"
        )
    if width is not None and width != len(names):
        raise RegistrationError(
            f"the model takes {width} features but {len(names)} are named ({_listed(names)}): "
            "name exactly the model's columns, in order, with --features"
        )
    if training_data is not None:
        absent = [n for n in names if n not in training_data.columns]
        if absent:
            raise RegistrationError(
                f"the training data lacks the model's features {absent[:10]}: give the table "
                "the model was fitted on (its columns must include every feature)"
            )
        if target is not None and target in names:
            raise RegistrationError(f"the target {target!r} is one of the model's features")
    if len(set(names)) != len(names):
        raise RegistrationError("feature names must be unique")
    return names


def _encoded_columns(model: Any) -> dict[str, Any]:  # noqa: ANN401
    """Columns a fitted pipeline routes to a category encoder, with that encoder's categories."""
    from sklearn.compose import ColumnTransformer  # noqa: PLC0415
    from sklearn.pipeline import Pipeline  # noqa: PLC0415
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder  # noqa: PLC0415

    found: dict[str, Any] = {}
    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    for step in steps:
        if not isinstance(step, ColumnTransformer) or not hasattr(step, "transformers_"):
            continue
        names = [str(n) for n in getattr(step, "feature_names_in_", [])]
        indices = getattr(step, "_transformer_to_input_indices", {})
        for tname, fitted, _ in step.transformers_:
            chain = [s for _, s in fitted.steps] if isinstance(fitted, Pipeline) else [fitted]
            encoders = [s for s in chain if isinstance(s, OneHotEncoder | OrdinalEncoder)]
            if not encoders or tname not in indices:
                continue
            for j, i in enumerate(indices[tname]):
                if i < len(names):
                    found[names[i]] = encoders[0].categories_[j]
    return found


def _json_type_of(values: Any, column: str) -> str:  # noqa: ANN401
    """The JSON type of a categorical column's non-missing values."""
    present = [v for v in values if not _missing(v)]
    if not present:
        return "string"
    if all(isinstance(v, bool | np.bool_) for v in present):
        return "boolean"
    if all(isinstance(v, str) for v in present):
        return "string"
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in present):
        return "integer"
    if all(isinstance(v, float | np.floating) and float(v).is_integer() for v in present):
        return "integer"
    kinds = sorted({type(v).__name__ for v in present})
    raise RegistrationError(
        f"categorical column {column!r} mixes or holds values JSON cannot carry as a category "
        f"({', '.join(kinds)}): make it all strings (df[{column!r}].astype(str)) or all integers"
    )


def _missing(value: Any) -> bool:  # noqa: ANN401
    if value is None:
        return True
    try:
        return bool(value != value)  # noqa: PLR0124 - NaN and pandas.NA
    except (TypeError, ValueError):
        return False


def _specs(
    model: Any,  # noqa: ANN401
    names: list[str],
    training_data: Any,  # noqa: ANN401
    categorical: Sequence[str],
    frame_input: bool,
) -> list[FeatureSpec]:
    unknown = sorted(set(categorical) - set(names))
    if unknown:
        raise RegistrationError(f"--categorical names {unknown}, which are not features")
    encoded = {} if model is None else _encoded_columns(model)
    # Columns the model itself encodes as categories, whatever their values look like.
    native = _hgb_categorical(model, names)
    declared = set(categorical) | set(encoded) | native
    specs = []
    for name in names:
        if training_data is not None:
            spec = _spec_of_column(training_data[name], name, declared, encoded.get(name))
        elif name in declared:
            known = encoded.get(name)
            default = "integer" if name in native else "string"
            json_type = default if known is None else _json_type_of(list(known), name)
            spec = FeatureSpec(name, CATEGORICAL, json_type=json_type,
                               missing_as=_gap_learnt(known) or "nan")  # fmt: skip
        else:
            spec = FeatureSpec(name)
        if not frame_input and spec.json_type == "string":
            raise RegistrationError(
                f"feature {name!r} holds strings but the model was fitted on an array of "
                "numbers: fit it on a DataFrame with a ColumnTransformer that encodes the "
                "strings, or send the feature as numbers"
            )
        if not frame_input:
            spec = dataclasses.replace(spec, dtype=None)
        elif spec.dtype is None:
            spec = dataclasses.replace(spec, dtype="float64" if spec.numeric else "object")
        specs.append(spec)
    return specs


def _spec_of_column(
    column: Any,  # noqa: ANN401 - a pandas Series
    name: str,
    declared: set[str],
    known: Any,  # noqa: ANN401 - the fitted encoder's categories, or None
) -> FeatureSpec:
    """A feature's kind, JSON type, dtype and gap marker from its training column."""
    dtype = str(column.dtype)
    kind = CATEGORICAL if name in declared else _kind_of_column(column, name)
    categories = None
    if dtype == "category":
        categories = tuple(json_value(c) for c in column.dtype.categories)
    gaps = [v for v in column.tolist() if _missing(v)]
    # What the encoder saw in fitting beats a table read back from a file.
    missing_as = _gap_learnt(known) or ("none" if gaps and gaps[0] is None else "nan")
    if missing_as == "none" and dtype in {"str", "string"}:
        dtype = "object"  # pandas' string dtype cannot hold None
    if kind == NUMERIC:
        json_type = "number"
    elif dtype == "category":
        json_type = _json_type_of(list(categories or ()), name)
    else:
        json_type = _json_type_of(column.tolist(), name)
    return FeatureSpec(name, kind, json_type=json_type, dtype=dtype, categories=categories,
                       missing_as=missing_as)  # fmt: skip


def _gap_learnt(categories: Any) -> str | None:  # noqa: ANN401
    """How gaps looked when an encoder was fitted: "none" or "nan" if it learnt one as a
    category, None if it saw no gap (or there is no encoder)."""
    if categories is None:
        return None
    values = list(categories)
    if any(v is None for v in values):
        return "none"
    if any(_missing(v) for v in values):
        return "nan"
    return None


def _kind_of_column(column: Any, name: str) -> str:  # noqa: ANN401
    from pandas.api import types  # noqa: PLC0415

    if types.is_bool_dtype(column.dtype):
        return CATEGORICAL
    if types.is_numeric_dtype(column.dtype):
        return NUMERIC
    if str(column.dtype) == "category" or types.is_string_dtype(column.dtype):
        return CATEGORICAL
    raise RegistrationError(
        f"column {name!r} holds {column.dtype}, which an event cannot carry (events hold "
        "numbers, strings, booleans and null): convert it before fitting, e.g. a timestamp "
        "to epoch seconds"
    )


def _hgb_categorical(model: Any, names: list[str]) -> set[str]:  # noqa: ANN401
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    mask = getattr(final, "is_categorical_", None)
    if mask is None or final is not model:
        return set()
    return {n for n, categorical in zip(names, mask, strict=False) if categorical}


def _draft(  # noqa: PLR0913
    name: str,
    framework: str,
    *,
    task: str,
    estimator: str,
    names: list[str],
    specs: list[FeatureSpec],
    versions: dict[str, str],
    frame_input: bool,
) -> dict[str, Any]:
    """The manifest fields every kind of artifact has; the caller adds its own."""
    return {
        "name": name,
        "version": 1,  # the folder number, set when written
        "framework": framework,
        "task": task,
        "estimator": estimator,
        "input": "frame" if frame_input else "matrix",
        "features": names,
        "feature_kinds": {s.name: s.to_json() for s in specs},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }


def _sklearn_manifest(  # noqa: PLR0913, PLR0917
    model: Any,  # noqa: ANN401
    name: str,
    training_data: Any,  # noqa: ANN401
    target: str | None,
    features: Sequence[str] | None,
    categorical: Sequence[str],
) -> dict[str, Any]:
    _check_fitted(model)
    task = _task(model)
    model_names = getattr(model, "feature_names_in_", None)
    width = getattr(model, "n_features_in_", None)
    names = _feature_names(
        None if model_names is None else list(model_names), features, training_data, target,
        width if isinstance(width, int) else None,
    )  # fmt: skip
    frame_input = model_names is not None
    specs = _specs(model, names, training_data, categorical, frame_input)
    manifest = _draft(
        name, "sklearn", task=task, estimator=type(model).__name__, names=names, specs=specs,
        versions=model_versions(model), frame_input=frame_input,
    )  # fmt: skip
    if task == "classification":
        try:
            manifest["classes"] = [class_label(c) for c in model.classes_]
        except ClassLabelError as exc:
            raise RegistrationError(str(exc)) from exc
    return manifest


def _onnx_manifest(  # noqa: PLR0913, PLR0917
    blob: bytes,
    name: str,
    training_data: Any,  # noqa: ANN401
    target: str | None,
    features: Sequence[str] | None,
    categorical: Sequence[str],
) -> dict[str, Any]:
    from workers.onnx_model import OnnxUnavailableError, runtime, session  # noqa: PLC0415

    try:
        graph = session(blob)
    except OnnxUnavailableError as exc:
        raise RegistrationError(str(exc)) from exc
    except Exception as exc:  # onnxruntime refuses a graph in many ways
        raise RegistrationError(f"onnxruntime cannot load this graph: {exc!r}") from exc
    inputs = graph.get_inputs()
    outputs = graph.get_outputs()
    per_feature = len(inputs) > 1
    if per_feature:
        names = _feature_names(
            [i.name for i in inputs], features, training_data, target, len(inputs)
        )
    else:
        shape = inputs[0].shape
        width = shape[-1] if shape and isinstance(shape[-1], int) else None
        names = _feature_names(None, features, training_data, target, width)
    specs = _specs(None, names, training_data, categorical, frame_input=per_feature)
    if per_feature:
        string_inputs = {i.name for i in inputs if i.type == "tensor(string)"}
        specs = [
            dataclasses.replace(s, kind=CATEGORICAL, json_type="string")
            if s.name in string_inputs and s.kind == NUMERIC
            else s
            for s in specs
        ]
    task = _onnx_task(outputs)
    versions = {"python": platform.python_version(), "onnxruntime": runtime().__version__}
    manifest = _draft(
        name, "onnx", task=task, estimator="onnx", names=names, specs=specs, versions=versions,
        frame_input=per_feature,
    )  # fmt: skip
    if task == "classification":
        width = _onnx_classes(outputs)
        if training_data is not None and target is not None:
            classes = sorted({class_label(c) for c in training_data[target].dropna().tolist()},
                             key=lambda c: (str(type(c)), c))  # fmt: skip
        else:
            classes = list(range(width or 2))
        if width is not None and len(classes) != width:
            raise RegistrationError(
                f"the graph outputs {width} probabilities but the target has {len(classes)} "
                "classes: give the table the model was trained on"
            )
        manifest["classes"] = classes
    return manifest


def _onnx_task(outputs: Sequence[Any]) -> str:
    if len(outputs) > 1:
        return "classification"
    shape = outputs[0].shape
    last = shape[-1] if shape else None
    return "classification" if isinstance(last, int) and last > 1 else "regression"


def _onnx_classes(outputs: Sequence[Any]) -> int | None:
    for output in outputs:
        shape = output.shape
        if output.type in {"tensor(float)", "tensor(double)"} and len(shape or ()) == 2:
            last = shape[-1]
            if isinstance(last, int) and last > 1:
                return last
    return None


# -- does it score, where is null legal, what did its data look like ------------------------


def _rows(training_data: Any, names: list[str], count: int) -> list[tuple[Any, ...]]:  # noqa: ANN401
    """Up to `count` rows as events carry them (NaN as None, numpy scalars as Python values)."""
    head = training_data[names].head(count)
    return [
        tuple(None if _missing(v) else json_value(v) for v in row)
        for row in head.itertuples(index=False, name=None)
    ]


def _synthetic_rows(model: Any, specs: list[FeatureSpec]) -> list[tuple[Any, ...]]:  # noqa: ANN401
    """Probe rows for a model registered without data: zeros and each encoder's first category."""
    encoded = {} if model is None or isinstance(model, bytes) else _encoded_columns(model)
    row: list[Any] = []
    for spec in specs:
        if spec.numeric:
            row.append(0.0)
            continue
        known = [v for v in encoded.get(spec.name, []) if not _missing(v)]
        default = {"string": "", "integer": 0, "boolean": False}[spec.json_type]
        row.append(json_value(known[0]) if known else default)
    return [tuple(row)]


def _checked(
    model: Any,  # noqa: ANN401
    draft: dict[str, Any],
    artifact: bytes,
    training_data: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """The draft completed with kinds, nullability and a probe row, once the model scores."""
    names: list[str] = draft["features"]
    specs = [FeatureSpec.from_json(n, draft["feature_kinds"][n]) for n in names]
    rows: list[tuple[Any, ...]] = []
    if training_data is not None:
        # Complete rows first: whether a gap is legal is probed feature by feature below.
        complete = training_data[names].dropna()
        rows = _rows(complete if len(complete) else training_data, names, PROBE_ROWS)
    if not rows:
        rows = _synthetic_rows(model, specs)
    what = "rows of the training data" if training_data is not None else "a probe row"
    try:
        _score(model, draft, artifact, rows, specs)
    except RegistrationError:
        raise
    except Exception as exc:  # the model's own failure on rows it should take
        raise RegistrationError(
            f"the model cannot score {what}: {exc!r}; check that the features and the data "
            "are the ones it was fitted on"
        ) from exc
    # Null is legal where the served model is shown to score it: each feature in turn is
    # set to null in a few rows and scored through the scorer a worker would build.
    for j, spec in enumerate(specs):
        gapped = [(*row[:j], None, *row[j + 1 :]) for row in rows[:8]]
        probe_specs = [*specs[:j], _nullable(spec), *specs[j + 1 :]]
        try:
            scored = _score(model, draft, artifact, gapped, probe_specs)
            takes_null = all(math.isfinite(x) for x in scored.scores)
        except Exception:  # noqa: BLE001 - the model cannot take a gap there: not nullable
            takes_null = False
        if takes_null:
            specs[j] = _nullable(spec)
    draft["feature_kinds"] = {s.name: s.to_json() for s in specs}
    draft["probe"] = dict(zip(names, rows[0], strict=True))
    return draft


def _described(
    model: Any,  # noqa: ANN401
    draft: dict[str, Any],
    artifact: bytes,
    tables: tuple[Any, Any],
    target: str | None,
) -> tuple[dict[str, Any], bytes]:
    """The draft with the data's summary, metrics and drift reference (whose npz bytes come
    second); `tables`: the training data and the calibration data (or None)."""
    training_data, calibration_data = tables
    names: list[str] = draft["features"]
    specs = [FeatureSpec.from_json(n, draft["feature_kinds"][n]) for n in names]
    draft["feature_summary"] = summarize_table(training_data, specs)
    calibration = None
    if target is not None:
        draft["metrics"], calibration = _metrics(model, draft, artifact, training_data, specs,
                                                 target)  # fmt: skip
        if calibration_data is not None and draft["task"] == "classification":
            held_out, calibration = _metrics(model, draft, artifact, calibration_data, specs,
                                             target)  # fmt: skip
            draft["calibration_metrics"] = held_out
    scorer = _scorer(model, draft, artifact, specs)
    sample = training_data.iloc[drift_reference.tail(len(training_data))]
    rows = _rows(sample, names, len(sample))
    kind, scores = _reference_scores(scorer, draft, rows, specs)
    columns = [[row[j] for row in rows] for j in range(len(names))]
    blob = drift_reference.encode(names, [s.numeric for s in specs], columns, kind, scores)
    draft["reference"] = drift_reference.manifest_entry(blob, len(rows), calibration)
    return draft, blob


def _reference_scores(
    scorer: Scorer, draft: dict[str, Any], rows: list[tuple[Any, ...]], specs: list[FeatureSpec]
) -> tuple[str, list[Any]]:
    """What prediction drift compares: each reference row's served score (None where the
    row has a gap the model cannot take, as such an event is a dead letter in service)."""
    regression = draft["task"] == "regression"
    binary = not regression and len(draft.get("classes") or []) == 2
    kind = "predicted_value" if regression else ("positive_probability" if binary
                                                  else "predicted_class")  # fmt: skip
    required = [j for j, s in enumerate(specs) if not s.nullable]
    scorable = [i for i, row in enumerate(rows) if all(row[j] is not None for j in required)]
    scores: list[Any] = [None] * len(rows)
    for start in range(0, len(scorable), 1000):
        chosen = scorable[start : start + 1000]
        scored = _score_rows(scorer, [rows[i] for i in chosen], specs)
        for k, i in enumerate(chosen):
            if regression:
                scores[i] = float(scored.labels[k])
            elif binary and scored.probabilities is not None:
                scores[i] = _probability_row(scored.probabilities[k])[1]
            else:
                scores[i] = json_value(scored.labels[k])
    return kind, scores


def _nullable(spec: FeatureSpec) -> FeatureSpec:
    return dataclasses.replace(spec, nullable=True)


def _scorer(
    model: Any,  # noqa: ANN401
    draft: dict[str, Any],
    artifact: bytes,
    specs: list[FeatureSpec],
) -> Scorer:
    """The very scorer a worker would build from this manifest with these feature kinds."""
    manifest = Manifest.from_json(
        {**draft, "feature_kinds": {s.name: s.to_json() for s in specs}}, "registration"
    )
    if manifest.framework == "onnx":
        from workers.onnx_model import OnnxScorer  # noqa: PLC0415

        return OnnxScorer(artifact, manifest.specs, manifest.classes, manifest.regression)
    try:
        return make_scorer(manifest, model)
    except ModelError as exc:
        raise RegistrationError(str(exc)) from exc


def _score_rows(
    scorer: Scorer, rows: list[tuple[Any, ...]], specs: list[FeatureSpec]
) -> ScoredBatch:
    if plain_numeric(specs) and not any(v is None for row in rows for v in row):
        return scorer.score(np.array(rows, dtype=np.float64))
    return scorer.score(columns_from_rows(rows, [s.numeric for s in specs]))


def _score(
    model: Any,  # noqa: ANN401
    draft: dict[str, Any],
    artifact: bytes,
    rows: list[tuple[Any, ...]],
    specs: list[FeatureSpec],
) -> ScoredBatch:
    """Score rows through the very scorer a worker would build from this manifest."""
    return _score_rows(_scorer(model, draft, artifact, specs), rows, specs)


def _metrics(  # noqa: PLR0913, PLR0917
    model: Any,  # noqa: ANN401
    draft: dict[str, Any],
    artifact: bytes,
    training_data: Any,  # noqa: ANN401
    specs: list[FeatureSpec],
    target: str,
) -> tuple[dict[str, Any], Calibration | None]:
    """Metrics of the served scores on the labelled rows of the registration data, and (for
    a classifier) its probabilities calibrated on them, for estimates before labels arrive."""
    labelled = training_data[training_data[target].notna()]
    # Rows with a gap the model cannot take are not scored in service either (dead letters).
    required = [s.name for s in specs if not s.nullable]
    labelled = labelled[labelled[required].notna().all(axis=1)] if required else labelled
    rows = _rows(labelled, draft["features"], len(labelled))
    truth = [json_value(v) for v in labelled[target].tolist()]
    labels: list[Any] = []
    proba: list[list[float]] = []
    # Built once: a scorer compares its compiled arithmetic with the model's at construction.
    scorer = _scorer(model, draft, artifact, specs)
    for start in range(0, len(rows), 1000):
        scored = _score_rows(scorer, rows[start : start + 1000], specs)
        labels.extend(scored.labels)
        if scored.probabilities is not None:
            proba.extend(_probability_row(p) for p in scored.probabilities)
    if draft["task"] == "regression":
        return {**regression_metrics(np.array(truth, float), np.array(labels, float)),
                "rows": len(rows)}, None  # fmt: skip
    classes = draft["classes"]
    matrix = np.array(proba, dtype=np.float64)
    actual = [class_label(t) for t in truth]
    metrics = classification_metrics(actual, matrix, classes)
    position = {c: i for i, c in enumerate(classes)}
    calibration = fit_calibration(matrix, [position.get(a, -1) for a in actual])
    return {**metrics, "rows": len(rows)}, calibration


def _probability_row(probabilities: Any) -> list[float]:  # noqa: ANN401
    if isinstance(probabilities, dict):
        return [float(v) for v in probabilities.values()]
    return [float(v) for v in msgspec.structs.astuple(probabilities)]


def regression_metrics(
    actual: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64]
) -> dict[str, float]:
    """MAE, RMSE, mean error (actual - predicted) and R^2."""
    error = actual - predicted
    total = float(((actual - actual.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "mean_error": float(error.mean()),
        "r2": float(1 - (error**2).sum() / total) if total > 0 else 0.0,
    }


def classification_metrics(
    y_true: Sequence[Any], proba: npt.NDArray[np.float64], classes: list[Any]
) -> dict[str, float]:
    """Accuracy and log loss; ROC AUC and F1 of the second class for binary classifiers."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score  # noqa: PLC0415

    predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    y_obj = np.asarray(list(y_true), dtype=object)
    metrics = {
        "accuracy": float(accuracy_score(y_obj.tolist(), predicted.tolist())),
        # float32 graphs' probabilities miss one by a rounding: log loss wants them exact.
        "log_loss": float(
            log_loss(y_obj.tolist(), proba / proba.sum(axis=1, keepdims=True), labels=classes)
        ),
    }
    if len(classes) == 2:
        positive = classes[1]
        truth = (y_obj == positive).astype(int)
        if 0 < truth.sum() < len(truth):
            metrics["roc_auc"] = float(roc_auc_score(truth, proba[:, 1]))
        metrics["f1"] = float(f1_score(truth, (predicted == positive).astype(int)))
    return metrics
