"""The model registry on disk: list, verify (sha256 before unpickling), load, register, watch.

Layout: `<models-dir>/<name>/<version>/model.joblib` and `manifest.json`, version a positive
integer. A pickled model is code, so its bytes are hashed and compared with the manifest before
joblib sees them, and the bytes that were hashed are the bytes that are loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import structlog

from workers.core.events import ClassLabelError
from workers.core.feature_spec import FeatureSpec, FeatureSpecError, specs_from_manifest
from workers.core.frame import FrameScorer
from workers.core.scoring import (
    Columns,
    Label,
    Matrix,
    RiverClassifierScorer,
    Scorer,
    SklearnClassifierScorer,
    SklearnRegressorScorer,
    columns_from_rows,
)
from workers.library_versions import installed_versions
from workers.signing import SIGNATURE, SignatureError, Verifier

MANIFEST = "manifest.json"
ARTIFACT = "model.joblib"
ONNX_ARTIFACT = "model.onnx"
FRAMEWORKS = ("sklearn", "river", "onnx")
TASKS = ("classification", "regression")
# How the model takes a batch: a float matrix in manifest order, or a DataFrame.
INPUTS = ("matrix", "frame")
REQUIRED_FIELDS = ("name", "version", "framework", "features", "sha256", "created_at")

NO_KEYS = Verifier()  # no verification key: signatures are not required

log = structlog.get_logger("scorestream.model_store")


class ModelError(Exception):
    """A model version cannot be served; the message says why."""


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: int
    framework: str
    features: tuple[str, ...]
    classes: tuple[Label, ...]
    sha256: str
    raw: Mapping[str, Any] = field(repr=False)
    task: str = "classification"
    specs: tuple[FeatureSpec, ...] = ()
    input: str = "matrix"

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def artifact(self) -> str:
        return ONNX_ARTIFACT if self.framework == "onnx" else ARTIFACT

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Manifest:
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise ModelError(f"{where}: manifest lacks {', '.join(missing)}")
        features = data["features"]
        if (
            not isinstance(features, list)
            or not features
            or not all(isinstance(f, str) and f for f in features)
            or len(set(features)) != len(features)
        ):
            raise ModelError(f"{where}: features must be a non-empty list of unique names")
        if data["framework"] not in FRAMEWORKS:
            raise ModelError(f"{where}: framework {data['framework']!r} is not one of {FRAMEWORKS}")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelError(f"{where}: version must be a positive integer")
        task = data.get("task", "classification")
        if task not in TASKS:
            raise ModelError(f"{where}: task {task!r} is not one of {TASKS}")
        model_input = data.get("input", "matrix")
        if model_input not in INPUTS:
            raise ModelError(f"{where}: input {model_input!r} is not one of {INPUTS}")
        try:
            specs = specs_from_manifest(features, data.get("feature_kinds"))
        except FeatureSpecError as exc:
            raise ModelError(f"{where}: {exc}") from exc
        if model_input == "matrix" and any(spec.json_type == "string" for spec in specs):
            raise ModelError(f"{where}: a model that takes a matrix takes no strings")
        return cls(
            name=str(data["name"]),
            version=version,
            framework=str(data["framework"]),
            features=tuple(features),
            classes=tuple(data.get("classes") or ()),
            sha256=str(data["sha256"]),
            raw=dict(data),
            task=task,
            specs=specs,
            input=model_input,
        )

    def training_means(self) -> list[float]:
        summary = self.raw.get("feature_summary") or {}
        return [float(summary.get(f, {}).get("mean", 0.0)) for f in self.features]

    def probe_rows(self) -> Matrix | Columns:
        """Rows a loaded model must score: the one recorded at registration, else the
        training means (what manifests before `probe` had)."""
        probe = self.raw.get("probe")
        if isinstance(probe, dict) and all(f in probe for f in self.features):
            row = tuple(probe[f] for f in self.features)
            if self.specs and all(s.numeric and not s.nullable for s in self.specs):
                return np.array([row], dtype=np.float64)
            return columns_from_rows([row], [s.numeric for s in self.specs])
        means = np.array([self.training_means()], dtype=np.float64)
        if all(s.numeric and not s.nullable for s in self.specs):
            return means
        return columns_from_rows([tuple(means[0])], [True] * len(self.features))


@dataclass(frozen=True, slots=True)
class LoadedModel:
    manifest: Manifest
    scorer: Scorer
    path: Path

    @property
    def version(self) -> int:
        return self.manifest.version


_VERSION_NAME = re.compile(r"[0-9]+")


def list_versions(model_dir: Path) -> list[int]:
    """Versions present under a model folder, ascending (only integer folders with a manifest)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if _VERSION_NAME.fullmatch(child.name)
        and int(child.name) > 0
        and (child / MANIFEST).is_file()
    )


