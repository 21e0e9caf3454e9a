"""Where each node of a local cluster listens and how it is configured (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
MAX_NODES = 3


def security_protocol(*, tls: bool, sasl: bool) -> str:
    """Kafka's name for a listener's protocol with or without TLS and SASL."""
    if tls:
        return "SASL_SSL" if sasl else "SSL"
    return "SASL_PLAINTEXT" if sasl else "PLAINTEXT"


@dataclass(frozen=True, slots=True)
class NodeLayout:
    node_id: int
    port: int
    controller_port: int
    node_dir: Path

    @property
    def log_dirs(self) -> Path:
        return self.node_dir / "data"

    @property
    def properties_path(self) -> Path:
        return self.node_dir / "server.properties"

    @property
    def pid_path(self) -> Path:
        return self.node_dir / "kafka.pid"

    @property
    def log_path(self) -> Path:
        return self.node_dir / "server.log"


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """A cluster of combined broker+controller nodes; node n listens on base_port + 2(n-1)."""

    node_count: int
    base_port: int
    data_dir: Path
    tls: bool = False
    sasl: bool = False

    @property
    def protocol(self) -> str:
        """The client listener's security protocol (also its listener name)."""
        return security_protocol(tls=self.tls, sasl=self.sasl)

    def __post_init__(self) -> None:
        if not 1 <= self.node_count <= MAX_NODES:
            raise ValueError(f"node_count must be 1..{MAX_NODES}, got {self.node_count}")
        if not 1024 <= self.base_port <= 65535 - 2 * self.node_count:
            raise ValueError(f"port {self.base_port} leaves no room for {self.node_count} node(s)")

    @property
    def nodes(self) -> tuple[NodeLayout, ...]:
        return tuple(
            NodeLayout(
                node_id=n,
                port=self.base_port + 2 * (n - 1),
                controller_port=self.base_port + 2 * (n - 1) + 1,
                node_dir=self.data_dir / f"node-{n}",
            )
            for n in range(1, self.node_count + 1)
        )

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    @property
    def all_ports(self) -> tuple[int, ...]:
        return tuple(p for node in self.nodes for p in (node.port, node.controller_port))


def server_properties(
    cluster: ClusterLayout, node: NodeLayout, security_lines: Sequence[str] = ()
) -> str:
    """Render server.properties for one combined broker+controller node; `security_lines`
    configure TLS and SASL for the client listener (named after its protocol)."""
    listener = cluster.protocol
    replicas = cluster.node_count
    # With 3 nodes, one may be killed on purpose and writes must still succeed.
    min_isr = 2 if replicas >= 3 else 1
    if cluster.node_count == 1:
        quorum = f"controller.quorum.bootstrap.servers={HOST}:{node.controller_port}"
    else:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in cluster.nodes)
        quorum = f"controller.quorum.voters={voters}"
    lines = [
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        quorum,
        f"listeners={listener}://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        (
            f"advertised.listeners={listener}://{HOST}:{node.port},"
            f"CONTROLLER://{HOST}:{node.controller_port}"
        ),
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={listener}",
        # The controller listener stays on loopback in plain text: only these nodes use it.
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
        f"log.dirs={node.log_dirs}",
        "num.partitions=4",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        # Fewer internal partitions than the production default: the first consumer group and
        # the first transaction on a fresh laptop broker are ready in well under a second.
        "offsets.topic.num.partitions=8",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        "transaction.state.log.num.partitions=8",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # Tests and the demo start consumers right away; the 3 s default only delays them.
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "num.network.threads=2",
        "num.io.threads=4",
        "log.retention.hours=24",
        "log.segment.bytes=268435456",
        *security_lines,
    ]
    return "\n".join(lines) + "\n"


LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
"""
