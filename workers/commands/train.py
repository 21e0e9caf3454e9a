"""`scorestream train`: fit a model on a bundled data set, or on the user's own table, and
register it."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import structlog

from workers import drift_reference
from workers.commands.shared import EXIT_OK, add_logging_options, names
from workers.core.estimation import fit_calibration
from workers.core.events import class_label, snake_case
from workers.core.feature_summary import summarize_features
from workers.model_store import (
    ARTIFACT,
    MANIFEST,
    ModelError,
    list_versions,
    model_folder,
    register,
    sha256_hex,
)
from workers.registry import (
    RegistrationError,
    classification_metrics,
    read_table,
    regression_metrics,
)
from workers.registry import register as register_fitted
from workers.settings import SettingsError, add_option
from workers.signing import SIGNATURE, Signer, load_signer

DATASETS = ("breast_cancer", "wine", "iris", "phishing")
ESTIMATORS = ("logistic_regression", "hist_gradient_boosting", "river_logistic_regression")


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    features: list[str]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[Any]


def load_dataset(name: str) -> Dataset:
    """Load a data set bundled with scikit-learn or river (never downloaded at run time)."""
    if name == "phishing":
        from river.datasets import Phishing  # noqa: PLC0415 - river imports are slow

        rows = list(Phishing())
        features = list(rows[0][0])
        x = np.array([[float(xi[f]) for f in features] for xi, _ in rows], dtype=np.float64)
        y = np.array([bool(yi) for _, yi in rows])
        return Dataset(name, features, x, y)
    from sklearn import datasets  # noqa: PLC0415

    loaders: dict[str, Callable[..., Any]] = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    bunch = loaders[name]()
    features = [snake_case(f) for f in bunch.feature_names]
    return Dataset(name, features, np.asarray(bunch.data, dtype=np.float64), bunch.target)


def build_estimator(estimator: str, seed: int) -> Any:  # noqa: ANN401 - sklearn or river model
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import Pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    if estimator == "logistic_regression":
        return Pipeline(
            [("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=2000))]
        )
    if estimator == "hist_gradient_boosting":
        return Pipeline(
            [
                ("scale", StandardScaler()),
                (
                    "classify",
                    HistGradientBoostingClassifier(
                        max_iter=100, early_stopping=False, random_state=seed
                    ),
                ),
            ]
        )
    if estimator == "river_logistic_regression":
        from river import compose, linear_model, preprocessing  # noqa: PLC0415

        return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def _metrics(
    y_true: npt.NDArray[Any], proba: npt.NDArray[np.float64], classes: list[Any]
) -> dict[str, float]:
    return classification_metrics(list(y_true), proba, classes)


def is_regression_target(target: Any) -> bool:  # noqa: ANN401 - a pandas Series
    """A numeric target with fractional values is a quantity to predict, not a class."""
    from pandas.api import types  # noqa: PLC0415

    if types.is_bool_dtype(target.dtype) or not types.is_numeric_dtype(target.dtype):
        return False
    values = target.dropna().to_numpy(dtype=np.float64)
    return bool(len(values)) and not bool(np.all(values == np.round(values)))


def table_estimator(  # noqa: PLR0913
    table: Any,  # noqa: ANN401 - a DataFrame
    target: str,
    categorical: list[str],
    estimator: str,
    seed: int,
    *,
    regression: bool,
) -> Any:  # noqa: ANN401 - a Pipeline
    """A pipeline for a user's table: numbers imputed (median) and scaled, categories imputed
    (most frequent) and one-hot encoded (unseen ones score as all-zero), then the estimator."""
    from pandas.api import types  # noqa: PLC0415
    from sklearn.compose import ColumnTransformer  # noqa: PLC0415
    from sklearn.ensemble import (  # noqa: PLC0415
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.impute import SimpleImputer  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415
    from sklearn.pipeline import Pipeline, make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: PLC0415

    features = [c for c in table.columns if c != target]
    categories = [
        c for c in features
        if c in categorical or types.is_bool_dtype(table[c].dtype)
        or not types.is_numeric_dtype(table[c].dtype)
    ]  # fmt: skip
    numbers = [c for c in features if c not in categories]
    dense = estimator == "hist_gradient_boosting"
    transformer = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             numbers),
            ("categorical", make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown="ignore", sparse_output=not dense),
            ), categories),
        ],
        sparse_threshold=0.0 if dense else 0.3,
    )  # fmt: skip
    final: Any
    if estimator == "logistic_regression":
        final = Ridge() if regression else LogisticRegression(max_iter=2000)
    elif estimator == "hist_gradient_boosting":
        kind = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        final = kind(max_iter=100, early_stopping=False, random_state=seed)
    else:
        raise ValueError(
            f"--data fits logistic_regression or hist_gradient_boosting, not {estimator}"
        )
    return Pipeline([("prepare", transformer), ("model", final)])


def train_table(  # noqa: PLR0913
    name: str,
    models_dir: Path,
    data: Path,
    target: str,
    *,
    categorical: list[str],
    estimator: str = "logistic_regression",
    seed: int = 0,
    test_size: float = 0.25,
    signer: Signer | None = None,
) -> Path:
    """Fit on a user's table (CSV or Parquet), register it with that table as its reference
    and the held-out split's metrics."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    table = read_table(data)
    if target not in table.columns:
        raise RegistrationError(
            f"--target {target!r} is not a column of {data} (columns: "
            f"{', '.join(map(str, table.columns[:20]))})"
        )
    unknown = sorted(set(categorical) - set(table.columns))
    if unknown:
        raise RegistrationError(f"--categorical names {unknown}, which are not columns of {data}")
    table = table[table[target].notna()]
    regression = is_regression_target(table[target])
    model = table_estimator(table, target, categorical, estimator, seed, regression=regression)
    x, y = table.drop(columns=[target]), table[target]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=None if regression else y
    )
    model.fit(x_train, y_train)
    if regression:
        holdout = regression_metrics(
            y_test.to_numpy(dtype=np.float64), np.asarray(model.predict(x_test), np.float64)
        )
    else:
        classes = [class_label(c) for c in model.classes_]
        truth = [class_label(v) for v in y_test.tolist()]
        holdout = classification_metrics(truth, model.predict_proba(x_test), classes)
    return register_fitted(
        model, name=name, models_dir=models_dir, training_data=table, target=target,
        categorical=categorical, signer=signer,
        calibration_data=None if regression else x_test.assign(**{target: y_test}),
        extra={"dataset": str(data), "holdout_metrics": {**holdout, "rows": len(y_test)},
               "seed": seed, "trained_estimator": estimator},
    )  # fmt: skip


