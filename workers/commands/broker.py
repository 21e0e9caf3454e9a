"""`scorestream broker start|stop|status`: real Apache Kafka (KRaft) on loopback."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from workers.commands.shared import EXIT_NOT_RUNNING, EXIT_OK, add_logging_options
from workers.local_kafka import cluster
from workers.local_kafka.layout import MAX_NODES, ClusterLayout
from workers.local_kafka.runtime import default_cache_dir
from workers.settings import SettingsError, add_option, default_state_dir

log = structlog.get_logger("scorestream.broker")


def add_broker_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The cluster's shape and where it lives. The shape defaults to what DATA_DIR/cluster.json
    says the cluster there was started with, so `stop` and `status` find every node."""
    add_option(
        parser,
        "--nodes",
        environ=environ,
        type=int,
        help=f"combined broker+controller nodes, 1 to {MAX_NODES} (default: as "
        "DATA_DIR/cluster.json records, else 1)",
    )
    add_option(
        parser,
        "--data-dir",
        environ=environ,
        type=Path,
        default=default_state_dir(environ) / "broker",
        help="where node configs, data, pid files and logs live",
    )
    add_option(
        parser,
        "--port",
        environ=environ,
        type=int,
        help="client port of node 1; node n listens on PORT+2(n-1), its controller on +1 "
        "(default: as DATA_DIR/cluster.json records, else 9092)",
    )
    add_option(
        parser,
        "--cache-dir",
        environ=environ,
        type=Path,
        default=default_cache_dir(environ),
        help="where the Kafka jars are kept after the first download",
    )
    add_option(
        parser,
        "--timeout-s",
        environ=environ,
        type=float,
        default=120.0,
        help="how long start waits for readiness and stop waits before SIGKILL",
    )
    add_logging_options(parser, environ)


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
    broker = commands.add_parser(
        "broker",
        help="run real Apache Kafka (KRaft) on loopback for development and tests",
        description="Real Apache Kafka 4.x in KRaft mode on 127.0.0.1. Jars come from "
        "KAFKA_HOME (an unpacked distribution) when set, otherwise from a cache that Maven "
        "fills on first use. Needs Java 17+.",
    )
    actions = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start",
        help="start the nodes and wait until they serve",
        description="Format storage on first use, launch each node "
        "detached, wait until every node is ready, print the bootstrap "
        "servers on stdout. A running broker is left as it is.",
    )
    start.set_defaults(handler=run_start)
    stop = actions.add_parser(
        "stop",
        help="stop the nodes (SIGTERM, SIGKILL after --timeout-s)",
        description="Stop every node of the cluster in --data-dir, whatever shape it was "
        "started with (DATA_DIR/cluster.json records it).",
    )
    stop.set_defaults(handler=run_stop)
    stat = actions.add_parser(
        "status",
        help="show each node's pid, ports and liveness",
        description="Each node of the cluster in --data-dir (its shape as DATA_DIR/cluster.json "
        "records it). Exit 0 when every node is live, 3 otherwise.",
    )
    stat.set_defaults(handler=run_status)
    for sub in (start, stop, stat):
        add_broker_options(sub, environ)
        add_option(sub, "--tls", environ=environ, switch=True,
                   help="TLS on the client listener: a local CA and a broker certificate for "
                   "127.0.0.1 are made with openssl on first start; clients trust "
                   "DATA_DIR/security/ca.pem (written into DATA_DIR/client.conf)")  # fmt: skip
        add_option(sub, "--sasl", environ=environ, switch=True,
                   help="SASL/SCRAM-SHA-512 on the client listener, with a user 'scorestream' "
                   "whose random password is in DATA_DIR/client.conf (owner-only)")  # fmt: skip


def layout(args: argparse.Namespace) -> ClusterLayout:
    """The layout the flags describe; for a data dir that records its cluster (stop, status),
    the recorded one, and flags that contradict it are refused with the fix."""
    data_dir = args.data_dir.expanduser().resolve()
    recorded = cluster.recorded_shape(data_dir)
    nodes, port = args.nodes, args.port
    if recorded is not None:
        clashes = [
            f"{flag} {given} (it has {saved})"
            for flag, given, saved in (
                ("--nodes", nodes, recorded.nodes),
                ("--port", port, recorded.port),
            )
            if given is not None and given != saved
        ]
        if clashes:
            raise SettingsError(
                f"{data_dir} holds a cluster of {recorded.nodes} node(s) on port "
                f"{recorded.port}, not {', '.join(clashes)}: drop those flags (the data dir "
                "knows its shape) or choose another --data-dir"
            )
        nodes, port = recorded.nodes, recorded.port
    try:
        return ClusterLayout(
            nodes if nodes is not None else 1,
            port if port is not None else 9092,
            data_dir,
            tls=getattr(args, "tls", False) or (recorded is not None and recorded.tls),
            sasl=getattr(args, "sasl", False) or (recorded is not None and recorded.sasl),
        )
    except ValueError as exc:
        raise SettingsError(f"--nodes/--port: {exc}") from exc


def start_cluster(args: argparse.Namespace, environ: Mapping[str, str]) -> cluster.StartResult:
    return cluster.start(
        layout(args), args.cache_dir.expanduser(), environ.get("KAFKA_HOME"), args.timeout_s
    )


def run_start(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    result = start_cluster(args, environ)
    shape = layout(args)
    log.info(
        "broker_already_running" if result.already_running else "broker_started",
        bootstrap_servers=result.bootstrap_servers,
        nodes=shape.node_count,
        ready_s=round(result.ready_seconds, 2),
        cluster_id=result.cluster_id,
        security_protocol=shape.protocol,
        client_config=None if result.client_config_path is None else str(result.client_config_path),
    )
    print(result.bootstrap_servers)
    return EXIT_OK


def run_stop(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    stopped = cluster.stop(layout(args), args.timeout_s)
    log.info("broker_stopped", nodes=stopped)
    return EXIT_OK


def run_status(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    shape = layout(args)
    nodes = cluster.status(shape)
    print(f"{'node':>4}  {'pid':>8}  {'port':>5}  {'controller':>10}  state")
    for node in nodes:
        state = "live" if node.live else ("starting" if node.process_alive else "down")
        print(
            f"{node.node_id:>4}  {node.pid or '-':>8}  {node.port:>5}  "
            f"{node.controller_port:>10}  {state}"
        )
    print(f"bootstrap servers: {shape.bootstrap_servers}  data dir: {shape.data_dir}")
    return EXIT_OK if all(n.live for n in nodes) else EXIT_NOT_RUNNING
