"""What every command shares: exit codes, the common flags, stop signals, StartupError."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import structlog

from workers.log import LOG_FORMATS, LOG_LEVELS
from workers.settings import add_option

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

log = structlog.get_logger("scorestream")


class StartupError(Exception):
    """A worker cannot start; the message names the fix."""


def names(text: str | None) -> list[str] | None:
    """`a,b,c` -> ["a", "b", "c"] (a comma-separated flag); spaces around names are dropped."""
    if text is None:
        return None
    listed = [name.strip() for name in text.split(",") if name.strip()]
    return listed or None


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_logging_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
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


def add_kafka_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    add_option(
        parser,
        "--bootstrap-servers",
        environ=environ,
        default="127.0.0.1:9092",
        help="Kafka bootstrap servers, host:port[,host:port...]",
    )
    parser.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka setting, repeatable (TLS, SASL, tuning) "
        "[env: SCORESTREAM_KAFKA_<KEY with dots as underscores>]",
    )
    add_option(
        parser,
        "--kafka-config-file",
        environ=environ,
        type=Path,
        help="file of KEY=VALUE librdkafka settings (# comments allowed)",
    )


def add_model_verify_option(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], *, action: str
) -> None:
    """Every command that loads a model verifies it as infer does: a key configured means an
    unsigned or wrongly signed version is refused before anything is unpickled."""
    add_option(
        parser,
        "--model-verify-key",
        environ=environ,
        type=Path,
        help=f"PEM ed25519 public key: {action} only versions whose manifest.sig it verifies "
        "(SCORESTREAM_MODEL_HMAC_KEY in the environment requires HMAC-SHA256 signatures too)",
    )


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the batch, commit, exit 0. A second SIGINT: exit now."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
