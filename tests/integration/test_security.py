"""TLS and SASL/SCRAM on a real broker started by `scorestream broker start --tls --sasl`'s
code: the workers run over SASL_SSL with the client.conf it writes; a wrong password or an
untrusted certificate gets a clear reason and a bounded retry, and no secret reaches a log."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI, free_base_port
from tests.integration.workers import WorkerProcess, metrics_text
from workers.commands.train import train
from workers.kafka_io.admin import create_topics, live_broker_ids
from workers.kafka_io.roundtrip import produce_all, read_to_end
from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout
from workers.local_kafka.runtime import BrokerSetupError, default_cache_dir
from workers.model_store import load_version
from workers.settings import parse_key_value
from workers.signing import HMAC_KEY_VARIABLE, load_signer


@dataclass
class SecureKafka:
    bootstrap_servers: str
    client_conf: Path
    config: dict[str, str]
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    layout = ClusterLayout(1, free_base_port(2), tmp_path_factory.mktemp("secure"), tls=True,
                           sasl=True)  # fmt: skip
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    try:
        started = cluster.start(layout, cache, os.environ.get("KAFKA_HOME"), detach=False)
    except BrokerSetupError as exc:
        cluster.stop(layout)
        if IN_CI:
            pytest.fail(f"CI=true and the TLS/SASL broker did not start: {exc}", pytrace=False)
        pytest.skip(f"TLS/SASL broker unavailable: {exc}")
    try:
        assert started.client_config_path is not None
        conf = started.client_config_path
        config = dict(
            parse_key_value(line)
            for line in conf.read_text().splitlines()
            if line and not line.startswith("#")
        )
        stored = json.loads((layout.data_dir / "security" / "secrets.json").read_text())
        yield SecureKafka(started.bootstrap_servers, conf, config, stored)
    finally:
        cluster.stop(layout)


def test_client_conf_reaches_the_broker_and_nothing_else_does(secure_kafka: SecureKafka) -> None:
    assert secure_kafka.config["security.protocol"] == "SASL_SSL"
    assert secure_kafka.config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert stat.S_IMODE(secure_kafka.client_conf.stat().st_mode) == 0o600
    bootstrap = secure_kafka.bootstrap_servers
    assert live_broker_ids(bootstrap, timeout_s=10, extra=secure_kafka.config) == {1}
    # Plain text, or TLS without a login, is refused.
    assert live_broker_ids(bootstrap, timeout_s=3) == set()
    tls_only = {"security.protocol": "SSL",
                "ssl.ca.location": secure_kafka.config["ssl.ca.location"]}  # fmt: skip
    assert live_broker_ids(bootstrap, timeout_s=3, extra=tls_only) == set()


def test_infer_and_monitor_run_over_sasl_ssl_and_no_secret_leaks(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    """Secrets from the file, the environment and the model key reach no log line, no metric
    and no dead letter header; with --redact-features neither do the events' values."""
    run = uuid.uuid4().hex[:8]
    t = {k: f"sec-{run}.{k}" for k in ("in", "out", "dlq", "labels", "alerts")}
    bootstrap, config = secure_kafka.bootstrap_servers, secure_kafka.config
    create_topics(bootstrap, {t["in"]: 2, t["out"]: 2, t["labels"]: 2, t["alerts"]: 1},
                  client_config=config)  # fmt: skip
    hmac_key = f"model-key-{uuid.uuid4().hex}"
    # The password comes from the environment, the rest from the file.
    env = {HMAC_KEY_VARIABLE: hmac_key, "SCORESTREAM_KAFKA_SASL_PASSWORD": config["sasl.password"]}
    file_without_password = tmp_path / "client.conf"
    file_without_password.write_text("".join(
        f"{k}={v}\n" for k, v in config.items() if k != "sasl.password"))  # fmt: skip
    models = tmp_path / "models"
    train("bc", models, signer=load_signer(None, env))  # signed: the worker requires it
    model = str(models / "bc")
    conf = ["--bootstrap-servers", bootstrap, "--kafka-config-file", str(file_without_password)]
    ports = free_base_port(2)
    infer = WorkerProcess("infer", *conf, "--model", model, "--input-topic", t["in"],
                          "--output-topic", t["out"], "--dlq-topic", t["dlq"],
                          "--group-id", f"sec-{run}", "--log-interval-s", "1",
                          "--processing-guarantee", "exactly-once", "--redact-features",
                          "--metrics-port", str(ports), env=env)  # fmt: skip
    monitor = WorkerProcess("monitor", *conf, "--predictions-topic", t["out"],
                            "--labels-topic", t["labels"], "--alerts-topic", t["alerts"],
                            "--group-id", f"sec-m-{run}", "--state-dir", str(tmp_path / "state"),
                            "--log-interval-s", "0.5", "--metrics-port", str(ports + 1),
                            env=env)  # fmt: skip
    producer = WorkerProcess("produce", *conf, "--model", model, "--features-topic", t["in"],
                             "--labels-topic", t["labels"], "--events", "500", "--rate", "1000",
                             "--label-delay-min-s", "0", "--label-delay-max-s", "0.5",
                             "--prefix", f"sec-{run}", env=env)  # fmt: skip
    # A poison event whose feature value is personal: it must stay in the DLQ's value only.
    names = load_version(models / "bc" / "1").manifest.features
    features = {**dict.fromkeys(names, 1.0), names[0]: "jane-doe"}
    poison = json.dumps({"event_id": "p1", "features": features})
    produce_all(bootstrap, t["in"], [(b"p1", poison.encode())], config)
    try:
        assert producer.proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 60
        joined = 0
        while joined < 500 and time.monotonic() < deadline:
            summaries = monitor.events("monitor_summary")
            joined = summaries[-1]["joined"] if summaries else 0
            time.sleep(0.5)
        predictions = read_to_end(bootstrap, t["out"], config)
        dead = read_to_end(bootstrap, t["dlq"], config)
        metrics = [metrics_text(port) for port in (ports, ports + 1)]
    finally:
        codes = [w.stop()[0] for w in (infer, monitor)]
    assert codes == [0, 0]
    assert len({r.key for r in predictions}) == len(predictions) == 500
    assert joined == 500
    [letter] = dead
    assert letter.value == poison.encode()  # the original bytes, kept
    headers = json.dumps({k: v.decode() for k, v in letter.headers.items()})
    logged = "\n".join(json.dumps(line) for w in (infer, monitor, producer) for line in w.lines)
    assert "sasl.password" in logged  # the setting is named in the started line ...
    secrets = [*secure_kafka.secrets.values(), hmac_key]
    for text in (logged, headers, *metrics):
        for secret in secrets:
            assert secret not in text  # ... but never its value, nor any other secret
        assert "jane-doe" not in text


