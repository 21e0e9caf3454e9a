"""Wire `scorestream infer`: settings -> model -> worker, with signal handling."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import structlog

from workers.kafka_io.infer_loop import InferenceWorker, InferSettings
from workers.model_store import NO_KEYS, ModelError, ModelWatcher, load_newest_good
from workers.signing import Verifier

log = structlog.get_logger("scorestream.infer")


class StartupError(Exception):
    """The worker cannot start; the message names the fix."""


def install_stop_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the batch, commit, exit 0. A second SIGINT: exit now."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_infer(  # noqa: PLR0913 - the worker's settings and where its model comes from
    settings: InferSettings,
    model_dir: Path,
    pinned_version: int | None,
    model_poll_s: float,
    stop: threading.Event,
    *,
    verifier: Verifier = NO_KEYS,
) -> int:
    try:
        loaded = load_newest_good(model_dir, pinned_version, verifier)
    except ModelError as exc:
        raise StartupError(str(exc)) from exc
    watcher = None
    if pinned_version is None and model_poll_s > 0:
        watcher = ModelWatcher(model_dir, loaded.manifest, model_poll_s, verifier)
        watcher.start()
    worker = InferenceWorker(settings, loaded, watcher)
    worker.run(stop)  # waits, with logged retries, for brokers that are not up yet
    if worker.abandoned_producers:
        # A producer stuck inside librdkafka would block the interpreter's exit in its
        # destructor; everything is committed and logged by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
