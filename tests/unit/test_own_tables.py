"""`scorestream train --data` and `scorestream register` from the command line, on a user's own
table (CSV and Parquet) with categories, gaps and a regression target."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.models import churn_pipeline, table
from workers.cli import main
from workers.commands.train import is_regression_target
from workers.model_store import load_version

pytestmark = pytest.mark.unit


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    table(1200).to_csv(path, index=False)
    return path


def test_train_data_fits_a_classifier_with_categories_and_registers_it(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = str(tmp_path / "models")
    code = main(["train", "--name", "churn", "--models-dir", models, "--data", str(csv),
                 "--target", "churned", "--categorical", "weekday"])  # fmt: skip
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = load_version(folder)
    manifest = loaded.manifest.raw
    assert manifest["task"] == "classification"
    assert manifest["classes"] == ["no", "yes"]
    assert manifest["feature_kinds"]["weekday"]["kind"] == "categorical"
    assert manifest["feature_kinds"]["weekday"]["json_type"] == "integer"
    assert manifest["feature_kinds"]["country"]["json_type"] == "string"
    assert manifest["feature_kinds"]["tenure_months"]["nullable"] is True
    assert 0.5 < manifest["holdout_metrics"]["accuracy"] <= 1
    assert manifest["holdout_metrics"]["rows"] == 300
    assert getattr(loaded.scorer, "accelerated", False)


def test_train_data_fits_a_regressor_for_a_fractional_target(tmp_path: Path) -> None:
    parquet = tmp_path / "spend.parquet"
    table(1200).drop(columns=["churned"]).to_parquet(parquet)
    code = main(["train", "--name", "spend", "--models-dir", str(tmp_path / "models"),
                 "--data", str(parquet), "--target", "monthly_spend",
                 "--estimator", "hist_gradient_boosting"])  # fmt: skip
    assert code == 0
    manifest = json.loads((tmp_path / "models" / "spend" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "regression"
    assert {"mae", "rmse", "mean_error", "r2"} <= set(manifest["holdout_metrics"])
    assert manifest["holdout_metrics"]["r2"] > 0.5


def test_a_regression_target_is_a_fractional_number() -> None:
    frame = table(300)
    assert is_regression_target(frame["monthly_spend"])
    assert not is_regression_target(frame["churned"])
    assert not is_regression_target(frame["weekday"])
    assert not is_regression_target(frame["discount"])


def test_train_data_errors_name_the_fix(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = str(tmp_path / "models")
    assert main(["train", "--name", "x", "--models-dir", models, "--data", str(csv)]) == 1
    assert "--target COLUMN" in capsys.readouterr().err
    assert main(["train", "--name", "x", "--models-dir", models, "--data", str(csv),
                 "--target", "nope"]) == 1  # fmt: skip
    assert "'nope' is not a column" in capsys.readouterr().err
    assert main(["train", "--name", "x", "--models-dir", models, "--data",
                 str(tmp_path / "missing.csv"), "--target", "churned"]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_register_cli_prints_the_folder_last_and_refuses_clearly(
    csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps(churn_pipeline(table(600))))
    models = str(tmp_path / "models")
    code = main(["register", "--name", "churn", "--model", str(model), "--models-dir", models,
                 "--training-data", str(csv), "--target", "churned"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "models" / "churn" / "1")
    registered = json.loads(out[-2])
    assert registered["features"]["device"] == "categorical, nullable"
    unfitted = tmp_path / "unfitted.pkl"
    unfitted.write_bytes(pickle.dumps(LogisticRegression()))
    assert main(["register", "--name", "u", "--model", str(unfitted), "--models-dir", models]) == 1
    assert "not fitted: call .fit(X, y)" in capsys.readouterr().err
    assert main(["register", "--name", "u", "--model", str(model), "--models-dir", models,
                 "--target", "churned"]) == 1  # fmt: skip
    assert "go together" in capsys.readouterr().err
    assert np.isfinite(registered["metrics"]["accuracy"])


def test_monitor_features_without_a_model_names_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["monitor", "--bootstrap-servers", "127.0.0.1:1", "--features-topic", "f"])
    assert code == 1
    assert "--features-topic needs --model" in capsys.readouterr().err
