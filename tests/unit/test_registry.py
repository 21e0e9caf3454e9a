"""`register` on models the project did not train: what it infers, what it refuses, and that the
served scores equal the estimator's own."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import structlog

from tests.models import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    as_categories,
    churn_pipeline,
    numeric_matrix,
    rows_of,
    spend_regressor,
    table,
)
from workers.core.events import EventDecoder
from workers.core.inference import ServingModel, score_batch
from workers.core.scoring import columns_from_rows
from workers.model_store import load_version, read_manifest
from workers.registry import RegistrationError, register

pytestmark = pytest.mark.unit


def kinds(folder: Path) -> dict[str, tuple[str, bool]]:
    raw = read_manifest(folder).raw["feature_kinds"]
    return {name: (k["kind"], k["nullable"]) for name, k in raw.items()}


def served(folder: Path, frame: pd.DataFrame) -> np.ndarray:
    loaded = load_version(folder)
    specs = loaded.manifest.specs
    batch = columns_from_rows(rows_of(frame, list(loaded.manifest.features)),
                              [s.numeric for s in specs])  # fmt: skip
    scored = loaded.scorer.score(batch)
    return np.array(scored.scores)


def test_a_notebook_pipeline_with_strings_and_gaps_registers_and_scores_bit_for_bit(
    tmp_path: Path,
) -> None:
    frame = table()
    model = churn_pipeline(frame)
    folder = register(model, name="churn", models_dir=tmp_path, training_data=frame,
                      target="churned")  # fmt: skip
    manifest = read_manifest(folder)
    assert manifest.task == "classification"
    assert manifest.input == "frame"
    assert list(manifest.features) == FEATURES
    assert manifest.classes == ("no", "yes")
    found = kinds(folder)
    assert {found[c][0] for c in CATEGORICAL} == {"categorical"}
    assert {found[c][0] for c in NUMERIC} == {"numeric"}
    # Every column goes through an imputer: the model is shown to score a gap anywhere.
    assert all(nullable for _, nullable in found.values())
    assert manifest.raw["feature_kinds"]["country"]["json_type"] == "string"
    summary = manifest.raw["feature_summary"]
    assert summary["device"]["missing_rate"] == pytest.approx(frame["device"].isna().mean())
    assert summary["country"]["frequencies"][0][0] == frame["country"].value_counts().index[0]
    assert summary["tenure_months"]["mean"] == pytest.approx(frame["tenure_months"].mean())
    expected = model.predict_proba(frame[FEATURES]).max(axis=1)
    assert np.array_equal(served(folder, frame), expected)
    assert getattr(load_version(folder).scorer, "accelerated", False)  # no DataFrame built
    assert manifest.raw["metrics"]["rows"] == len(frame)
    assert manifest.raw["versions"]["scikit-learn"]


@pytest.mark.parametrize("sparse", [True, False])
def test_unseen_categories_score_as_the_pipeline_scores_them(tmp_path: Path, sparse: bool) -> None:
    frame = table()
    model = churn_pipeline(frame, sparse=sparse)
    folder = register(model, name="churn", models_dir=tmp_path, training_data=frame,
                      target="churned")  # fmt: skip
    live = table(600, seed=11)
    live.loc[::3, "country"] = "Atlantis"
    live.loc[1::5, "plan"] = "enterprise"
    expected = np.asarray(model.predict_proba(live[FEATURES])).max(axis=1)
    assert np.array_equal(served(folder, live), expected)


def test_a_category_the_encoder_refuses_dead_letters_that_event_only(tmp_path: Path) -> None:
    frame = table()
    model = churn_pipeline(frame, handle_unknown="error")
    folder = register(model, name="strict", models_dir=tmp_path, training_data=frame,
                      target="churned")  # fmt: skip
    loaded = load_version(folder)
    serving = ServingModel("strict", 1, EventDecoder(loaded.manifest.specs), loaded.scorer)
    live = table(50, seed=3)
    live.loc[7, "country"] = "Atlantis"
    values = [
        json.dumps(
            {"event_id": f"e{i}", "features": dict(zip(FEATURES, row, strict=True))}
        ).encode()
        for i, row in enumerate(rows_of(live, FEATURES))
    ]
    result = score_batch(values, [0] * len(values), serving, scored_at_ms=1)
    assert [i for i, _ in result.invalid] == [7]
    assert result.invalid[0][1].error_type == "model"
    assert len(result.predictions) == 49


def test_a_regressor_with_native_categories_registers_and_scores_bit_for_bit(
    tmp_path: Path,
) -> None:
    frame = table()
    model = spend_regressor(frame)
    training = as_categories(frame)
    folder = register(model, name="spend", models_dir=tmp_path, training_data=training,
                      target="monthly_spend")  # fmt: skip
    manifest = read_manifest(folder)
    assert manifest.task == "regression"
    assert not manifest.classes
    assert manifest.raw["feature_kinds"]["plan"]["dtype"] == "category"
    assert kinds(folder)["plan"] == ("categorical", True)  # HGB takes missing categories
    metrics = manifest.raw["metrics"]
    predicted = np.asarray(model.predict(training[FEATURES]))
    assert metrics["mae"] == pytest.approx(np.abs(frame["monthly_spend"] - predicted).mean())
    assert np.array_equal(served(folder, frame), predicted)


def test_lightgbm_registers_and_scores_as_itself(tmp_path: Path) -> None:
    import lightgbm

    frame = table()
    x = as_categories(frame)[FEATURES]
    model = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x, frame["churned"])
    folder = register(model, name="lgbm", models_dir=tmp_path, training_data=as_categories(frame),
                      target="churned")  # fmt: skip
    assert "lightgbm" in read_manifest(folder).raw["versions"]
    assert np.array_equal(served(folder, frame), np.asarray(model.predict_proba(x)).max(axis=1))


def test_a_model_fitted_on_an_array_needs_its_feature_names(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame = table()
    model = HistGradientBoostingClassifier(max_iter=20).fit(
        frame[NUMERIC].to_numpy(), frame["churned"]
    )
    with pytest.raises(RegistrationError, match="--features"):
        register(model, name="arr", models_dir=tmp_path)
    with pytest.raises(RegistrationError, match="takes 5 features but 2 are named"):
        register(model, name="arr", models_dir=tmp_path, features=["a", "b"])
    folder = register(model, name="arr", models_dir=tmp_path, features=NUMERIC)
    manifest = read_manifest(folder)
    assert manifest.input == "matrix"
    # Trees send a missing value down a branch: null is legal in every feature.
    assert all(nullable for _, nullable in kinds(folder).values())
    assert "feature_summary" not in manifest.raw


def test_a_linear_model_on_an_array_takes_no_gaps(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = table()
    model = LogisticRegression().fit(numeric_matrix(frame), frame["churned"])
    folder = register(model, name="lr", models_dir=tmp_path, features=NUMERIC)
    assert not any(nullable for _, nullable in kinds(folder).values())
    assert getattr(load_version(folder).scorer, "accelerated", False)


def test_refusals_name_the_fix(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = table(300)
    fitted = churn_pipeline(frame)
    cases = [
        ({"model": LogisticRegression()}, "not fitted"),
        ({"model": object()}, "has no predict"),
        ({"model": fitted, "features": ["tenure_months"]}, "leave --features out"),
        ({"model": fitted, "training_data": frame, "target": "label"}, "target column 'label'"),
        ({"model": fitted, "training_data": frame.drop(columns="plan"), "target": "churned"},
         "lacks the model's features"),
        ({"model": fitted, "target": "churned"}, "give both"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(RegistrationError, match=message):
            register(name="m", models_dir=tmp_path, **kwargs)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_a_column_an_event_cannot_carry_is_refused(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    frame = table(300)
    frame["signup"] = pd.to_datetime(frame["event_time"], unit="ms")
    model = Pipeline([
        ("prepare", ColumnTransformer([("n", "passthrough", ["hour"])], remainder="drop")),
        ("m", LogisticRegression()),
    ]).fit(frame[["hour", "signup"]], frame["churned"])  # fmt: skip
    with pytest.raises(RegistrationError, match="'signup' holds datetime64"):
        register(model, name="m", models_dir=tmp_path, training_data=frame[["hour", "signup",
                 "churned"]], target="churned")  # fmt: skip


def test_an_artifact_needing_a_missing_library_names_it(tmp_path: Path) -> None:
    # A pickle of `not_installed_lib_x.Model`, written by hand: no such module exists here.
    blob = (
        b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x13not_installed_lib_x"
        b"\x94\x8c\x05Model\x94\x93\x94."
    )
    path = tmp_path / "model.pkl"
    path.write_bytes(blob)
    with pytest.raises(RegistrationError, match="'not_installed_lib_x'"):
        register(path, name="m", models_dir=tmp_path / "models")


def test_a_manifest_from_before_kinds_loads_as_numeric_and_not_nullable(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = table(300)
    model = LogisticRegression().fit(numeric_matrix(frame), frame["churned"])
    folder = tmp_path / "old" / "1"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    (folder / "model.joblib").write_bytes(buffer.getvalue())
    import hashlib

    old = {"name": "old", "version": 1, "framework": "sklearn", "features": NUMERIC,
           "classes": ["no", "yes"], "created_at": "2026-01-01T00:00:00+00:00",
           "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(old))
    loaded = load_version(folder)
    assert loaded.manifest.task == "classification"
    assert all(s.numeric and not s.nullable for s in loaded.manifest.specs)
    assert EventDecoder(loaded.manifest.specs).plain_numeric


def test_a_worker_with_other_library_versions_logs_both(tmp_path: Path) -> None:
    frame = table(300)
    folder = register(churn_pipeline(frame), name="m", models_dir=tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["versions"]["scikit-learn"] = "0.24.2"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with structlog.testing.capture_logs() as logs:
        load_version(folder)
    (event,) = [e for e in logs if e["event"] == "library_versions_differ"]
    assert event["libraries"]["scikit-learn"]["manifest"] == "0.24.2"
    assert event["libraries"]["scikit-learn"]["installed"]


def test_register_from_a_pickle_file_and_a_csv(tmp_path: Path) -> None:
    frame = table(600)
    model_path = tmp_path / "model.pkl"
    model_path.write_bytes(pickle.dumps(churn_pipeline(frame)))
    csv = tmp_path / "train.csv"
    frame.to_csv(csv, index=False)
    folder = register(model_path, name="m", models_dir=tmp_path / "models", training_data=csv,
                      target="churned")  # fmt: skip
    assert read_manifest(folder).raw["metrics"]["accuracy"] > 0.5


def test_an_ordinal_encoded_pipeline_registered_without_data_takes_its_kinds_from_the_encoder(
    tmp_path: Path,
) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    frame = table()
    encode = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                            encoded_missing_value=-2)  # fmt: skip
    prepare = ColumnTransformer([("categories", encode, CATEGORICAL)], remainder="passthrough")
    model = Pipeline([
        ("prepare", prepare),
        ("trees", HistGradientBoostingClassifier(max_iter=30, categorical_features=[0, 1, 2])),
    ]).fit(frame[FEATURES], frame["churned"])  # fmt: skip
    folder = register(model, name="ordinal", models_dir=tmp_path)
    found = kinds(folder)
    assert {found[c][0] for c in CATEGORICAL} == {"categorical"}
    assert read_manifest(folder).raw["feature_kinds"]["plan"]["json_type"] == "string"
    assert found["device"][1]  # the encoder codes a gap: null is legal
    live = table(500, seed=9)
    live.loc[::7, "country"] = "Atlantis"
    expected = np.asarray(model.predict_proba(live[FEATURES])).max(axis=1)
    assert np.array_equal(served(folder, live), expected)