@pytest.mark.parametrize(
    "case",
    [
        ("sasl.password=wrong-password", "authentication", "sasl.password"),
        ("ssl.ca.location=UNTRUSTED", "certificate", "ssl.ca.location"),
    ],
    ids=["wrong-password", "untrusted-ca"],
)
def test_a_wrong_password_or_an_untrusted_certificate_is_named_and_retried_slowly(
    secure_kafka: SecureKafka, trained_registry: Path, tmp_path: Path, case: tuple[str, str, str]
) -> None:
    override, expected_reason, expected_fix = case
    if override.endswith("UNTRUSTED"):
        # A CA of its own that never signed the broker's certificate.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(tmp_path / "other.key"), "-out", str(tmp_path / "other.pem"),
                        "-days", "1", "-subj", "/CN=someone else"],
                       check=True, capture_output=True)  # fmt: skip
        override = f"ssl.ca.location={tmp_path / 'other.pem'}"
    run = uuid.uuid4().hex[:8]
    conf = [
        "--bootstrap-servers",
        secure_kafka.bootstrap_servers,
        "--kafka-config-file",
        str(secure_kafka.client_conf),
        "--kafka-config",
        override,
    ]
    workers = [
        WorkerProcess("infer", *conf, "--model", str(trained_registry / "bc"),
                      "--input-topic", f"bad-{run}", "--group-id", f"bad-{run}"),
        WorkerProcess("monitor", *conf, "--predictions-topic", f"bad-{run}.p",
                      "--labels-topic", f"bad-{run}.l", "--group-id", f"bad-m-{run}",
                      "--state-dir", str(tmp_path / "state")),
    ]  # fmt: skip
    try:
        firsts = [w.wait_for("kafka_unreachable", timeout_s=60) for w in workers]
        time.sleep(12)
        assert [w.proc.poll() for w in workers] == [None, None]  # waiting for a fix
    finally:
        codes = [w.stop()[0] for w in workers]
    assert codes == [0, 0]
    for worker, first in zip(workers, firsts, strict=True):
        assert expected_reason in first["reason"].lower(), first
        assert expected_fix in first["fix"], first
        retries = worker.events("kafka_unreachable")
        # Backoff 1, 2, 4, 8 s...: a handful of attempts in the time, and no storm of lines.
        assert 2 <= len(retries) <= 6
        assert [r["retry_in_s"] for r in retries[:3]] == [1.0, 2.0, 4.0][: len(retries[:3])]
        assert len(worker.lines) < 40, worker.lines[-10:]
        if "wrong-password" in override:
            assert all("wrong-password" not in json.dumps(line) for line in worker.lines)
