"""Cluster-level calls: readiness, topic creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

# librdkafka reports every refused connection while a broker boots; route its log lines to a
# logger that drops them so readiness polling does not flood stderr.
_QUIET = logging.getLogger("scorestream.librdkafka.quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def admin_client(bootstrap_servers: str, extra: Mapping[str, str] | None = None) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": _QUIET}
    config.update(extra or {})
    return AdminClient(config)


def live_broker_ids(bootstrap_servers: str, timeout_s: float = 2.0) -> set[int]:
    """Return the ids of the brokers the cluster metadata lists (empty if unreachable)."""
    try:
        metadata = admin_client(bootstrap_servers).list_topics(timeout=timeout_s)
    except KafkaException:
        return set()
    return set(metadata.brokers)


def cluster_id(bootstrap_servers: str, timeout_s: float = 10.0) -> str:
    metadata = admin_client(bootstrap_servers).list_topics(timeout=timeout_s)
    return str(metadata.cluster_id)


def wait_for_brokers(
    bootstrap_servers: str,
    expected_ids: set[int],
    timeout_s: float,
    check_alive: Callable[[], None] = lambda: None,
) -> float:
    """Poll until every expected broker is listed; return the seconds it took.

    `check_alive` raises if a process being waited on has died, so a crashed broker fails
    fast instead of running out the timeout.
    """
    started = time.monotonic()
    client = admin_client(bootstrap_servers)
    while True:
        check_alive()
        try:
            seen = set(client.list_topics(timeout=1.0).brokers)
        except KafkaException:
            seen = set()
        if expected_ids <= seen:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            missing = sorted(expected_ids - seen)
            raise TimeoutError(
                f"brokers {missing} not ready at {bootstrap_servers} after {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def create_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create topics (name -> partitions) and wait until each one exists."""
    client = admin_client(bootstrap_servers)
    new = [
        NewTopic(
            name,
            num_partitions=parts,
            replication_factor=replication_factor,
            config=dict(config or {}),
        )
        for name, parts in topics.items()
    ]
    futures = client.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    for future in futures.values():
        future.result(timeout=timeout_s)
