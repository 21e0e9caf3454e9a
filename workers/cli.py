"""The `scorestream` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from workers import __version__
from workers.local_kafka import cluster
from workers.local_kafka.layout import MAX_NODES, ClusterLayout
from workers.local_kafka.runtime import BrokerSetupError, default_cache_dir
from workers.log import LOG_FORMATS, LOG_LEVELS, configure_logging
from workers.settings import SettingsError, add_option, default_state_dir

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_logging_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_option(
        parser,
        "--log-format",
        environ=environ,
        choices=LOG_FORMATS,
        default="auto",
        help="log lines as JSON, console text, or auto (console at a terminal)",
    )
    add_option(
        parser,
        "--log-level",
        environ=environ,
        choices=LOG_LEVELS,
        default="info",
        help="lowest level logged",
    )


def _add_broker_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_option(
        parser,
        "--nodes",
        environ=environ,
        type=int,
        default=1,
        choices=None,
        help=f"combined broker+controller nodes, 1 to {MAX_NODES}",
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
        default=9092,
        help="client port of node 1; node n listens on PORT+2(n-1), its controller on +1",
    )
    add_option(
        parser,
        "--cache-dir",
        environ=environ,
        type=Path,
        default=default_cache_dir(),
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
    _add_logging_options(parser, environ)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorestream",
        description="Streaming inference and model monitoring on Kafka. Every flag also reads "
        "its SCORESTREAM_ environment variable (shown in each --help); a flag wins.",
    )
    parser.add_argument("--version", action="version", version=f"scorestream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    start.set_defaults(handler=_broker_start)
    stop = actions.add_parser("stop", help="stop the nodes (SIGTERM, SIGKILL after --timeout-s)")
    stop.set_defaults(handler=_broker_stop)
    stat = actions.add_parser(
        "status",
        help="show each node's pid, ports and liveness",
        description="Exit 0 when every node is live, 3 otherwise.",
    )
    stat.set_defaults(handler=_broker_status)
    for sub in (start, stop, stat):
        _add_broker_options(sub, environ)

    demo = commands.add_parser(
        "demo",
        help="start the local broker and show events flowing through it",
        description="Start the local broker (as `broker start`), send --events keyed events "
        "through a topic and read them back, then print what came out.",
    )
    add_option(
        demo,
        "--events",
        environ=environ,
        type=_positive_int,
        default=5000,
        help="how many events to send",
    )
    add_option(
        demo,
        "--out",
        environ=environ,
        type=Path,
        default=Path("demo-out"),
        help="where the demo writes its results",
    )
    _add_broker_options(demo, environ)
    demo.set_defaults(handler=_demo)
    return parser


def _layout(args: argparse.Namespace) -> ClusterLayout:
    try:
        return ClusterLayout(args.nodes, args.port, args.data_dir.expanduser().resolve())
    except ValueError as exc:
        raise SettingsError(f"--nodes/--port: {exc}") from exc


def _broker_start(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    layout = _layout(args)
    result = cluster.start(
        layout, args.cache_dir.expanduser(), environ.get("KAFKA_HOME"), args.timeout_s
    )
    structlog.get_logger("scorestream.broker").info(
        "broker_already_running" if result.already_running else "broker_started",
        bootstrap_servers=result.bootstrap_servers,
        nodes=layout.node_count,
        ready_s=round(result.ready_seconds, 2),
        cluster_id=result.cluster_id,
    )
    print(result.bootstrap_servers)
    return EXIT_OK


def _broker_stop(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    stopped = cluster.stop(_layout(args), args.timeout_s)
    structlog.get_logger("scorestream.broker").info("broker_stopped", nodes=stopped)
    return EXIT_OK


def _broker_status(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    layout = _layout(args)
    nodes = cluster.status(layout)
    print(f"{'node':>4}  {'pid':>8}  {'port':>5}  {'controller':>10}  state")
    for node in nodes:
        state = "live" if node.live else ("starting" if node.process_alive else "down")
        print(
            f"{node.node_id:>4}  {node.pid or '-':>8}  {node.port:>5}  "
            f"{node.controller_port:>10}  {state}"
        )
    print(f"bootstrap servers: {layout.bootstrap_servers}  data dir: {layout.data_dir}")
    return EXIT_OK if all(n.live for n in nodes) else EXIT_NOT_RUNNING


def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.demo import run_demo  # noqa: PLC0415 - keeps `--help` fast

    layout = _layout(args)
    result = cluster.start(
        layout, args.cache_dir.expanduser(), environ.get("KAFKA_HOME"), args.timeout_s
    )
    return run_demo(result.bootstrap_servers, args.events, args.out)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    try:
        parser = build_parser(env)
    except SettingsError as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    # The broker commands print their answer on stdout; their progress goes to stderr.
    log_stream = sys.stderr if args.command == "broker" else sys.stdout
    configure_logging(args.log_format, args.log_level, log_stream)
    handler: Handler = args.handler
    try:
        return handler(args, env)
    except (BrokerSetupError, SettingsError) as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
