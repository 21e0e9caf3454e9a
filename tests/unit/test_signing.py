"""Signed manifests: with a verification key configured, only versions signed by it load;
tampering with the model bytes, the manifest or the signature is refused before unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workers.cli import main
from workers.commands.train import train
from workers.model_store import ModelError, ModelWatcher, load_newest_good, load_version
from workers.signing import (
    HMAC_KEY_VARIABLE,
    SIGNATURE,
    SignatureError,
    load_signer,
    load_verifier,
)

HMAC_KEY = "a-shared-secret-of-32-characters"


def write_keys(folder: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = write_keys(folder, "signing")
    _, other_public = write_keys(folder, "other")
    return private, public, other_public


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path, Path]) -> Path:
    """Version 1 of model bc, signed with ed25519."""
    return train("bc", tmp_path, signer=load_signer(keys[0], {}))


def test_a_signed_version_loads_with_its_key_and_without_any(
    signed: Path, keys: tuple[Path, Path, Path]
) -> None:
    assert json.loads((signed / SIGNATURE).read_text())["algorithm"] == "ed25519"
    assert load_version(signed, load_verifier(keys[1], {})).version == 1
    assert load_version(signed).version == 1  # no key configured: signatures not required


def test_another_key_an_unsigned_version_and_a_garbled_signature_are_refused(
    signed: Path, keys: tuple[Path, Path, Path]
) -> None:
    with pytest.raises(ModelError, match="signature does not match"):
        load_version(signed, load_verifier(keys[2], {}))
    sig = (signed / SIGNATURE).read_text()
    (signed / SIGNATURE).write_text("{not json")
    with pytest.raises(ModelError, match="malformed"):
        load_version(signed, load_verifier(keys[1], {}))
    data = json.loads(sig)
    data["signature"] = data["signature"][:-4] + (
        "AAAA" if data["signature"][-4:] != "AAAA" else "BBBB"
    )
    (signed / SIGNATURE).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="does not match"):
        load_version(signed, load_verifier(keys[1], {}))
    (signed / SIGNATURE).unlink()
    with pytest.raises(ModelError, match=f"no {SIGNATURE}"):
        load_version(signed, load_verifier(keys[1], {}))


def test_a_tampered_manifest_is_refused_even_when_it_matches_tampered_model_bytes(
    signed: Path, keys: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = load_verifier(keys[1], {})
    # New model bytes: the signed manifest's sha256 no longer matches them.
    model = joblib.load(signed / "model.joblib")
    joblib.dump(model, signed / "model.joblib", compress=3)
    with pytest.raises(ModelError, match="sha256"):
        load_version(signed, verifier)
    # The attacker updates the manifest's sha256 to match: now the signature fails.
    from workers.model_store import sha256_hex  # noqa: PLC0415

    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["sha256"] = sha256_hex((signed / "model.joblib").read_bytes())
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with monkeypatch.context() as patched:

        def forbidden(*_args: object) -> None:
            raise AssertionError("joblib.load called before the signature was checked")

        patched.setattr("joblib.load", forbidden)
        with pytest.raises(ModelError, match="signature does not match"):
            load_version(signed, verifier)
    assert load_version(signed).version == 1  # without a key, only the sha256 is checked


def test_hmac_signatures_need_the_same_key(tmp_path: Path) -> None:
    env = {HMAC_KEY_VARIABLE: HMAC_KEY}
    folder = train("bc", tmp_path, signer=load_signer(None, env))
    assert json.loads((folder / SIGNATURE).read_text())["algorithm"] == "hmac-sha256"
    assert load_version(folder, load_verifier(None, env)).version == 1
    wrong = {HMAC_KEY_VARIABLE: HMAC_KEY.upper()}
    with pytest.raises(ModelError, match="HMAC-SHA256 signature does not match"):
        load_version(folder, load_verifier(None, wrong))


def test_an_ed25519_signature_needs_an_ed25519_key(signed: Path) -> None:
    with pytest.raises(ModelError, match="no key is configured"):
        load_version(signed, load_verifier(None, {HMAC_KEY_VARIABLE: HMAC_KEY}))


def test_bad_keys_are_named(tmp_path: Path, keys: tuple[Path, Path, Path]) -> None:
    with pytest.raises(SignatureError, match="shorter than 16"):
        load_verifier(None, {HMAC_KEY_VARIABLE: "short"})
    with pytest.raises(SignatureError, match=r"not an ed25519 public key|not a PEM public key"):
        load_verifier(keys[0], {})  # a private key where the public one belongs
    with pytest.raises(SignatureError, match="cannot read"):
        load_verifier(tmp_path / "missing.pem", {})


def test_newest_good_and_the_watcher_skip_unsigned_versions(
    signed: Path, keys: tuple[Path, Path, Path]
) -> None:
    verifier = load_verifier(keys[1], {})
    model_dir = signed.parent
    train("bc", model_dir.parent)  # version 2, unsigned
    assert load_newest_good(model_dir, None, verifier).version == 1
    watcher = ModelWatcher(model_dir, load_version(signed, verifier).manifest, 60, verifier)
    watcher.check_once()
    assert watcher.take_ready() is None  # v2 refused, v1 keeps serving
    train("bc", model_dir.parent, signer=load_signer(keys[0], {}))  # version 3, signed
    watcher.check_once()
    ready = watcher.take_ready()
    assert ready is not None
    assert ready.version == 3


def test_train_signs_and_infer_refuses_an_unsigned_model(
    tmp_path: Path, keys: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    argv = ["train", "--name", "bc", "--models-dir", str(models)]
    assert main([*argv, "--sign-key", str(keys[0])], {}) == 0
    assert (models / "bc" / "1" / SIGNATURE).exists()
    assert main(argv, {}) == 0  # v2 unsigned
    (models / "bc" / "1" / SIGNATURE).unlink()  # and v1 loses its signature
    code = main(["infer", "--model", str(models / "bc"), "--model-verify-key", str(keys[1]),
                 "--bootstrap-servers", "127.0.0.1:1"], {})  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "no loadable version" in err
    assert f"no {SIGNATURE}" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "--features-topic", "features"],
        ["produce", "--events", "1"],
    ],
    ids=["monitor", "produce"],
)
def test_monitor_and_produce_verify_the_model_as_infer_does(
    tmp_path: Path, keys: tuple[Path, Path, Path], argv: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """An unsigned version is refused before it is unpickled, by the key in the environment
    (HMAC) and by --model-verify-key alike; the commands then stop with the reason."""
    models = tmp_path / "models"
    assert main(["train", "--name", "bc", "--models-dir", str(models)], {}) == 0  # unsigned
    common = [*argv, "--model", str(models / "bc"), "--bootstrap-servers", "127.0.0.1:1"]
    assert main(common, {HMAC_KEY_VARIABLE: HMAC_KEY}) == 1
    assert f"no {SIGNATURE}" in capsys.readouterr().err
    assert main([*common, "--model-verify-key", str(keys[1])], {}) == 1
    assert f"no {SIGNATURE}" in capsys.readouterr().err
