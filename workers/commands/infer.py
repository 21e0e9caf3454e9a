"""`scorestream infer`: settings -> model -> worker, with signal handling."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.commands.shared import (
    StartupError,
    add_kafka_options,
    add_logging_options,
    add_model_verify_option,
    install_stop_handlers,
    positive_int,
)
from workers.core.events import DEFAULT_MAX_FEATURES, DEFAULT_MAX_VALUE_BYTES, MAX_EVENT_ID_CHARS
from workers.kafka_io.infer_loop import InferenceWorker, InferSettings
from workers.model_store import NO_KEYS, ModelError, ModelWatcher, load_newest_good
from workers.settings import SettingsError, add_option, kafka_config
from workers.signing import Verifier, load_verifier


def event_id_length(text: str) -> int:
    value = positive_int(text)
    if value > MAX_EVENT_ID_CHARS:
        raise argparse.ArgumentTypeError(
            f"{text} is over {MAX_EVENT_ID_CHARS}: a Prediction's event_id is at most "
            f"{MAX_EVENT_ID_CHARS} characters (schemas/prediction.schema.json), and the monitor "
            "refuses longer ones"
        )
    return value


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    infer = commands.add_parser(
        "infer",
        help="score feature events from Kafka and publish predictions",
        description="Consume FeatureEvents as a consumer group, score them in micro-batches "
        "with the newest verified version under --model (or --model-version), publish "
        "Predictions keyed by event_id and dead-letter every event that cannot be scored. "
        "At-least-once: an input offset is committed only after its outputs are acknowledged. "
        "SIGTERM/SIGINT finish the batch, commit and exit 0.",
    )
    add_kafka_options(infer, environ)
    add_option(
        infer,
        "--model",
        environ=environ,
        type=Path,
        help="model folder in the registry, e.g. models/NAME (required)",
    )
    add_option(
        infer,
        "--model-version",
        environ=environ,
        type=positive_int,
        help="pin this version (default: serve the highest and pick up newer ones)",
    )
    add_model_verify_option(infer, environ, action="serve")
    add_option(
        infer,
        "--model-poll-s",
        environ=environ,
        type=float,
        default=5.0,
        help="how often to look for a newer version (0: never)",
    )
    add_option(infer, "--input-topic", environ=environ, default="features", help="FeatureEvents")
    add_option(infer, "--output-topic", environ=environ, default="predictions", help="Predictions")
    add_option(
        infer,
        "--dlq-topic",
        environ=environ,
        default="features.dlq",
        help="dead letters: original key and value, error headers",
    )
    add_option(
        infer,
        "--group-id",
        environ=environ,
        default="scorestream-infer",
        help="consumer group; scale by running more workers with the same id",
    )
    add_option(
        infer,
        "--batch-size",
        environ=environ,
        type=positive_int,
        default=1000,
        help="most events per micro-batch",
    )
    add_option(
        infer,
        "--batch-timeout-ms",
        environ=environ,
        type=positive_int,
        default=20,
        help="longest wait for events when none has arrived; a micro-batch takes every event "
        "already fetched, up to --batch-size, without waiting to fill",
    )
    add_option(
        infer,
        "--processing-guarantee",
        environ=environ,
        choices=("at-least-once", "exactly-once"),
        default="at-least-once",
        help="at-least-once: every event scored, a crash may repeat some predictions; "
        "exactly-once: predictions, dead letters and offsets commit in Kafka transactions, "
        "read them with isolation.level=read_committed",
    )
    add_option(
        infer,
        "--instance-id",
        environ=environ,
        help="a name for this worker that survives its restarts (e.g. the pod name of a "
        "StatefulSet): static group membership, so a restart takes its partitions back "
        "without a rebalance, and with exactly-once its transactional.id, so a restart "
        "fences the previous incarnation at once. Unique per live worker.",
    )
    add_option(
        infer,
        "--transaction-interval-ms",
        environ=environ,
        type=positive_int,
        default=100,
        help="exactly-once: micro-batches committed per transaction span at most this long",
    )
    add_option(
        infer,
        "--max-value-bytes",
        environ=environ,
        type=positive_int,
        default=DEFAULT_MAX_VALUE_BYTES,
        help="larger values are dead-lettered",
    )
    add_option(
        infer,
        "--max-event-id-length",
        environ=environ,
        type=event_id_length,
        default=MAX_EVENT_ID_CHARS,
        help=f"longer event_ids are dead-lettered; at most {MAX_EVENT_ID_CHARS}, the longest "
        "a Prediction may carry (schema) and the monitor takes",
    )
    add_option(
        infer,
        "--max-features",
        environ=environ,
        type=positive_int,
        default=DEFAULT_MAX_FEATURES,
        help="events whose features object has more keys are dead-lettered (features)",
    )
    add_option(
        infer,
        "--redact-features",
        environ=environ,
        switch=True,
        help="keep feature values out of logs and DLQ headers: a dead letter's error.message "
        "is kept only when it quotes nothing of the event (the original bytes stay the value)",
    )
    add_option(
        infer,
        "--emit-features",
        environ=environ,
        switch=True,
        help="add each event's features (by name, gaps as null) to its Prediction, so the "
        "monitor's join stage can put them in its Outcome records (audits, retraining sets); "
        "off by default: it makes every Prediction as large as its event",
    )
    add_option(
        infer,
        "--metrics-port",
        environ=environ,
        type=int,
        help="serve Prometheus metrics and /healthz on this port",
    )
    add_option(
        infer,
        "--log-interval-s",
        environ=environ,
        type=float,
        default=10.0,
        help="seconds between summary log lines",
    )
    add_logging_options(infer, environ)
    infer.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.model is None:
        raise SettingsError("--model is required (or SCORESTREAM_MODEL), e.g. models/NAME")
    settings = InferSettings(
        bootstrap_servers=args.bootstrap_servers,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        dlq_topic=args.dlq_topic,
        group_id=args.group_id,
        batch_size=args.batch_size,
        batch_timeout_ms=args.batch_timeout_ms,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
        max_value_bytes=args.max_value_bytes,
        log_interval_s=args.log_interval_s,
        metrics_port=args.metrics_port,
        exactly_once=args.processing_guarantee == "exactly-once",
        instance_id=args.instance_id,
        transaction_interval_ms=args.transaction_interval_ms,
        max_event_id_chars=args.max_event_id_length,
        max_features=args.max_features,
        redact_features=args.redact_features,
        emit_features=args.emit_features,
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    verifier = load_verifier(args.model_verify_key, environ)
    return run_infer(
        settings, args.model, args.model_version, args.model_poll_s, stop, verifier=verifier
    )


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
