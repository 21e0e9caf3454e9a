"""`scorestream register`: make a model fitted elsewhere the next version of a model."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from workers.commands.shared import EXIT_OK, add_logging_options, names
from workers.model_store import ModelError, model_folder
from workers.registry import register
from workers.settings import SettingsError, add_option
from workers.signing import load_signer


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
    parser = commands.add_parser(
        "register",
        help="register a model fitted elsewhere (a pipeline, XGBoost, LightGBM, ONNX)",
        description="Register a fitted model as the next version of NAME under "
        "MODELS_DIR/NAME/<version>/. --model is a joblib/pickle file of a fitted "
        "scikit-learn-API estimator (a Pipeline with a ColumnTransformer, an XGBoost or "
        "LightGBM scikit-learn wrapper, any classifier with predict_proba or regressor with "
        "predict) or an ONNX graph (.onnx). The feature names come from the estimator "
        "(feature_names_in_), else --features, else the training data's columns less the "
        "target. A column of strings, booleans or pandas categories is categorical, as is every "
        "column named in --categorical; null is allowed where the model scores a missing value. "
        "With --training-data and --target the manifest records a reference summary per feature "
        "and the model's metrics on that data. The last line printed is the new version's folder.",
    )
    add_option(parser, "--name", environ=environ, help="model name (folder under --models-dir)")
    add_option(parser, "--model", environ=environ, type=Path,
               help="the fitted model: a joblib/pickle file, or an .onnx graph")  # fmt: skip
    add_option(parser, "--models-dir", environ=environ, type=Path, default=Path("models"),
               help="registry root")  # fmt: skip
    add_option(parser, "--training-data", environ=environ, type=Path,
               help="the table the model was fitted on (CSV or Parquet)")  # fmt: skip
    add_option(parser, "--target", environ=environ,
               help="the column of --training-data that holds the labels")  # fmt: skip
    add_option(parser, "--calibration-data", environ=environ, type=Path,
               help="classifiers: a table (with --target) the model was not fitted on, to "
               "calibrate its probabilities for estimated accuracy before labels (default: "
               "--training-data; an overfitting model is too sure of itself on that)")  # fmt: skip
    add_option(parser, "--features", environ=environ,
               help="feature names in the model's column order, comma-separated (for a model "
               "fitted on an array, which does not know them)")  # fmt: skip
    add_option(parser, "--categorical", environ=environ,
               help="features to take as categories although they hold numbers "
               "(comma-separated)")  # fmt: skip
    add_option(parser, "--sign-key", environ=environ, type=Path,
               help="PEM ed25519 private key: sign the manifest into manifest.sig (with "
               "SCORESTREAM_MODEL_HMAC_KEY set and no --sign-key, HMAC-SHA256 signs)")  # fmt: skip
    add_logging_options(parser, environ)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if not args.name:
        raise SettingsError("--name is required (or SCORESTREAM_NAME)")
    try:
        model_folder(args.models_dir, args.name)
    except ModelError as exc:
        raise SettingsError(str(exc)) from None
    if args.model is None:
        raise SettingsError("--model FILE is required: a joblib/pickle file or an .onnx graph")
    if (args.target is None) != (args.training_data is None):
        raise SettingsError("--training-data and --target go together: give both or neither")
    folder = register(
        args.model,
        name=args.name,
        models_dir=args.models_dir,
        training_data=args.training_data,
        target=args.target,
        features=names(args.features),
        categorical=names(args.categorical) or (),
        signer=load_signer(args.sign_key, environ),
        calibration_data=args.calibration_data,
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    structlog.get_logger("scorestream.register").info(
        "model_registered",
        model=manifest["name"],
        version=manifest["version"],
        task=manifest["task"],
        framework=manifest["framework"],
        features={
            name: kind["kind"] + (", nullable" if kind["nullable"] else "")
            for name, kind in manifest["feature_kinds"].items()
        },
        path=str(folder),
        sha256=manifest["sha256"],
        signed=(folder / "manifest.sig").exists(),
        metrics=manifest.get("metrics"),
    )
    print(folder)
    return EXIT_OK