def read_manifest(version_dir: Path) -> Manifest:
    return parse_manifest(_read_manifest_bytes(version_dir), version_dir)


def _read_manifest_bytes(version_dir: Path) -> bytes:
    try:
        return (version_dir / MANIFEST).read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{version_dir / MANIFEST} does not exist") from exc
    except OSError as exc:
        raise ModelError(f"{version_dir / MANIFEST}: {exc.strerror}") from exc


def parse_manifest(raw: bytes, version_dir: Path) -> Manifest:
    where = str(version_dir / MANIFEST)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"{where} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{where} is not a JSON object")
    manifest = Manifest.from_json(data, where)
    if str(manifest.version) != version_dir.name:
        raise ModelError(f"{where} says version {manifest.version}, folder is {version_dir.name}")
    return manifest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_signature(version_dir: Path, manifest_bytes: bytes, verifier: Verifier) -> None:
    """With a verification key configured, the manifest must carry a valid signature."""
    if not verifier.required:
        return
    try:
        signature: str | None = (version_dir / SIGNATURE).read_text()
    except FileNotFoundError:
        signature = None
    except OSError as exc:
        raise ModelError(f"{version_dir / SIGNATURE}: {exc.strerror}") from exc
    try:
        verifier.verify(manifest_bytes, signature, str(version_dir))
    except SignatureError as exc:
        raise ModelError(f"{exc}; refusing to load it") from exc


def load_version(version_dir: Path, verifier: Verifier = NO_KEYS) -> LoadedModel:
    """Verify and load one version; raise ModelError (never unpickle unverified bytes).

    Order: the manifest's signature (when a key is configured) over the very bytes that are
    then parsed, the artifact's sha256 against that manifest over the very bytes that are
    then unpickled."""
    manifest_bytes = _read_manifest_bytes(version_dir)
    verify_signature(version_dir, manifest_bytes, verifier)
    manifest = parse_manifest(manifest_bytes, version_dir)
    artifact = version_dir / manifest.artifact
    try:
        blob = artifact.read_bytes()
    except OSError as exc:
        raise ModelError(f"{artifact}: {exc.strerror}") from exc
    actual = sha256_hex(blob)
    if actual != manifest.sha256:
        raise ModelError(
            f"{artifact}: sha256 {actual} does not match the manifest's "
            f"{manifest.sha256}; refusing to load it"
        )
    _log_version_differences(manifest)
    if manifest.framework == "onnx":
        from workers.onnx_model import OnnxScorer, OnnxUnavailableError  # noqa: PLC0415

        try:
            scorer: Scorer = OnnxScorer(blob, manifest.specs, manifest.classes, manifest.regression)
        except OnnxUnavailableError as exc:
            raise ModelError(f"{artifact}: {exc}") from exc
        except Exception as exc:  # onnxruntime's refusal of a graph can be anything
            raise ModelError(f"{artifact}: onnxruntime cannot run it: {exc!r}") from exc
    else:
        try:
            model = joblib.load(io.BytesIO(blob))
        except Exception as exc:  # an unpickling failure can raise anything
            raise ModelError(
                f"{artifact}: cannot be loaded: {exc!r}{_version_hint(manifest)}"
            ) from exc
        scorer = make_scorer(manifest, model)
    _probe(manifest, scorer, version_dir)
    return LoadedModel(manifest, scorer, version_dir)


def _differences(manifest: Manifest) -> dict[str, tuple[str, str | None]]:
    """Libraries whose installed version differs from the one the artifact was saved with."""
    recorded = manifest.raw.get("versions")
    if not isinstance(recorded, dict):
        return {}
    installed = installed_versions(list(recorded))
    return {
        lib: (str(saved), installed.get(lib))
        for lib, saved in recorded.items()
        if installed.get(lib) != str(saved)
    }


def _log_version_differences(manifest: Manifest) -> None:
    differences = _differences(manifest)
    if differences:
        log.warning(
            "library_versions_differ",
            model=manifest.name,
            version=manifest.version,
            libraries={
                lib: {"manifest": saved, "installed": now}
                for lib, (saved, now) in differences.items()
            },
        )


