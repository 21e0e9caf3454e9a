from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from workers.commands.train import train
from workers.model_store import (
    ModelError,
    ModelWatcher,
    check_compatible,
    list_versions,
    load_newest_good,
    load_version,
    model_folder,
    register,
)

CONTRACT_FIELDS = ("name", "version", "framework", "features", "classes", "sha256", "created_at")


def _manifest(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / "manifest.json").read_text())
    return data


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    data = _manifest(folder)
    data.update(changes)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_manifest_holds_what_the_contract_lists(trained_registry: Path) -> None:
    data = _manifest(trained_registry / "bc" / "1")
    for key in CONTRACT_FIELDS:
        assert key in data, key
    assert data["framework"] == "sklearn"
    assert data["version"] == 1
    assert data["classes"] == [0, 1]
    versions = data["versions"]
    assert isinstance(versions, dict)
    assert set(versions) == {"python", "scikit-learn", "numpy", "joblib"}
    metrics = data["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["accuracy"] > 0.9
    summary = data["feature_summary"]
    assert isinstance(summary, dict)
    assert list(summary) == data["features"]
    first = next(iter(summary.values()))
    assert {"mean", "std", "min", "max", "quantiles"} <= set(first)


def test_a_tampered_artifact_is_never_unpickled(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = registry / "bc" / "1"
    blob = (folder / "model.joblib").read_bytes()
    (folder / "model.joblib").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))

    def forbidden(*_args: object) -> None:
        raise AssertionError("joblib.load called on unverified bytes")

    monkeypatch.setattr("joblib.load", forbidden)
    with pytest.raises(ModelError, match=r"sha256 .* does not match"):
        load_version(folder)


def test_a_manifest_with_another_hash_is_refused(registry: Path) -> None:
    folder = registry / "bc" / "1"
    _rewrite_manifest(folder, sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match"):
        load_version(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"features": []}, "non-empty list"),
        ({"features": ["a", "a"]}, "unique"),
        ({"framework": "tensorflow"}, "framework"),
        ({"version": 2}, "folder is 1"),
        ({"version": 0}, "positive integer"),
    ],
)
def test_bad_manifests_are_refused(
    registry: Path, changes: dict[str, object], message: str
) -> None:
    _rewrite_manifest(registry / "bc" / "1", **changes)
    with pytest.raises(ModelError, match=message):
        load_version(registry / "bc" / "1")


def test_a_manifest_missing_fields_is_refused(registry: Path) -> None:
    data = _manifest(registry / "bc" / "1")
    del data["sha256"]
    (registry / "bc" / "1" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="lacks sha256"):
        load_version(registry / "bc" / "1")


def test_a_model_that_cannot_score_its_features_is_refused(registry: Path) -> None:
    features = _manifest(registry / "bc" / "1")["features"]
    assert isinstance(features, list)
    _rewrite_manifest(registry / "bc" / "1", features=features[:-1])
    with pytest.raises(ModelError, match="expects 30 features, manifest lists 29"):
        load_version(registry / "bc" / "1")


def test_a_version_needing_new_features_is_incompatible(registry: Path) -> None:
    serving = load_version(registry / "bc" / "1").manifest
    train("bc", registry, dataset="breast_cancer", seed=1)
    candidate = load_version(registry / "bc" / "2").manifest
    check_compatible(serving, candidate)  # same features: fine
    wine = load_version(train("bc", registry, dataset="wine")).manifest
    with pytest.raises(ModelError, match="needs features"):
        check_compatible(serving, wine)


def test_newest_good_skips_a_broken_highest_version(registry: Path) -> None:
    train("bc", registry, seed=1)
    (registry / "bc" / "2" / "model.joblib").write_bytes(b"garbage")
    with capture_logs() as logs:
        loaded = load_newest_good(registry / "bc", None)
    assert loaded.version == 1
    assert [e["event"] for e in logs] == ["model_refused"]


def test_missing_model_folder_names_the_train_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="scorestream train --name nope"):
        load_newest_good(tmp_path / "nope", None)


def test_register_numbers_versions_and_leaves_no_temp_folders(tmp_path: Path) -> None:
    def write(folder: Path, version: int) -> None:
        (folder / "manifest.json").write_text(json.dumps({"version": version}))

    assert register(tmp_path / "m", write).name == "1"
    assert register(tmp_path / "m", write).name == "2"
    assert list_versions(tmp_path / "m") == [1, 2]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]


