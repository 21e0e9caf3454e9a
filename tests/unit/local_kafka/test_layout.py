from __future__ import annotations

from pathlib import Path

import pytest

from workers.local_kafka.layout import ClusterLayout, server_properties


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_node_n_listens_on_port_plus_two_n_minus_one() -> None:
    layout = ClusterLayout(3, 9092, Path("/d"))
    assert [(n.node_id, n.port, n.controller_port) for n in layout.nodes] == [
        (1, 9092, 9093),
        (2, 9094, 9095),
        (3, 9096, 9097),
    ]
    assert layout.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert layout.nodes[1].node_dir == Path("/d/node-2")


def test_single_node_uses_bootstrap_quorum_and_replication_one() -> None:
    layout = ClusterLayout(1, 19092, Path("/d"))
    props = _props(server_properties(layout, layout.nodes[0]))
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert "controller.quorum.voters" not in props
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "min.insync.replicas",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == "/d/node-1/data"


def test_three_nodes_use_a_static_quorum_rf3_and_min_isr2() -> None:
    layout = ClusterLayout(3, 9092, Path("/d"))
    props = _props(server_properties(layout, layout.nodes[2]))
    assert props["node.id"] == "3"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    )
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["advertised.listeners"].startswith("PLAINTEXT://127.0.0.1:9096,")


@pytest.mark.parametrize(("nodes", "port"), [(0, 9092), (4, 9092), (1, 80), (3, 65534)])
def test_impossible_layouts_are_refused(nodes: int, port: int) -> None:
    with pytest.raises(ValueError, match=r"node_count|port"):
        ClusterLayout(nodes, port, Path("/d"))