def _version_hint(manifest: Manifest) -> str:
    differences = _differences(manifest)
    if not differences:
        return ""
    said = ", ".join(
        f"{lib} {saved} (installed: {now or 'none'})" for lib, (saved, now) in differences.items()
    )
    return f"; it was saved with {said}: install those versions where the worker runs"


def make_scorer(manifest: Manifest, model: Any) -> Scorer:  # noqa: ANN401, C901
    where = f"{manifest.name} v{manifest.version}"
    if manifest.input == "frame":
        if not hasattr(model, "predict" if manifest.regression else "predict_proba"):
            raise ModelError(f"{where}: the model has no {_method(manifest)}")
        try:
            return FrameScorer(model, manifest.specs, regression=manifest.regression)
        except ClassLabelError as exc:
            raise ModelError(f"{where}: {exc}") from exc
    if manifest.regression:
        if not hasattr(model, "predict"):
            raise ModelError(f"{where}: not a fitted regressor with predict")
        _check_width(manifest, model)
        return SklearnRegressorScorer(model, manifest.features)
    if manifest.framework == "river":
        if not hasattr(model, "predict_proba_one"):
            raise ModelError(f"{manifest.name} v{manifest.version}: river model is no classifier")
        if not manifest.classes:
            raise ModelError(f"{manifest.name} v{manifest.version}: river manifest lacks classes")
        return RiverClassifierScorer(model, manifest.features, manifest.classes)
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise ModelError(
            f"{manifest.name} v{manifest.version}: not a fitted classifier with predict_proba"
        )
    _check_width(manifest, model)
    try:
        return SklearnClassifierScorer(model, manifest.features)
    except ClassLabelError as exc:
        raise ModelError(f"{manifest.name} v{manifest.version}: {exc}") from exc


def _method(manifest: Manifest) -> str:
    return "predict" if manifest.regression else "predict_proba"


def _check_width(manifest: Manifest, model: Any) -> None:  # noqa: ANN401
    n_features = getattr(model, "n_features_in_", len(manifest.features))
    if n_features != len(manifest.features):
        raise ModelError(
            f"{manifest.name} v{manifest.version}: model expects {n_features} features, "
            f"manifest lists {len(manifest.features)}"
        )


def _probe(manifest: Manifest, scorer: Scorer, where: Path) -> None:
    """Score the manifest's probe row: a model that loads but cannot score is refused now."""
    row = manifest.probe_rows()
    try:
        result = scorer.score(row)
    except Exception as exc:  # the model's own failure, whatever it is
        raise ModelError(f"{where}: scoring a probe row failed: {exc!r}") from exc
    if len(result.scores) != 1 or not all(math.isfinite(s) for s in result.scores):
        raise ModelError(f"{where}: scoring a probe row gave {result.scores}")


def check_compatible(serving: Manifest, candidate: Manifest) -> None:
    """Refuse a version that would reject events the serving version accepts."""
    if candidate.name != serving.name:
        raise ModelError(f"version {candidate.version} is model {candidate.name!r}")
    missing = sorted(set(candidate.features) - set(serving.features))
    if missing:
        raise ModelError(
            f"version {candidate.version} needs features {missing} that version "
            f"{serving.version} does not; events valid today would be dead-lettered"
        )
    before = {spec.name: spec for spec in serving.specs}
    for spec in candidate.specs:
        old = before[spec.name]
        if old.json_type != spec.json_type or (old.nullable and not spec.nullable):
            raise ModelError(
                f"version {candidate.version} takes feature {spec.name!r} as "
                f"{_described(spec)}, version {serving.version} as {_described(old)}; events "
                "valid today would be dead-lettered"
            )


def _described(spec: FeatureSpec) -> str:
    return f"{spec.json_type}{' or null' if spec.nullable else ''}"


def resolve(model_dir: Path, pinned: int | None) -> Path:
    """The version folder to serve first: the pinned one or the highest."""
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir} is no model folder: train one with "
            f"`scorestream train --name {model_dir.name} --models-dir {model_dir.parent}`"
        )
    if pinned is not None:
        return model_dir / str(pinned)
    versions = list_versions(model_dir)
    if not versions:
        raise ModelError(
            f"{model_dir} has no versions: train one with "
            f"`scorestream train --name {model_dir.name} --models-dir {model_dir.parent}`"
        )
    return model_dir / str(versions[-1])


