"""Shared fixtures: a real Kafka broker for the session and unique topics per test."""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from workers.kafka_io.admin import create_topics, live_broker_ids
from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout
from workers.local_kafka.runtime import BrokerSetupError, default_cache_dir

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = "integration" if "integration" in item.path.parts else "unit"
        item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """`main()` configures structlog globally; undo it so no test logs to a closed capture."""
    yield
    structlog.reset_defaults()


@dataclass(frozen=True)
class KafkaUnderTest:
    bootstrap_servers: str
    # Set when this test session started the broker itself (through the CLI's code).
    layout: ClusterLayout | None
    cluster_id: str | None


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and no Kafka broker: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


def free_base_port(span: int) -> int:
    """A base port with `span` free ports after it, picked at random to avoid collisions.

    Below Linux's ephemeral range (32768 and up): a port checked free there can be taken by an
    outgoing connection before the broker binds it (a 3-node start failed that way)."""
    for _ in range(200):
        base = random.randrange(20000, 32768 - span, 2)
        if all(cluster.port_free(base + i) for i in range(span)):
            return base
    raise RuntimeError("no free port range found")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaUnderTest]:
    given = os.environ.get("SCORESTREAM_BOOTSTRAP_SERVERS")
    if given:
        if not live_broker_ids(given, timeout_s=10):
            _unavailable(f"SCORESTREAM_BOOTSTRAP_SERVERS={given} does not answer")
        yield KafkaUnderTest(given, None, None)
        return
    layout = ClusterLayout(1, free_base_port(2), tmp_path_factory.mktemp("kafka"))
    cache = Path(os.environ.get("SCORESTREAM_CACHE_DIR") or default_cache_dir())
    try:
        started = cluster.start(layout, cache, os.environ.get("KAFKA_HOME"), detach=False)
    except BrokerSetupError as exc:
        cluster.stop(layout)
        _unavailable(str(exc))
        return
    try:
        yield KafkaUnderTest(started.bootstrap_servers, layout, started.cluster_id)
    finally:
        cluster.stop(layout)


TopicFactory = Callable[..., str]


@pytest.fixture
def new_topic(kafka: KafkaUnderTest, request: pytest.FixtureRequest) -> TopicFactory:
    """Create a topic whose name is unique to this test and return its name."""

    def make(partitions: int = 4, suffix: str = "") -> str:
        stem = re.sub(r"[^a-zA-Z0-9._-]", "-", request.node.name)[:60]
        name = f"t-{stem}{suffix}-{uuid.uuid4().hex[:8]}"
        create_topics(kafka.bootstrap_servers, {name: partitions})
        return name

    return make


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with model `bc` v1: logistic regression on the breast-cancer data set."""
    from workers.commands.train import train  # noqa: PLC0415

    root = tmp_path_factory.mktemp("models")
    train("bc", root, dataset="breast_cancer", estimator="logistic_regression", seed=0)
    return root


@pytest.fixture
def registry(trained_registry: Path, tmp_path: Path) -> Path:
    """A private copy of the trained registry that a test may change."""
    import shutil  # noqa: PLC0415

    copy = tmp_path / "models"
    shutil.copytree(trained_registry, copy)
    return copy


@pytest.fixture(params=["at-least-once", "exactly-once"])
def guarantee(request: pytest.FixtureRequest) -> str:
    """Run the test once per --processing-guarantee."""
    return str(request.param)