def train(  # noqa: PLR0913 - one keyword per CLI flag
    name: str,
    models_dir: Path,
    *,
    dataset: str = "breast_cancer",
    estimator: str = "logistic_regression",
    seed: int = 0,
    test_size: float = 0.25,
    signer: Signer | None = None,
) -> Path:
    """Fit, evaluate on a held-out split, and register the next version; return its folder."""
    return train_on(
        name, models_dir, load_dataset(dataset), estimator=estimator, seed=seed,
        test_size=test_size, signer=signer,
    )  # fmt: skip


def train_on(  # noqa: PLR0913
    name: str,
    models_dir: Path,
    data: Dataset,
    *,
    estimator: str = "logistic_regression",
    seed: int = 0,
    test_size: float = 0.25,
    signer: Signer | None = None,
) -> Path:
    """Like `train`, on data given in memory (benchmarks bring their own). With a `signer`,
    the manifest's bytes are signed into manifest.sig inside the same atomic rename."""
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    dataset = data.name
    x_train, x_test, y_train, y_test = train_test_split(
        data.x, data.y, test_size=test_size, random_state=seed, stratify=data.y
    )
    model = build_estimator(estimator, seed)
    framework = "river" if estimator.startswith("river_") else "sklearn"
    if framework == "river":
        for row, target in zip(x_train.tolist(), y_train.tolist(), strict=True):
            model.learn_one(dict(zip(data.features, row, strict=True)), target)
        classes = sorted({class_label(c) for c in data.y.tolist()})
        proba = np.array(
            [
                [
                    model.predict_proba_one(dict(zip(data.features, row, strict=True))).get(c, 0.0)
                    for c in classes
                ]
                for row in x_test.tolist()
            ]
        )
    else:
        model.fit(x_train, y_train)
        classes = [class_label(c) for c in model.classes_]
        proba = model.predict_proba(x_test)
    metrics = _metrics(y_test, proba, classes)
    # The probabilities are calibrated on the held-out rows (for estimates before labels);
    # the drift reference is the whole data set, in its order, with the model's scores.
    position = {c: i for i, c in enumerate(classes)}
    calibration = fit_calibration(
        np.asarray(proba, dtype=np.float64), [position.get(class_label(y), -1) for y in y_test]
    )
    reference = _reference(model, framework, data, classes)

    def write(folder: Path, version: int) -> None:
        artifact = folder / ARTIFACT
        joblib.dump(model, artifact)
        (folder / drift_reference.REFERENCE_FILE).write_bytes(reference)
        manifest = {
            "name": name,
            "version": version,
            "framework": framework,
            "task": "classification",
            "estimator": estimator,
            "dataset": dataset,
            "features": data.features,
            "classes": classes,
            "sha256": sha256_hex(artifact.read_bytes()),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": _library_versions(framework),
            "metrics": {**metrics, "train_rows": len(y_train), "test_rows": len(y_test)},
            "feature_summary": summarize_features(x_train, data.features),
            "reference": drift_reference.manifest_entry(reference, len(data.y), calibration),
            "seed": seed,
        }
        manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
        (folder / MANIFEST).write_bytes(manifest_bytes)
        if signer is not None and signer.enabled:
            (folder / SIGNATURE).write_text(signer.sign(manifest_bytes))

    return register(model_folder(models_dir, name), write)