def test_a_failed_write_registers_nothing(tmp_path: Path) -> None:
    def write(_folder: Path, _version: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        register(tmp_path / "m", write)
    assert list((tmp_path / "m").iterdir()) == []


def test_watcher_hands_over_a_newer_version_once_and_refuses_a_tampered_one(
    registry: Path,
) -> None:
    serving = load_version(registry / "bc" / "1").manifest
    watcher = ModelWatcher(registry / "bc", serving, poll_interval_s=3600)
    watcher.check_once()
    assert watcher.take_ready() is None

    train("bc", registry, seed=1)
    watcher.check_once()
    ready = watcher.take_ready()
    assert ready is not None
    assert ready.version == 2
    assert watcher.take_ready() is None
    watcher.accepted(ready.manifest)  # the loop serves it

    train("bc", registry, seed=2)
    v3 = registry / "bc" / "3" / "model.joblib"
    v3.write_bytes(v3.read_bytes() + b"tampered")
    with capture_logs() as logs:
        watcher.check_once()
        watcher.check_once()  # an unchanged refused version is not retried
    assert watcher.take_ready() is None
    assert [(e["event"], e["version"]) for e in logs] == [("model_refused", 3)]

    # Fixed in place (files rewritten): tried again and accepted.
    blob = v3.read_bytes()[: -len(b"tampered")]
    time.sleep(0.01)
    v3.write_bytes(blob)
    watcher.check_once()
    ready = watcher.take_ready()
    assert ready is not None
    assert ready.version == 3


def test_watcher_thread_polls_in_the_background(registry: Path) -> None:
    structlog.reset_defaults()
    serving = load_version(registry / "bc" / "1").manifest
    watcher = ModelWatcher(registry / "bc", serving, poll_interval_s=0.05)
    watcher.start()
    try:
        train("bc", registry, seed=3)
        deadline = time.monotonic() + 20
        ready = None
        while ready is None and time.monotonic() < deadline:
            ready = watcher.take_ready()
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert ready is not None
    assert ready.version == 2


def test_a_version_the_loop_refused_is_not_what_newer_ones_are_checked_against(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import model_store  # noqa: PLC0415

    checked: list[tuple[int, int]] = []
    real_check = model_store.check_compatible

    def recording(serving: model_store.Manifest, candidate: model_store.Manifest) -> None:
        checked.append((serving.version, candidate.version))
        real_check(serving, candidate)

    monkeypatch.setattr(model_store, "check_compatible", recording)
    serving = load_version(registry / "bc" / "1").manifest
    watcher = ModelWatcher(registry / "bc", serving, poll_interval_s=3600)
    train("bc", registry, seed=1)
    watcher.check_once()
    refused = watcher.take_ready()
    assert refused is not None
    assert refused.version == 2
    watcher.refused(refused)  # e.g. more features than the worker's --max-features
    watcher.check_once()
    assert watcher.take_ready() is None  # not offered again while its files are unchanged

    train("bc", registry, seed=2)
    watcher.check_once()
    ready = watcher.take_ready()
    assert ready is not None
    assert ready.version == 3
    assert checked == [(1, 2), (1, 3)]  # v3 against what serves (v1), not the refused v2


def test_folders_that_are_not_ascii_numbers_are_no_versions(registry: Path) -> None:
    odd = registry / "bc" / "\u00b2"  # "²": str.isdigit() says yes, int() says no
    odd.mkdir()
    (odd / "manifest.json").write_text("{}")
    (registry / "bc" / "02x").mkdir()
    assert list_versions(registry / "bc") == [1]
    assert load_newest_good(registry / "bc", None).version == 1


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden", "", "x" * 129])
def test_a_model_name_never_leaves_the_models_dir(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelError, match="not allowed"):
        train(name, models)
    assert not (tmp_path / "x").exists()
    assert not models.exists() or not any(models.iterdir())


def test_a_plain_model_name_is_one_folder_under_the_models_dir(tmp_path: Path) -> None:
    assert model_folder(tmp_path, "churn-v2.1_b") == tmp_path / "churn-v2.1_b"
