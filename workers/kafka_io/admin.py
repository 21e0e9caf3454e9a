"""Cluster-level calls: readiness, topic creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

# librdkafka reports every refused connection while a broker boots; route its log lines to a
# logger that drops them so readiness polling does not flood stderr.
_QUIET = logging.getLogger("scorestream.librdkafka.quiet")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def admin_client(bootstrap_servers: str, extra: Mapping[str, Any] | None = None) -> AdminClient:
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": _QUIET}
    config.update(extra or {})
    return AdminClient(config)


def list_topics(
    bootstrap_servers: str, client_config: Mapping[str, Any] | None, timeout_s: float
) -> ClusterMetadata:
    """Cluster metadata. On failure the client's error callbacks are served before raising,
    so an error_cb in `client_config` learns why (the call itself only says it timed out)."""
    client = admin_client(bootstrap_servers, client_config)
    try:
        return client.list_topics(timeout=timeout_s)
    except KafkaException:
        client.poll(0.5)
        raise


def live_broker_ids(
    bootstrap_servers: str, timeout_s: float = 2.0, extra: Mapping[str, str] | None = None
) -> set[int]:
    """Return the ids of the brokers the cluster metadata lists (empty if unreachable)."""
    try:
        metadata = admin_client(bootstrap_servers, extra).list_topics(timeout=timeout_s)
    except KafkaException:
        return set()
    return set(metadata.brokers)


def cluster_id(bootstrap_servers: str, timeout_s: float = 10.0) -> str:
    metadata = admin_client(bootstrap_servers).list_topics(timeout=timeout_s)
    return str(metadata.cluster_id)


def wait_for_brokers(
    node_addresses: Mapping[int, str],
    timeout_s: float,
    check_alive: Callable[[], None] = lambda: None,
    client_config: Mapping[str, str] | None = None,
) -> float:
    """Poll until every node answers on its own address and lists all nodes; return seconds.

    Each node is asked directly by a fresh client bootstrapped on that node alone: the
    cluster's metadata keeps listing a node that was just killed until its session times out,
    so asking any node would call a restarting one ready too early. `check_alive` raises if a
    process being waited on has died, so a crashed broker fails fast.
    """
    started = time.monotonic()
    expected = set(node_addresses)
    waiting = dict(node_addresses)
    while True:
        check_alive()
        for node_id, address in list(waiting.items()):
            if expected <= live_broker_ids(address, timeout_s=1.0, extra=client_config):
                del waiting[node_id]
        if not waiting:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(
                f"nodes {sorted(waiting)} not ready at {', '.join(waiting.values())} "
                f"after {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def create_topics(  # noqa: PLR0913 - the topics, their settings and the client's
    bootstrap_servers: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = -1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Create topics (name -> partitions) and wait until the metadata lists each one with a
    leader for every partition. A topic that already exists counts as created: between a
    listing and a creation another client may have made it."""
    client = admin_client(bootstrap_servers, client_config)
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
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    _wait_listed(client, topics, timeout_s)


def _wait_listed(client: AdminClient, topics: Mapping[str, int], timeout_s: float) -> None:
    """The controller has the topics; wait until the broker's metadata shows them led, so the
    next client (a worker checking its topics) finds them."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = client.list_topics(timeout=timeout_s).topics
        if all(
            name in listed
            and listed[name].error is None
            and len(listed[name].partitions) >= 1
            and all(p.leader >= 0 for p in listed[name].partitions.values())
            for name in topics
        ):
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topics {sorted(topics)} not listed after {timeout_s:.0f} s")
        time.sleep(0.05)


def create_missing_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
    client_config: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create those of `topics` that do not exist yet (an existing one is left as it is)."""
    existing = list_topics(bootstrap_servers, client_config, timeout_s).topics
    missing = {name: parts for name, parts in topics.items() if name not in existing}
    if missing:
        create_topics(bootstrap_servers, missing, config=config, client_config=client_config)
    return sorted(missing)
