"""The reference a version's drift checks and estimates compare with, kept beside its model.

`reference.npz` holds a bounded sample of the data the version was registered with, in its
original order (the last REFERENCE_ROWS rows: consecutive, so the checks can see the stream's
cycles at their own pace), and the model's served score on each of those rows. The manifest's
`reference` entry names the file with its sha256 (the signed manifest vouches for it) and holds
the probability calibration that performance estimation (CBPE) uses. The file is plain arrays
(no pickle): numbers as float64 with NaN for a gap, categories as codes into a JSON list.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import structlog

from workers.core.calibrated_drift import category_key
from workers.core.estimation import Calibration
from workers.core.monitor import ReferenceLookup, VersionReference
from workers.model_store import (
    MANIFEST,
    NO_KEYS,
    ModelError,
    parse_manifest,
    sha256_hex,
    verify_signature,
)
from workers.signing import Verifier

REFERENCE_FILE: Final = "reference.npz"
# About two weeks of a stream of one event a minute: its daily and weekly cycles.
REFERENCE_ROWS: Final = 20_000
SCORE_KINDS: Final = ("positive_probability", "predicted_value", "predicted_class")

log = structlog.get_logger("scorestream.monitor")


class DriftReferenceError(Exception):
    """A reference file that does not match its manifest; the message names the fix."""


Column = npt.NDArray[np.float64] | list[Any]


@dataclass(frozen=True, slots=True)
class DriftReference:
    features: tuple[str, ...]
    numeric: tuple[bool, ...]
    columns: tuple[Column, ...]  # numbers: float64 with NaN gaps; categories: values or None
    score_kind: str | None
    scores: Column | None
    calibration: Calibration | None

    @property
    def rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def numeric_matrix(self) -> npt.NDArray[np.float64]:
        """The numeric features side by side (for the multivariate check)."""
        picked = [c for c, n in zip(self.columns, self.numeric, strict=True) if n]
        if not picked:
            return np.zeros((self.rows, 0))
        return np.stack([np.asarray(c, dtype=np.float64) for c in picked], axis=1)


def encode(
    features: Sequence[str],
    numeric: Sequence[bool],
    columns: Sequence[Sequence[Any]],
    score_kind: str | None,
    scores: Sequence[Any] | None,
) -> bytes:
    """The npz bytes of a reference (columns oldest first)."""
    arrays: dict[str, Any] = {}
    categories: dict[str, list[Any]] = {}
    for j, (name, is_number, column) in enumerate(zip(features, numeric, columns, strict=True)):
        if is_number:
            arrays[f"f{j}"] = _numbers(column)
            continue
        arrays[f"f{j}"], categories[name] = _codes(column)
    meta: dict[str, Any] = {"features": list(features), "numeric": list(numeric),
                            "categories": categories, "score_kind": score_kind}  # fmt: skip
    if scores is not None and score_kind is not None:
        if score_kind == "predicted_class":
            arrays["scores"], meta["score_categories"] = _codes(scores)
        else:
            arrays["scores"] = _numbers(scores)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _numbers(column: Sequence[Any]) -> npt.NDArray[np.float64]:
    return np.array([np.nan if v is None else float(v) for v in column], dtype=np.float64)


def _codes(column: Sequence[Any]) -> tuple[npt.NDArray[np.int32], list[Any]]:
    values: dict[tuple[str, Any], int] = {}
    codes = np.empty(len(column), dtype=np.int32)
    for i, value in enumerate(column):
        if value is None:
            codes[i] = -1
            continue
        codes[i] = values.setdefault(category_key(value), len(values))
    return codes, [value for _, value in values]


def decode(blob: bytes, calibration: Calibration | None = None) -> DriftReference:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        features, numeric = meta["features"], meta["numeric"]
        columns: list[Column] = []
        for j, (name, is_number) in enumerate(zip(features, numeric, strict=True)):
            array = data[f"f{j}"]
            columns.append(array.astype(np.float64) if is_number
                           else _values(array, meta["categories"][name]))  # fmt: skip
        scores: Column | None = None
        if "scores" in data:
            scores = (
                _values(data["scores"], meta["score_categories"])
                if meta["score_kind"] == "predicted_class"
                else data["scores"].astype(np.float64)
            )
    return DriftReference(tuple(features), tuple(numeric), tuple(columns), meta["score_kind"],
                          scores, calibration)  # fmt: skip


def _values(codes: npt.NDArray[np.int32], values: list[Any]) -> list[Any]:
    return [None if c < 0 else values[c] for c in codes.tolist()]


def manifest_entry(blob: bytes, rows: int, calibration: Calibration | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": REFERENCE_FILE, "sha256": sha256_hex(blob), "rows": rows,
                             "order": "original"}  # fmt: skip
    if calibration is not None:
        entry["calibration"] = calibration.to_json()
    return entry


def load(version_dir: Path, manifest: Mapping[str, Any]) -> DriftReference | None:
    """The version's reference, checked against the manifest's sha256; None for a version
    registered without one (older, or without data)."""
    entry = manifest.get("reference")
    if not isinstance(entry, Mapping):
        return None
    path = version_dir / str(entry.get("file", REFERENCE_FILE))
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DriftReferenceError(f"{path}: {exc.strerror}; register the version again") from exc
    actual = sha256_hex(blob)
    if actual != entry.get("sha256"):
        raise DriftReferenceError(
            f"{path}: sha256 {actual} does not match the manifest's {entry.get('sha256')}; "
            "refusing to use it (register the version again)"
        )
    calibration = entry.get("calibration")
    return decode(blob, None if calibration is None else Calibration.from_json(calibration))


def tail(rows: int) -> slice:
    """The rows a reference keeps of a table of `rows`: the last REFERENCE_ROWS, in order."""
    return slice(max(0, rows - REFERENCE_ROWS), rows)


class ModelReferences(ReferenceLookup):
    """The references of a model folder's versions, read when a version is first seen: its
    manifest (signature checked when a key is configured) and reference file (sha256)."""

    def __init__(self, model_dir: Path, model_name: str, verifier: Verifier = NO_KEYS) -> None:
        self.model_dir, self.model_name, self.verifier = model_dir, model_name, verifier

    def find(self, model_name: str, model_version: int) -> VersionReference | None:
        if model_name != self.model_name:
            return None
        version_dir = self.model_dir / str(model_version)
        try:
            manifest_bytes = (version_dir / MANIFEST).read_bytes()
            verify_signature(version_dir, manifest_bytes, self.verifier)
            manifest = parse_manifest(manifest_bytes, version_dir)
            reference = load(version_dir, manifest.raw)
        except (OSError, ModelError, DriftReferenceError, ValueError) as exc:
            # Its labels still count; only the checks before them are off for this version.
            log.warning("reference_unavailable", model=model_name, version=model_version,
                        reason=str(exc))  # fmt: skip
            return None
        if reference is None:
            log.info("reference_absent", model=model_name, version=model_version,
                     hint="register it with --training-data to check its predictions")  # fmt: skip
            return None
        log.info("reference_loaded", model=model_name, version=model_version,
                 rows=reference.rows, scores=reference.score_kind,
                 calibrated=reference.calibration is not None)  # fmt: skip
        classes = manifest.classes
        positive = str(classes[1]) if len(classes) == 2 else None
        return VersionReference(reference.calibration, reference.score_kind, reference.scores,
                                positive)  # fmt: skip
