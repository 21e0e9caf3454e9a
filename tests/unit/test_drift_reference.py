"""The drift reference kept beside a version: what `register` writes, how it is read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.models import FEATURES, churn_pipeline, spend_regressor, table
from workers import drift_reference
from workers.drift_reference import REFERENCE_FILE, DriftReferenceError, decode, encode, load
from workers.model_store import read_manifest
from workers.registry import RegistrationError, register

pytestmark = pytest.mark.unit


def test_columns_round_trip_with_gaps_and_json_types_kept() -> None:
    blob = encode(
        ["x", "c", "flag"],
        [True, False, False],
        [[1.5, None, float("nan")], ["a", None, "b"], [True, 1, None]],
        "predicted_class",
        ["yes", "no", None],
    )
    reference = decode(blob)
    assert reference.rows == 3
    x = reference.columns[0]
    assert isinstance(x, np.ndarray)
    assert x[0] == 1.5
    assert np.isnan(x[1:]).all()
    assert reference.columns[1] == ["a", None, "b"]
    flags = reference.columns[2]
    assert isinstance(flags, list)
    assert flags[0] is True
    assert type(flags[1]) is int
    assert reference.scores == ["yes", "no", None]
    # Plain arrays: nothing in the file is unpickled.
    with np.load(__import__("io").BytesIO(blob), allow_pickle=False) as data:
        assert {"f0", "f1", "f2", "scores", "meta"} <= set(data.files)


def test_register_keeps_the_tail_in_order_with_scores_and_a_calibration(tmp_path: Path) -> None:
    frame = table(3000)
    folder = register(churn_pipeline(frame), name="churn", models_dir=tmp_path,
                      training_data=frame, target="churned")  # fmt: skip
    manifest = read_manifest(folder).raw
    entry = manifest["reference"]
    assert entry["rows"] == 3000
    assert entry["order"] == "original"
    assert entry["calibration"]["kind"] == "binary"
    reference = load(folder, manifest)
    assert reference is not None
    assert reference.features == tuple(FEATURES)
    tenure = reference.columns[FEATURES.index("tenure_months")]
    assert np.array_equal(tenure, frame["tenure_months"].to_numpy(), equal_nan=True)
    assert reference.columns[FEATURES.index("country")] == [
        None if pd.isna(v) else v for v in frame["country"]
    ]
    assert reference.score_kind == "positive_probability"
    assert reference.calibration is not None
    scores = np.asarray(reference.scores, dtype=np.float64)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_a_long_table_keeps_its_last_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift_reference, "REFERENCE_ROWS", 500)
    frame = table(1200)
    folder = register(spend_regressor(frame), name="spend", models_dir=tmp_path,
                      training_data=frame, target="monthly_spend")  # fmt: skip
    reference = load(folder, read_manifest(folder).raw)
    assert reference is not None
    assert reference.rows == 500
    assert reference.score_kind == "predicted_value"
    assert reference.calibration is None
    tenure = reference.columns[reference.features.index("tenure_months")]
    expected = frame["tenure_months"].to_numpy()[-500:]
    assert np.array_equal(tenure, expected, equal_nan=True)


def test_a_changed_reference_file_is_refused_and_an_old_version_has_none(tmp_path: Path) -> None:
    frame = table(600)
    folder = register(churn_pipeline(frame), name="churn", models_dir=tmp_path,
                      training_data=frame, target="churned")  # fmt: skip
    manifest = read_manifest(folder).raw
    blob = (folder / REFERENCE_FILE).read_bytes()
    (folder / REFERENCE_FILE).write_bytes(blob + b"\0")
    with pytest.raises(DriftReferenceError, match="does not match the manifest"):
        load(folder, manifest)
    older = json.loads(json.dumps(manifest))
    del older["reference"]
    assert load(folder, older) is None


def test_probabilities_are_calibrated_on_held_out_rows_when_given(tmp_path: Path) -> None:
    frame = table(2000)
    fitted, held_out = frame.iloc[:1500], frame.iloc[1500:]
    folder = register(
        churn_pipeline(fitted), name="churn", models_dir=tmp_path, training_data=fitted,
        target="churned", calibration_data=held_out,
    )  # fmt: skip
    manifest = read_manifest(folder).raw
    assert manifest["reference"]["calibration"]["rows"] == 500
    assert manifest["calibration_metrics"]["rows"] == 500
    assert manifest["metrics"]["rows"] == 1500
    with pytest.raises(RegistrationError, match="needs the target column"):
        register(churn_pipeline(fitted), name="churn", models_dir=tmp_path,
                 training_data=fitted, target="churned",
                 calibration_data=held_out.drop(columns=["churned"]))  # fmt: skip
