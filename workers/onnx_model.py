"""Score an ONNX graph (exported from PyTorch, TensorFlow, scikit-learn via skl2onnx, ...).

onnxruntime is an optional extra (`pip install 'scorestream[onnx]'`), imported only when an ONNX
model is loaded or registered. The graph takes either one float tensor of shape [rows, features]
in manifest order, or one [rows, 1] tensor per feature named as the feature (what skl2onnx makes
of a ColumnTransformer pipeline, string columns included). A classifier's probabilities are the
float output of shape [rows, classes] (named `probabilities` when there are several), in the
manifest's class order; a regressor's prediction is its first output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.core.feature_spec import FeatureSpec
from workers.core.scoring import (
    Columns,
    Label,
    Matrix,
    ScoredBatch,
    _Classes,
    as_matrix,
    regression_scored,
)

INSTALL_HINT = "pip install 'scorestream[onnx]'"

_TENSOR_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(string)": np.object_,
    "tensor(bool)": np.bool_,
}


class OnnxUnavailableError(RuntimeError):
    """onnxruntime is not installed here; the message names the fix."""


def runtime() -> Any:  # noqa: ANN401 - the onnxruntime module
    try:
        import onnxruntime  # noqa: PLC0415 - optional, only for ONNX models
    except ImportError as exc:
        raise OnnxUnavailableError(
            f"this is an ONNX model and onnxruntime is not installed: {INSTALL_HINT}"
        ) from exc
    return onnxruntime


def session(blob: bytes) -> Any:  # noqa: ANN401 - an InferenceSession
    ort = runtime()
    options = ort.SessionOptions()
    # One worker process per core is how scorestream scales; the graph gets one thread.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])


def graph_inputs(blob: bytes) -> list[tuple[str, str, list[Any]]]:
    """(name, type, shape) of each input of the graph."""
    return [(i.name, i.type, list(i.shape)) for i in session(blob).get_inputs()]


class OnnxScorer:
    def __init__(
        self,
        blob: bytes,
        specs: Sequence[FeatureSpec],
        classes: Sequence[Label],
        regression: bool,
    ) -> None:
        self.session = session(blob)
        self.specs = tuple(specs)
        self.features = tuple(spec.name for spec in specs)
        self.regression = regression
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        self.per_feature = len(inputs) > 1 or (names == [self.features[0]] and len(specs) == 1)
        if self.per_feature:
            missing = sorted(set(self.features) - set(names))
            extra = sorted(set(names) - set(self.features))
            if missing or extra:
                raise ValueError(
                    f"the graph's inputs {names} are not the features {list(self.features)}"
                )
            self.input_types = {i.name: _TENSOR_TYPES.get(i.type) for i in inputs}
        else:
            (only,) = inputs
            self.input_name = only.name
            self.input_type = _TENSOR_TYPES.get(only.type, np.float32)
            width = only.shape[-1] if only.shape else None
            if isinstance(width, int) and width != len(self.features):
                raise ValueError(f"the graph takes {width} features, the manifest lists "
                                 f"{len(self.features)}")  # fmt: skip
        outputs = self.session.get_outputs()
        self.output = _pick_output(outputs, regression)
        self.accelerated = False
        if not regression:
            if not classes:
                raise ValueError("an ONNX classifier needs its classes in the manifest")
            self._classes: _Classes | None = _Classes(classes)
        else:
            self._classes = None

    def feeds(self, batch: Matrix | Columns) -> dict[str, npt.NDArray[Any]]:
        if not self.per_feature:
            return {self.input_name: as_matrix(batch).astype(self.input_type)}
        columns = batch if isinstance(batch, Columns) else _as_columns(batch)
        feeds = {}
        for spec, column in zip(self.specs, columns.data, strict=True):
            kind = self.input_types[spec.name]
            if kind is np.object_:
                values = np.array(
                    ["" if v is None else str(v) for v in column.tolist()], dtype=object
                )
            else:
                values = column.astype(kind or np.float32)
            feeds[spec.name] = values.reshape(-1, 1)
        return feeds

    def run(self, batch: Matrix | Columns) -> npt.NDArray[Any]:
        """onnxruntime's own output for these rows (the probabilities or predictions)."""
        (result,) = self.session.run([self.output], self.feeds(batch))
        if isinstance(result, list):  # ZipMap: one {class: probability} per row
            if self._classes is None:
                raise ValueError("a regressor's graph returned a map per row")
            keys = list(result[0]) if result else []
            by_str = {str(k): k for k in keys}
            order = [by_str[c] for c in self._classes.class_keys]
            result = np.array([[row[k] for k in order] for row in result], dtype=np.float64)
        return np.asarray(result)

    def score(self, batch: Matrix | Columns) -> ScoredBatch:
        output = self.run(batch).astype(np.float64)
        if self._classes is None:
            return regression_scored(output)
        if output.ndim != 2 or output.shape[1] != len(self._classes.classes):
            raise ValueError(
                f"the graph's output {self.output!r} has shape {output.shape}, not "
                f"[rows, {len(self._classes.classes)}] probabilities"
            )
        return self._classes.scored(output)


def _as_columns(matrix: Matrix) -> Columns:
    return Columns(tuple(matrix[:, j] for j in range(matrix.shape[1])), len(matrix))


def _pick_output(outputs: Sequence[Any], regression: bool) -> str:
    if regression:
        return str(outputs[0].name)
    named = [o for o in outputs if o.name in {"probabilities", "output_probability"}]
    if named:
        return str(named[0].name)
    floats = [o for o in outputs if o.type in {"tensor(float)", "tensor(double)"}]
    if not floats:
        raise ValueError(f"no float output among {[o.name for o in outputs]} to read as "
                         "probabilities")  # fmt: skip
    return str(floats[-1].name)
