"""Run scorestream workers as real processes and read what they produced."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from prometheus_client.parser import text_string_to_metric_families

from workers.core.partitioning import partition_of
from workers.kafka_io.admin import admin_client
from workers.kafka_io.roundtrip import Received, consume_exact


class WorkerProcess:
    """`scorestream <args>` in a subprocess, its JSON log lines collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[dict[str, Any]] = []
        self._new: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *args, "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "non_json_output", "text": raw.rstrip()}
            self.lines.append(line)
            self._new.put(line)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def wait_for(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        found = self.events(name)
        if found:
            return found[0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self._new.empty():
                break
            try:
                line = self._new.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.get("event") == name:
                return line
        tail = "\n".join(json.dumps(x) for x in self.lines[-20:])
        raise AssertionError(f"no {name!r} log line within {timeout_s} s; last lines:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> tuple[int, float]:
        """Signal the worker; return its exit code and how long it took to exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            tail = "\n".join(json.dumps(x) for x in self.lines[-30:])
            raise AssertionError(
                f"still running {timeout_s} s after signal {sig}; last lines:\n{tail}"
            ) from None
        self._reader.join(timeout=5)
        return code, time.monotonic() - started


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0, settle_s: float = 2.0
) -> list[Received]:
    """Read a topic from the start (read_committed) until `expected` records, then settle_s more."""
    group = f"reader-{uuid.uuid4().hex}"
    return consume_exact(bootstrap, topic, group, expected, timeout_s, settle_s=settle_s)


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset of one partition (negative when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
    finally:
        consumer.close()
    return int(tp.offset)


def set_topic_config(bootstrap: str, topic: str, key: str, value: str) -> None:
    resource = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])  # fmt: skip
    admin = admin_client(bootstrap)  # kept referenced until the futures resolve
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def metrics_text(port: int) -> str:
    """One /metrics scrape, as served."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics scrape as {(sample name, sorted labels): value}."""
    text = metrics_text(port)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition a Java producer (and librdkafka's murmur2 partitioner) picks for `key`."""
    return partition_of(key, partitions)
