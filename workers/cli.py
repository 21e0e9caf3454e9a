"""The `scorestream` command: builds the parser from the command modules and dispatches."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from workers import __version__
from workers.checkpoint import CheckpointError
from workers.commands import COMMANDS
from workers.commands.shared import EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, StartupError
from workers.core.report import ReportError
from workers.kafka_io.monitor_loop import MonitorStartupError
from workers.local_kafka.runtime import BrokerSetupError
from workers.log import configure_logging
from workers.model_store import ModelError
from workers.registry import RegistrationError
from workers.settings import SettingsError
from workers.signing import SignatureError

__all__ = ["EXIT_ERROR", "EXIT_NOT_RUNNING", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]

# What a command raises when the user can fix it: printed as one line, exit 1, no traceback.
USER_ERRORS = (
    BrokerSetupError,
    SettingsError,
    StartupError,
    ModelError,
    MonitorStartupError,
    CheckpointError,
    ReportError,
    SignatureError,
    RegistrationError,
)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorestream",
        description="Streaming inference and model monitoring on Kafka. Every flag also reads "
        "its SCORESTREAM_ environment variable (shown in each --help); a flag wins.",
    )
    parser.add_argument("--version", action="version", version=f"scorestream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"workers.commands.{name}").add_parser(commands, environ)
    return parser


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
    except USER_ERRORS as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
