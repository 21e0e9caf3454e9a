from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from workers.kafka_io.clients import fix_for
from workers.local_kafka.layout import ClusterLayout, server_properties
from workers.local_kafka.security import ensure_material


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize(
    ("tls", "sasl", "protocol"),
    [
        (False, False, "PLAINTEXT"),
        (True, False, "SSL"),
        (False, True, "SASL_PLAINTEXT"),
        (True, True, "SASL_SSL"),
    ],
)
def test_the_client_listener_is_named_after_its_protocol(
    tmp_path: Path, tls: bool, sasl: bool, protocol: str
) -> None:
    layout = ClusterLayout(1, 19092, tmp_path, tls=tls, sasl=sasl)
    props = properties(server_properties(layout, layout.nodes[0]))
    assert layout.protocol == protocol
    assert props["listeners"].startswith(f"{protocol}://127.0.0.1:19092,")
    assert props["inter.broker.listener.name"] == protocol
    assert props["listener.security.protocol.map"] == f"CONTROLLER:PLAINTEXT,{protocol}:{protocol}"


def test_tls_and_sasl_material_is_made_once_and_kept_private(tmp_path: Path) -> None:
    material = ensure_material(tmp_path, tls=True, sasl=True)
    again = ensure_material(tmp_path, tls=True, sasl=True)
    assert again == material  # the same passwords and certificates on a restart
    secrets = json.loads((tmp_path / "security" / "secrets.json").read_text())
    assert set(secrets) == {"keystore_password", "admin_password", "client_password"}
    for private in ("security/secrets.json", "security/ca.key", "security/broker.p12",
                    "client.conf"):  # fmt: skip
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600, private
    # The broker certificate is signed by the CA and names 127.0.0.1.
    folder = tmp_path / "security"
    verified = subprocess.run(["openssl", "verify", "-CAfile", "ca.pem", "broker.pem"],
                              cwd=folder, capture_output=True, text=True, check=False)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    argv = ["openssl", "x509", "-in", "broker.pem", "-noout", "-text"]
    text = subprocess.run(argv, cwd=folder, capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text
    conf = properties((tmp_path / "client.conf").read_text())
    assert conf == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": str(folder / "ca.pem"),
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "scorestream",
        "sasl.password": secrets["client_password"],
    }  # fmt: skip
    assert material.scram_format_args() == [
        "--add-scram", f"SCRAM-SHA-512=[name=admin,password={secrets['admin_password']}]",
        "--add-scram", f"SCRAM-SHA-512=[name=scorestream,password={secrets['client_password']}]",
    ]  # fmt: skip
    lines = properties("\n".join(material.server_lines("SASL_SSL")))
    assert lines["ssl.keystore.location"] == str(folder / "broker.p12")
    jaas = lines["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert f'password="{secrets["admin_password"]}"' in jaas


def test_sasl_alone_makes_no_certificates(tmp_path: Path) -> None:
    material = ensure_material(tmp_path, tls=False, sasl=True)
    assert not (tmp_path / "security" / "ca.pem").exists()
    assert material.client_config()["security.protocol"] == "SASL_PLAINTEXT"
    assert "ssl.ca.location" not in material.client_config()


AUTH_FAILED = (
    "SASL authentication error: Authentication failed during authentication due to invalid "
    "credentials with SASL mechanism SCRAM-SHA-512"
)
UNTRUSTED = "sasl_ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: certificate verify failed"


@pytest.mark.parametrize(
    ("reason", "names"),
    [
        (AUTH_FAILED, "sasl.password"),
        (UNTRUSTED, "ssl.ca.location"),
        ("Failed to get metadata: Local: Broker transport failure", "--bootstrap-servers"),
    ],
)
def test_the_fix_follows_the_reason(reason: str, names: str) -> None:
    assert names in fix_for(reason)
