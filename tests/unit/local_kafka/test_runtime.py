from __future__ import annotations

from pathlib import Path

import pytest

from workers.local_kafka import runtime
from workers.local_kafka.runtime import BrokerSetupError, parse_java_major


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("garbage", None),
    ],
)
def test_java_major_version_is_read_from_java_version_output(
    output: str, major: int | None
) -> None:
    assert parse_java_major(output) == major


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(BrokerSetupError, match=r"Java 17.*JAVA_HOME"):
        runtime.find_java()


def test_old_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\"' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(BrokerSetupError, match=r"Java 11.*needs Java 17"):
        runtime.find_java()


def test_no_maven_no_cache_no_kafka_home_names_all_three_fixes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(BrokerSetupError, match=r"no jar cache.*Maven.*KAFKA_HOME"):
        runtime.ensure_jars(tmp_path)


def test_complete_cache_is_reused_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    libs = tmp_path / f"kafka-{runtime.KAFKA_VERSION}" / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("x")
    monkeypatch.setattr("shutil.which", lambda _name: None)
    assert runtime.ensure_jars(tmp_path) == libs


def test_kafka_home_without_jars_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(runtime, "find_java", lambda: Path("/usr/bin/java"))
    with pytest.raises(BrokerSetupError, match=r"KAFKA_HOME=.*no libs"):
        runtime.resolve_runtime(tmp_path / "cache", str(tmp_path))


def test_kafka_home_with_jars_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "find_java", lambda: Path("/usr/bin/java"))
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-4.4.0.jar").write_bytes(b"")
    found = runtime.resolve_runtime(tmp_path / "cache", str(tmp_path))
    assert found.classpath == f"{tmp_path}/libs/*"
    assert found.source.startswith("KAFKA_HOME=")
