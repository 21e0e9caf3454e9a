"""ONNX graphs made here (skl2onnx, onnx.helper), registered and scored as onnxruntime runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tests.models import CATEGORICAL, FEATURES, NUMERIC, rows_of, table
from workers.core.scoring import columns_from_rows
from workers.model_store import ModelError, load_version, read_manifest
from workers.registry import RegistrationError, register

pytestmark = pytest.mark.unit


def linear_graph(weights: list[float], bias: float) -> bytes:
    """y = x @ w + b: what a one-layer net exported from PyTorch looks like."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [len(weights), 1], weights)
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(weights)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def test_a_network_regressor_scores_as_onnxruntime_runs_it(tmp_path: Path) -> None:
    graph = tmp_path / "net.onnx"
    graph.write_bytes(linear_graph([0.5, -1.25, 2.0], 0.75))
    folder = register(graph, name="net", models_dir=tmp_path / "models", features=["a", "b", "c"])
    manifest = read_manifest(folder)
    assert (manifest.framework, manifest.task, manifest.input) == ("onnx", "regression", "matrix")
    assert (folder / "model.onnx").read_bytes() == graph.read_bytes()
    rows = np.random.default_rng(0).normal(0, 5, (257, 3))
    session = onnxruntime.InferenceSession(graph.read_bytes(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": rows.astype(np.float32)})
    scored = load_version(folder).scorer.score(rows)
    assert scored.scores == expected[:, 0].astype(np.float64).tolist()
    assert scored.probabilities is None


def test_a_converted_pipeline_with_string_inputs_scores_as_onnxruntime(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = table(800)
    frame = frame.dropna(subset=CATEGORICAL)  # string gaps are not converted to ONNX
    prepare = ColumnTransformer([
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), NUMERIC),
        ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
    ])  # fmt: skip
    model = Pipeline([("prepare", prepare), ("classify", LogisticRegression(max_iter=500))])
    model.fit(frame[FEATURES], frame["churned"])
    inputs = [(c, FloatTensorType([None, 1])) for c in NUMERIC]
    inputs += [(c, StringTensorType([None, 1])) for c in CATEGORICAL]
    graph = to_onnx(model, initial_types=inputs, options={"zipmap": False}, target_opset=17)
    path = tmp_path / "churn.onnx"
    path.write_bytes(graph.SerializeToString())
    folder = register(path, name="churn", models_dir=tmp_path / "models", training_data=frame,
                      target="churned")  # fmt: skip
    manifest = read_manifest(folder)
    assert manifest.task == "classification"
    assert manifest.classes == ("no", "yes")
    assert manifest.raw["feature_kinds"]["country"]["kind"] == "categorical"
    live = table(300, seed=5).dropna(subset=CATEGORICAL)
    loaded = load_version(folder)
    rows = rows_of(live, list(manifest.features))
    batch = columns_from_rows(rows, [s.numeric for s in manifest.specs])
    session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    feeds = {c: live[[c]].to_numpy(dtype=np.float32) for c in NUMERIC}
    feeds |= {c: live[[c]].to_numpy(dtype=object) for c in CATEGORICAL}
    _, probabilities = session.run(None, feeds)
    expected = probabilities.astype(np.float64).max(axis=1)
    assert loaded.scorer.score(batch).scores == expected.tolist()
    assert set(manifest.features) == set(FEATURES)


def test_without_onnxruntime_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = tmp_path / "net.onnx"
    graph.write_bytes(linear_graph([1.0], 0.0))
    folder = register(graph, name="net", models_dir=tmp_path / "models", features=["a"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"pip install 'scorestream\[onnx\]'"):
        load_version(folder)
    with pytest.raises(RegistrationError, match=r"scorestream\[onnx\]"):
        register(graph, name="net", models_dir=tmp_path / "models", features=["a"])


def test_a_tampered_graph_is_refused_before_a_session_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = tmp_path / "net.onnx"
    graph.write_bytes(linear_graph([1.0, 2.0], 0.0))
    folder = register(graph, name="net", models_dir=tmp_path / "models", features=["a", "b"])
    (folder / "model.onnx").write_bytes(linear_graph([9.0, 9.0], 0.0))
    built: list[bytes] = []
    monkeypatch.setattr("workers.onnx_model.session", built.append)
    with pytest.raises(ModelError, match="sha256"):
        load_version(folder)
    assert built == []
