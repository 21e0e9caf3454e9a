"""`scorestream broker` end to end: a 3-node cluster, status, an RF=3 topic, restart, stop."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import free_base_port
from workers.cli import EXIT_NOT_RUNNING, EXIT_OK, main
from workers.kafka_io.admin import admin_client, create_topics
from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    if code not in (EXIT_OK, EXIT_NOT_RUNNING):
        pytest.fail(f"scorestream {' '.join(argv)} exited {code}:\n{captured.err}")
    return code, captured.out


def test_three_node_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_base_port(6)
    flags = [
        "--nodes",
        "3",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        "--log-format",
        "json",
    ]
    layout = ClusterLayout(3, port, tmp_path)
    try:
        code, out = _run(capsys, "broker", "start", *flags)
        assert code == EXIT_OK
        assert out.strip() == f"127.0.0.1:{port},127.0.0.1:{port + 2},127.0.0.1:{port + 4}"
        bootstrap = out.strip()

        code, out = _run(capsys, "broker", "status", *flags)
        assert code == EXIT_OK
        assert out.count(" live") == 3

        create_topics(bootstrap, {"rf3": 3}, replication_factor=3)
        meta = admin_client(bootstrap).list_topics("rf3", timeout=10)
        partitions = meta.topics["rf3"].partitions
        assert len(partitions) == 3
        assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions.values())

        # Starting again leaves the running nodes alone and succeeds.
        pids = [cluster.read_pid(n) for n in layout.nodes]
        code, out = _run(capsys, "broker", "start", *flags)
        assert code == EXIT_OK
        assert [cluster.read_pid(n) for n in layout.nodes] == pids

        # A node killed hard comes back with `start`, the others untouched.
        victim = layout.nodes[1]
        victim_pid = pids[1]
        assert victim_pid is not None
        os.kill(victim_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while cluster.process_alive(victim_pid, victim) and time.monotonic() < deadline:
            time.sleep(0.05)  # SIGKILL is delivered asynchronously
        code, out = _run(capsys, "broker", "status", *flags)
        assert code == EXIT_NOT_RUNNING
        code, out = _run(capsys, "broker", "start", *flags)
        assert code == EXIT_OK
        new_pids = [cluster.read_pid(n) for n in layout.nodes]
        assert new_pids[0] == pids[0]
        assert new_pids[2] == pids[2]
        assert new_pids[1] != victim_pid
        assert victim.node_id == 2
    finally:
        code, _ = _run(capsys, "broker", "stop", *flags)
    assert code == EXIT_OK
    code, out = _run(capsys, "broker", "status", *flags)
    assert code == EXIT_NOT_RUNNING
    assert out.count(" down") == 3
