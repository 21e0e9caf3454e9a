"""Find Java and the Kafka jars: an unpacked distribution (KAFKA_HOME) or a Maven-built cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA = 17

POM_TEMPLATE = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.scorestream.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


class BrokerSetupError(Exception):
    """The local broker cannot be set up; the message names the fix."""


@dataclass(frozen=True, slots=True)
class KafkaRuntime:
    java: Path
    classpath: str
    source: str  # "KAFKA_HOME=..." or "cache:..." for the start log


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scorestream"


def parse_java_major(version_output: str) -> int | None:
    """Read the major version from `java -version` output (`"17.0.15"`, `"1.8.0_392"`)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:  # 1.8 style
        return int(match.group(2))
    return major


def find_java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.exists() else shutil.which("java")
    if java is None:
        raise BrokerSetupError(
            f"no Java found: Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+; install it "
            "(Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    result = subprocess.run(
        [java, "-version"], capture_output=True, text=True, check=False, timeout=60
    )
    major = parse_java_major(result.stderr + result.stdout)
    if major is None or major < MIN_JAVA:
        raise BrokerSetupError(
            f"{java} is Java {major or 'of unknown version'}; Kafka {KAFKA_VERSION} needs Java "
            f"{MIN_JAVA}+: install openjdk-17 and put it first on PATH or set JAVA_HOME"
        )
    return Path(java)


def resolve_runtime(cache_dir: Path, kafka_home: str | None) -> KafkaRuntime:
    """Return Java and a classpath, downloading jars into cache_dir once if needed."""
    java = find_java()
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerSetupError(
                f"KAFKA_HOME={kafka_home} has no libs/kafka_2.13-*.jar: point it at an unpacked "
                "Apache Kafka distribution, or unset it to use the Maven-built cache"
            )
        return KafkaRuntime(java, f"{libs}/*", f"KAFKA_HOME={kafka_home}")
    libs = ensure_jars(cache_dir)
    return KafkaRuntime(java, f"{libs}/*", f"cache:{libs}")


def ensure_jars(cache_dir: Path) -> Path:
    """Copy Kafka's runtime jars into the cache once; a complete cache needs no network."""
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerSetupError(
            f"no jar cache at {libs}, no Maven to build it and no KAFKA_HOME: install Maven "
            "(Debian: apt-get install maven) or set KAFKA_HOME to an unpacked Kafka distribution"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Download into a scratch folder and rename, so an interrupted download never looks complete.
    with tempfile.TemporaryDirectory(dir=libs.parent, prefix=".download-") as scratch:
        scratch_dir = Path(scratch)
        (scratch_dir / "pom.xml").write_text(
            POM_TEMPLATE.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION)
        )
        out = scratch_dir / "libs"
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(scratch_dir / "pom.xml"),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={out}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if result.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
            tail = (result.stdout + result.stderr)[-2000:]
            raise BrokerSetupError(
                f"Maven could not fetch Kafka {KAFKA_VERSION} jars (exit {result.returncode}); "
                f"check network access to the Maven repository or set KAFKA_HOME.\n{tail}"
            )
        (out / ".complete").write_text(KAFKA_VERSION + "\n")
        if libs.exists():
            shutil.rmtree(libs)
        out.rename(libs)
    return libs