def _reference(model: Any, framework: str, data: Dataset, classes: list[Any]) -> bytes:  # noqa: ANN401
    """The data set as the drift reference, each row with the model's served score."""
    if framework == "river":
        proba = np.array([[model.predict_proba_one(dict(zip(data.features, row, strict=True)))
                           .get(c, 0.0) for c in classes] for row in data.x.tolist()])  # fmt: skip
    else:
        proba = np.asarray(model.predict_proba(data.x), dtype=np.float64)
    binary = len(classes) == 2
    return drift_reference.encode(
        data.features, [True] * len(data.features),
        [data.x[:, j].tolist() for j in range(len(data.features))],
        "positive_probability" if binary else "predicted_class",
        proba[:, 1].tolist() if binary else [classes[int(j)] for j in proba.argmax(axis=1)],
    )  # fmt: skip


def _library_versions(framework: str) -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "joblib": package_version("joblib"),
    }
    libraries = ("river",) if framework == "river" else ("scikit-learn",)
    versions.update({lib: package_version(lib) for lib in libraries})
    return versions


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    train = commands.add_parser(
        "train",
        help="train a model and register its next version",
        description="Fit a pipeline on a data set that ships inside scikit-learn or river, "
        "evaluate it on a held-out split and register it as the next version under "
        "MODELS_DIR/NAME/<version>/ (model.joblib + manifest.json).",
    )
    add_option(train, "--name", environ=environ, help="model name (folder under --models-dir)")
    add_option(
        train,
        "--models-dir",
        environ=environ,
        type=Path,
        default=Path("models"),
        help="registry root",
    )
    add_option(
        train,
        "--dataset",
        environ=environ,
        choices=DATASETS,
        default="breast_cancer",
        help="bundled training data",
    )
    add_option(train, "--data", environ=environ, type=Path,
               help="fit on your own table (CSV or Parquet) instead of --dataset")  # fmt: skip
    add_option(train, "--target", environ=environ,
               help="with --data: the column that holds the labels (fractional numbers: a "
               "regressor is fitted)")  # fmt: skip
    add_option(train, "--categorical", environ=environ,
               help="with --data: columns of numbers to encode as categories (strings, "
               "booleans and pandas categories are anyway)")  # fmt: skip
    add_option(
        train,
        "--estimator",
        environ=environ,
        choices=ESTIMATORS,
        default="logistic_regression",
        help="what to fit",
    )
    add_option(
        train,
        "--seed",
        environ=environ,
        type=int,
        default=0,
        help="random seed of the split and the estimator",
    )
    add_option(
        train,
        "--sign-key",
        environ=environ,
        type=Path,
        help="PEM ed25519 private key: sign the manifest into manifest.sig (with "
        "SCORESTREAM_MODEL_HMAC_KEY set and no --sign-key, HMAC-SHA256 signs instead)",
    )
    add_option(
        train,
        "--if-missing",
        environ=environ,
        switch=True,
        help="do nothing when NAME already has a version (for init containers and scripts "
        "that run on every start)",
    )
    add_logging_options(train, environ)
    train.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if not args.name:
        raise SettingsError("--name is required (or SCORESTREAM_NAME)")
    try:
        model_folder(args.models_dir, args.name)
    except ModelError as exc:
        raise SettingsError(str(exc)) from None
    log = structlog.get_logger("scorestream.train")
    existing = list_versions(args.models_dir / args.name)
    if args.if_missing and existing:
        log.info("model_present", model=args.name, versions=existing, trained=False)
        return EXIT_OK
    signer = load_signer(args.sign_key, environ)
    if args.data is not None:
        if not args.target:
            raise SettingsError("--data needs --target COLUMN: the column that holds the labels")
        if args.estimator.startswith("river_"):
            raise SettingsError("--data fits logistic_regression or hist_gradient_boosting")
        folder = train_table(
            args.name, args.models_dir, args.data, args.target,
            categorical=names(args.categorical) or [], estimator=args.estimator,
            seed=args.seed, signer=signer,
        )  # fmt: skip
        return _registered(log, folder)
    folder = train(
        args.name,
        args.models_dir,
        signer=signer,
        dataset=args.dataset,
        estimator=args.estimator,
        seed=args.seed,
    )
    return _registered(log, folder)


def _registered(log: Any, folder: Path) -> int:  # noqa: ANN401 - a structlog logger
    manifest = json.loads((folder / "manifest.json").read_text())
    log.info(
        "model_registered",
        model=manifest["name"],
        version=manifest["version"],
        path=str(folder),
        sha256=manifest["sha256"],
        signed=(folder / "manifest.sig").exists(),
        metrics=manifest.get("metrics"),
        holdout_metrics=manifest.get("holdout_metrics"),
    )
    print(folder)
    return EXIT_OK
