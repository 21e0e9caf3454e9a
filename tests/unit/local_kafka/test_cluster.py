from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from workers.local_kafka import cluster
from workers.local_kafka.layout import ClusterLayout
from workers.local_kafka.runtime import BrokerSetupError


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {cluster.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)


def test_a_listening_port_is_reported_busy_and_start_names_the_fix(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not cluster.port_free(port)
        layout = ClusterLayout(1, port, tmp_path)
        with pytest.raises(BrokerSetupError, match=rf"port\(s\) {port}.*--port"):
            cluster.start(layout, tmp_path / "cache")
    assert cluster.port_free(port)


def test_a_data_dir_of_another_shape_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(
        json.dumps({"cluster_id": "x", "nodes": 3, "port": 9092})
    )
    with pytest.raises(BrokerSetupError, match="--nodes 3 --port 9092"):
        cluster.start(ClusterLayout(1, 9092, tmp_path), tmp_path / "cache")


def test_a_pid_file_naming_another_program_is_not_our_broker(tmp_path: Path) -> None:
    layout = ClusterLayout(1, 9092, tmp_path)
    node = layout.nodes[0]
    node.node_dir.mkdir(parents=True)
    node.pid_path.write_text(f"{os.getpid()}\n")  # alive, but this is pytest, not Kafka
    assert cluster.process_alive(os.getpid())
    assert not cluster.process_alive(os.getpid(), node)
    [state] = cluster.status(layout)
    assert not state.live
    assert state.pid is None


def test_status_without_a_data_dir_reports_every_node_down(tmp_path: Path) -> None:
    nodes = cluster.status(ClusterLayout(3, 9092, tmp_path / "none"))
    assert [(n.node_id, n.live) for n in nodes] == [(1, False), (2, False), (3, False)]


def test_stop_with_nothing_running_is_a_no_op(tmp_path: Path) -> None:
    assert cluster.stop(ClusterLayout(1, 9092, tmp_path)) == []
