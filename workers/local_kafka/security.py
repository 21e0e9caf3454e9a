"""TLS and SASL/SCRAM for the local cluster: a CA and a broker certificate made with openssl,
random passwords kept in the data dir (owner-only), and the client settings that reach it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.local_kafka.layout import security_protocol
from workers.local_kafka.runtime import BrokerSetupError

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"  # the brokers' own identity between themselves
CLIENT_USER = "scorestream"  # what client.conf logs in as
CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class SecurityMaterial:
    """Everything a secured node and its clients need; paths under the data dir."""

    folder: Path
    tls: bool
    sasl: bool
    keystore_password: str
    admin_password: str
    client_password: str

    @property
    def protocol(self) -> str:
        return security_protocol(tls=self.tls, sasl=self.sasl)

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore_path(self) -> Path:
        return self.folder / "broker.p12"

    def client_config(self) -> dict[str, str]:
        """librdkafka settings for a client of this cluster."""
        config = {"security.protocol": self.protocol}
        if self.tls:
            config["ssl.ca.location"] = str(self.ca_path)
        if self.sasl:
            config |= {"sasl.mechanism": MECHANISM, "sasl.username": CLIENT_USER,
                       "sasl.password": self.client_password}  # fmt: skip
        return config

    def scram_format_args(self) -> list[str]:
        """StorageTool arguments that store both users' credentials when a node is formatted."""
        if not self.sasl:
            return []
        users = ((ADMIN_USER, self.admin_password), (CLIENT_USER, self.client_password))
        return [
            arg
            for user, password in users
            for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={password}]")
        ]

    def server_lines(self, listener: str) -> list[str]:
        """server.properties lines for the client listener named `listener`."""
        lines = []
        if self.tls:
            lines += [
                "ssl.keystore.type=PKCS12",
                f"ssl.keystore.location={self.keystore_path}",
                f"ssl.keystore.password={self.keystore_password}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.ca_path}",
            ]
        if self.sasl:
            lines += [
                f"sasl.enabled.mechanisms={MECHANISM}",
                f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
                (
                    f"listener.name.{listener.lower()}.{MECHANISM.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{ADMIN_USER}" password="{self.admin_password}";'
                ),
            ]
        return lines


def _private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords or keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise BrokerSetupError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _make_certificates(folder: Path, keystore_password: str) -> None:
    """A CA, and a broker certificate it signs for 127.0.0.1 and localhost, in a PKCS12
    keystore (Kafka's broker side) and PEM (the CA, for librdkafka clients)."""
    if shutil.which("openssl") is None:
        raise BrokerSetupError("--tls needs openssl on PATH (Debian: apt-get install openssl)")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", str(CA_DAYS), "-subj", "/CN=scorestream local CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
             "-out", "broker.csr", "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    (folder / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "broker.pem", "-days", str(CA_DAYS),
             "-extfile", "broker.ext", cwd=folder)  # fmt: skip
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
             "-certfile", "ca.pem", "-name", "broker", "-out", "broker.p12",
             "-passout", f"pass:{keystore_password}", cwd=folder)  # fmt: skip
    for key in ("ca.key", "broker.key", "broker.p12"):
        (folder / key).chmod(0o600)


def ensure_material(data_dir: Path, *, tls: bool, sasl: bool) -> SecurityMaterial:
    """Create (first start) or read (later starts) the cluster's certificates and passwords,
    and write DATA_DIR/client.conf."""
    folder = data_dir / "security"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    stored = folder / "secrets.json"
    if stored.exists():
        values = json.loads(stored.read_text())
    else:
        # Hex: no character that needs quoting in JAAS, the StorageTool or a KEY=VALUE file.
        names = ("keystore_password", "admin_password", "client_password")
        values = {name: secrets.token_hex(16) for name in names}
        _private(stored, json.dumps(values) + "\n")
    material = SecurityMaterial(folder, tls, sasl, **values)
    if tls and not material.keystore_path.exists():
        _make_certificates(folder, material.keystore_password)
    lines = ["# Client settings for this local cluster (librdkafka names); secret: owner-only."]
    lines += [f"{k}={v}" for k, v in material.client_config().items()]
    _private(data_dir / "client.conf", "\n".join(lines) + "\n")
    return material
