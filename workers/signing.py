"""Signed model manifests: ed25519 (a key pair; the workers hold only the public key) or
HMAC-SHA256 (one shared secret, taken from the environment, never from a flag).

The signature covers the manifest's exact bytes; the manifest holds the sha256 of
model.joblib, so a valid signature vouches for the model bytes too. It sits beside them in
`manifest.sig`: {"algorithm": "ed25519" | "hmac-sha256", "signature": base64}."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `scorestream --help` should not load cryptography
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE = "manifest.sig"
HMAC_KEY_VARIABLE = "SCORESTREAM_MODEL_HMAC_KEY"
ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"


class SignatureError(Exception):
    """A manifest's signature is missing, malformed or wrong, or a key cannot be read."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """The keys a worker trusts; with none configured, signatures are not required."""

    public_key: Ed25519PublicKey | None = None
    hmac_key: bytes | None = None

    @property
    def required(self) -> bool:
        return self.public_key is not None or self.hmac_key is not None

    def verify(self, manifest_bytes: bytes, signature_text: str | None, where: str) -> None:
        """Raise SignatureError unless a configured key signed exactly these bytes."""
        if not self.required:
            return
        if signature_text is None:
            raise SignatureError(f"{where}: no {SIGNATURE}, and a verification key is set")
        algorithm, signature = _parse(signature_text, where)
        if algorithm == ED25519 and self.public_key is not None:
            from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

            try:
                self.public_key.verify(signature, manifest_bytes)
            except InvalidSignature:
                raise SignatureError(f"{where}: the ed25519 signature does not match") from None
            return
        if algorithm == HMAC_SHA256 and self.hmac_key is not None:
            expected = hmac.new(self.hmac_key, manifest_bytes, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, signature):
                raise SignatureError(f"{where}: the HMAC-SHA256 signature does not match")
            return
        raise SignatureError(f"{where}: signed with {algorithm}, for which no key is configured")


@dataclass(frozen=True, slots=True)
class Signer:
    private_key: Ed25519PrivateKey | None = None
    hmac_key: bytes | None = None

    @property
    def enabled(self) -> bool:
        return self.private_key is not None or self.hmac_key is not None

    def sign(self, manifest_bytes: bytes) -> str:
        """The manifest.sig text for these bytes (ed25519 when both keys are given)."""
        if self.private_key is not None:
            algorithm, signature = ED25519, self.private_key.sign(manifest_bytes)
        elif self.hmac_key is not None:
            algorithm = HMAC_SHA256
            signature = hmac.new(self.hmac_key, manifest_bytes, hashlib.sha256).digest()
        else:
            raise SignatureError("no signing key")
        encoded = base64.b64encode(signature).decode()
        return json.dumps({"algorithm": algorithm, "signature": encoded}) + "\n"


def _parse(text: str, where: str) -> tuple[str, bytes]:
    try:
        data = json.loads(text)
        algorithm, encoded = data["algorithm"], data["signature"]
        return str(algorithm), base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{where}: {SIGNATURE} is malformed ({exc})") from exc


def _hmac_key(environ: Mapping[str, str]) -> bytes | None:
    text = environ.get(HMAC_KEY_VARIABLE)
    if text is None:
        return None
    if len(text) < 16:
        raise SignatureError(f"{HMAC_KEY_VARIABLE} is shorter than 16 characters: too weak")
    return text.encode()


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the {what} {path}: {exc.strerror}") from exc


def load_verifier(public_key_path: Path | None, environ: Mapping[str, str]) -> Verifier:
    """From --model-verify-key (a PEM ed25519 public key) and SCORESTREAM_MODEL_HMAC_KEY."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    public = None
    if public_key_path is not None:
        try:
            key = serialization.load_pem_public_key(_read_pem(public_key_path, "public key"))
        except ValueError as exc:
            raise SignatureError(f"{public_key_path} is not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{public_key_path} is not an ed25519 public key")
        public = key
    return Verifier(public, _hmac_key(environ))


def load_signer(private_key_path: Path | None, environ: Mapping[str, str]) -> Signer:
    """From --sign-key (a PEM ed25519 private key, unencrypted) and SCORESTREAM_MODEL_HMAC_KEY."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    private = None
    if private_key_path is not None:
        try:
            key = serialization.load_pem_private_key(
                _read_pem(private_key_path, "private key"), password=None
            )
        except (ValueError, TypeError) as exc:
            raise SignatureError(
                f"{private_key_path} is not an unencrypted PEM key: {exc}"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{private_key_path} is not an ed25519 private key")
        private = key
    return Signer(private, _hmac_key(environ))