def load_newest_good(
    model_dir: Path, pinned: int | None, verifier: Verifier = NO_KEYS
) -> LoadedModel:
    """Load the pinned version, or the highest that verifies (refusing broken ones on the way)."""
    if pinned is not None:
        return load_version(resolve(model_dir, pinned), verifier)
    resolve(model_dir, None)  # raises the helpful error when there is nothing at all
    errors = []
    for version in reversed(list_versions(model_dir)):
        try:
            return load_version(model_dir / str(version), verifier)
        except ModelError as exc:
            log.error("model_refused", model_dir=str(model_dir), version=version, reason=str(exc))
            errors.append(str(exc))
    raise ModelError(f"no loadable version in {model_dir}: " + "; ".join(errors))


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def model_folder(models_dir: Path, name: str) -> Path:
    """Where a model's versions live: `name` is one folder under `models_dir`, never a path
    out of it (`../x`, `/etc`, `a/b`)."""
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelError(
            f"model name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(up to 128, starting with a letter or digit); it names one folder under "
            "--models-dir"
        )
    return models_dir / name


def register(model_dir: Path, write: Callable[[Path, int], None]) -> Path:
    """Create the next version folder atomically: `write(tmp, version)` fills it, then rename."""
    model_dir.mkdir(parents=True, exist_ok=True)
    while True:
        versions = list_versions(model_dir)
        version = (versions[-1] if versions else 0) + 1
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write(tmp, version)
            try:
                tmp.rename(model_dir / str(version))
            except OSError:
                # Another trainer took that number first: try the next one.
                if (model_dir / str(version)).exists():
                    continue
                raise
            return model_dir / str(version)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)


class ModelWatcher:
    """Poll for newer versions in a background thread; hand a verified one over between batches.

    Loading (hashing, unpickling, the probe row) happens on this thread, never on the hot path.
    A refused version is not tried again until its files change.
    """

    def __init__(
        self,
        model_dir: Path,
        serving: Manifest,
        poll_interval_s: float,
        verifier: Verifier = NO_KEYS,
    ) -> None:
        self.model_dir = model_dir
        self.verifier = verifier
        self.poll_interval_s = poll_interval_s
        self._serving = serving
        self._ready: LoadedModel | None = None
        self._refused: dict[int, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def take_ready(self) -> LoadedModel | None:
        """Return a newer verified version once, or None; called by the loop between batches.
        The loop answers with `accepted` or `refused`: only an accepted version is serving."""
        if self._ready is None:  # cheap unlocked check on the hot path
            return None
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def accepted(self, manifest: Manifest) -> None:
        """The loop serves this version now: newer ones are checked against it."""
        self._serving = manifest

    def refused(self, loaded: LoadedModel) -> None:
        """The loop could not serve this version: not offered again until its files change,
        and newer versions are still checked against the one that is serving."""
        self._refused[loaded.manifest.version] = _stamp(loaded.path)

    def check_once(self) -> None:
        with self._lock:
            pending = self._ready
        current = pending.manifest if pending is not None else self._serving
        for version in reversed(list_versions(self.model_dir)):
            if version <= current.version:
                return
            version_dir = self.model_dir / str(version)
            stamp = _stamp(version_dir)
            if self._refused.get(version) == stamp:
                continue
            try:
                loaded = load_version(version_dir, self.verifier)
                check_compatible(current, loaded.manifest)
            except ModelError as exc:
                self._refused[version] = stamp
                log.error(
                    "model_refused",
                    model=current.name,
                    version=version,
                    serving_version=current.version,
                    reason=str(exc),
                )
                continue
            with self._lock:
                self._ready = loaded
            log.info(
                "model_loaded",
                model=loaded.manifest.name,
                version=version,
                sha256=loaded.manifest.sha256,
                compiled_scoring=getattr(loaded.scorer, "accelerated", False),
            )
            return

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_once()
            except Exception:  # a bug here must not kill the worker that keeps serving
                log.exception("model_watch_failed", model_dir=str(self.model_dir))


def _stamp(version_dir: Path) -> tuple[int, ...]:
    """When the version's files last changed: a refused version is retried once they do."""
    stamps = []
    for name in (MANIFEST, ARTIFACT, ONNX_ARTIFACT, SIGNATURE):
        try:
            stamps.append((version_dir / name).stat().st_mtime_ns)
        except OSError:
            stamps.append(0)
    return tuple(stamps)
