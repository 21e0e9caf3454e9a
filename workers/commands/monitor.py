"""`scorestream monitor`: join labels to predictions, track accuracy and drift, raise alerts."""

from __future__ import annotations

import argparse
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.commands.shared import (
    EXIT_OK,
    add_kafka_options,
    add_logging_options,
    add_model_verify_option,
    install_stop_handlers,
    positive_int,
)
from workers.core.alerts import AlertRules
from workers.core.drift import (
    DEFAULT_DETECTOR,
    DEFAULT_ERROR_DETECTOR,
    DETECTORS,
    ERROR_DETECTORS,
)
from workers.core.monitor import MonitorConfig
from workers.kafka_io.monitor_loop import MonitorSettings, MonitorWorker
from workers.kafka_io.stages import AggregateStage, JoinStage, StageSettings
from workers.model_store import load_newest_good
from workers.settings import SettingsError, add_option, default_state_dir, kafka_config
from workers.signing import load_verifier


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    monitor = commands.add_parser(
        "monitor",
        help="join labels to predictions, track accuracy and drift, raise alerts",
        description="Join the ground-truth labels (which may come before or after) to the "
        "predictions, keep rolling accuracy per model version and detect concept drift on the "
        "outcome stream. With --model, each version registered with data is also checked "
        "before its labels come: the drift of its predictions and its accuracy estimated from "
        "its probabilities (CBPE); with --features-topic too, data drift on the features, with "
        "thresholds calibrated on the version's reference in its original order. "
        "Alerts are JSON log lines (field `event` = the alert name) and records on "
        "--alerts-topic. State and offsets are checkpointed together (in --state-dir, or with "
        "--stage join|aggregate in compacted Kafka topics), so a restart loses nothing and "
        "counts nothing twice. --stage splits the monitor in two for more than one machine: "
        "join instances write Outcome records to --outcomes-topic, an aggregate reads them.",
    )
    add_kafka_options(monitor, environ)
    add_option(
        monitor,
        "--predictions-topic",
        environ=environ,
        default="predictions",
        help="Predictions, keyed by event_id",
    )
    add_option(
        monitor,
        "--labels-topic",
        environ=environ,
        default="labels",
        help="Labels, any partitioner and partition count: re-keyed by event_id onto "
        "GROUP-labels-repartition (made with as many partitions as the predictions)",
    )
    add_option(monitor, "--alerts-topic", environ=environ, default="alerts", help="Alerts")
    add_option(
        monitor,
        "--features-topic",
        environ=environ,
        help="FeatureEvents to check for data drift against --model's newest version",
    )
    add_option(
        monitor,
        "--model",
        environ=environ,
        type=Path,
        help="model folder: its versions' references (the data they were registered with) "
        "for prediction drift, estimated accuracy and, with --features-topic, data drift",
    )
    add_model_verify_option(monitor, environ, action="read")
    add_option(
        monitor,
        "--window",
        environ=environ,
        type=positive_int,
        default=1000,
        help="joined outcomes in the rolling accuracy window; until it fills, accuracy is over "
        "every outcome so far, so in a run of a few hundred events a late drop is diluted: "
        "use a window (and --min-outcomes) that fits the run",
    )
    add_option(
        monitor,
        "--accuracy-threshold",
        environ=environ,
        type=float,
        default=0.8,
        help="accuracy_below_threshold fires under this window accuracy (classifiers)",
    )
    add_option(
        monitor,
        "--max-mae",
        environ=environ,
        type=float,
        help="regressors: error_above_threshold fires when the window MAE exceeds this "
        "(default: 1.5x the version's MAE over its first --window outcomes); "
        "error_recovered at 0.9x of it",
    )
    add_option(
        monitor,
        "--min-outcomes",
        environ=environ,
        type=positive_int,
        default=100,
        help="outcomes in the window before the first accuracy verdict (accuracy alerts need "
        "at least this many joined outcomes of a version)",
    )
    add_option(
        monitor,
        "--recover-margin",
        environ=environ,
        type=float,
        default=0.02,
        help="accuracy_recovered fires at threshold + this margin",
    )
    add_option(
        monitor,
        "--detector",
        environ=environ,
        choices=tuple(DETECTORS),
        default=DEFAULT_DETECTOR,
        help="concept-drift detector on the outcome stream (classifiers)",
    )
    add_option(
        monitor,
        "--error-detector",
        environ=environ,
        choices=tuple(ERROR_DETECTORS),
        default=DEFAULT_ERROR_DETECTOR,
        help="regressors: concept-drift detector on the absolute errors",
    )
    add_option(
        monitor,
        "--drift-cooldown",
        environ=environ,
        type=positive_int,
        default=1000,
        help="outcomes (or feature events) before the same drift alert again",
    )
    add_option(
        monitor,
        "--feature-window",
        environ=environ,
        type=positive_int,
        default=200,
        help="events in the window of data and prediction drift's means, spreads, missing "
        "rates and category frequencies (thresholds are calibrated on the reference cut into "
        "windows of this size)",
    )
    add_option(
        monitor,
        "--shape-window",
        environ=environ,
        type=positive_int,
        default=500,
        help="events in the window of numeric distributions (Jensen-Shannon on reference "
        "quantile bins) and of the multivariate PCA reconstruction check",
    )
    add_option(
        monitor,
        "--feature-z-threshold",
        environ=environ,
        type=float,
        default=5.0,
        help="versions registered without a reference (before drift references existed): "
        "|z| of a feature's mean shift against the training summary that counts as drift",
    )
    add_option(
        monitor,
        "--label-ttl-s",
        environ=environ,
        type=float,
        default=3600.0,
        help="event time a prediction waits for its label",
    )
    add_option(
        monitor,
        "--max-time-ahead-s",
        environ=environ,
        type=float,
        default=3600.0,
        help="a prediction's event_time (a label's label_time) further ahead of its record's "
        "timestamp than this is taken to be the timestamp (counted as times_clamped): one event "
        "stamped in microseconds or in 2100 cannot hold back every expiry",
    )
    add_option(
        monitor,
        "--max-label-bytes",
        environ=environ,
        type=int,
        default=65536,
        help="a label larger than this is invalid (counted in invalid_labels and logged as "
        "label_too_large, never forwarded): it bounds the memory a pending label takes and "
        "keeps its re-keyed copy under the broker's message size limit",
    )
    add_option(
        monitor,
        "--orphan-label-ttl-s",
        environ=environ,
        type=float,
        default=600.0,
        help="event time a label that came first waits for its prediction",
    )
    add_option(
        monitor,
        "--max-pending",
        environ=environ,
        type=positive_int,
        default=1_000_000,
        help="most predictions (and, apart, labels) waiting in this monitor over all its "
        "partitions; the oldest are evicted",
    )
    add_option(
        monitor,
        "--time-window-s",
        environ=environ,
        type=positive_int,
        default=60,
        help="length of the tumbling event-time accuracy windows",
    )
    add_option(
        monitor, "--group-id", environ=environ, default="scorestream-monitor", help="consumer group"
    )
    add_option(
        monitor,
        "--state-dir",
        environ=environ,
        type=Path,
        help="where checkpoints live (default: the user state dir / monitor / GROUP)",
    )
    add_option(
        monitor,
        "--instance-id",
        environ=environ,
        help="this instance's name: its own state when several `all` monitors share "
        "--state-dir (default main); with --stage join or aggregate its transactional.id "
        "(default the host name), so each instance of a stage needs its own",
    )
    add_option(
        monitor,
        "--stage",
        environ=environ,
        choices=("all", "join", "aggregate"),
        default="all",
        help="all: join and aggregate in this one process, state in --state-dir (one machine). "
        "join: predictions and labels joined per partition into Outcome records on "
        "--outcomes-topic; run any number, on any machines. aggregate: reads the outcomes and "
        "keeps every version's metrics, drift and alerts. Both keep their state in compacted "
        "changelog topics (GROUP-join-changelog, GROUP-aggregate-changelog), not on disk",
    )
    add_option(
        monitor,
        "--outcomes-topic",
        environ=environ,
        default="outcomes",
        help="Outcome records (--stage join writes, --stage aggregate reads), keyed by "
        "model/version; made with as many partitions as the predictions when missing",
    )
    add_option(
        monitor,
        "--checkpoint-interval-s",
        environ=environ,
        type=float,
        default=5.0,
        help="seconds between checkpoints (also on revoke and at shutdown)",
    )
    add_option(
        monitor,
        "--processing-guarantee",
        environ=environ,
        choices=("at-least-once", "exactly-once"),
        default="at-least-once",
        help="alerts on --alerts-topic: at-least-once (a crash may repeat some), or "
        "exactly-once (stored with each checkpoint, published in Kafka transactions, each "
        "once for isolation.level=read_committed readers; they appear at checkpoints)",
    )
    add_option(
        monitor,
        "--redact-features",
        environ=environ,
        switch=True,
        help="keep feature values out of alerts and logs: a feature_drift alert names the "
        "feature and how far it moved (shift_sigma, z) but not its training or live mean",
    )
    add_option(
        monitor,
        "--metrics-port",
        environ=environ,
        type=int,
        help="serve Prometheus metrics and /healthz on this port",
    )
    add_option(
        monitor,
        "--log-interval-s",
        environ=environ,
        type=float,
        default=10.0,
        help="seconds between summary log lines",
    )
    add_logging_options(monitor, environ)
    monitor.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.features_topic is not None and args.model is None:
        raise SettingsError(
            "--features-topic needs --model: the features are compared with the data its "
            "newest version was registered with"
        )
    manifest = None
    verifier = load_verifier(args.model_verify_key, environ)
    if args.model is not None:
        manifest = load_newest_good(args.model, None, verifier).manifest
    config = MonitorConfig(
        window=args.window,
        label_ttl_ms=int(args.label_ttl_s * 1000),
        orphan_label_ttl_ms=int(args.orphan_label_ttl_s * 1000),
        max_pending=args.max_pending,
        max_time_ahead_ms=int(args.max_time_ahead_s * 1000),
        max_label_bytes=args.max_label_bytes,
        time_window_ms=args.time_window_s * 1000,
        detector=args.detector,
        error_detector=args.error_detector,
        rules=AlertRules(
            max_mae=args.max_mae,
            accuracy_threshold=args.accuracy_threshold,
            min_outcomes=args.min_outcomes,
            recover_margin=args.recover_margin,
            drift_cooldown=args.drift_cooldown,
        ),
        feature_window=args.feature_window,
        shape_window=args.shape_window,
    )
    settings = MonitorSettings(
        bootstrap_servers=args.bootstrap_servers,
        predictions_topic=args.predictions_topic,
        labels_topic=args.labels_topic,
        alerts_topic=args.alerts_topic,
        group_id=args.group_id,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
        state_dir=args.state_dir or default_state_dir(environ) / "monitor" / args.group_id,
        config=config,
        features_topic=args.features_topic,
        manifest=manifest,
        model_dir=args.model,
        verifier=verifier,
        feature_window=args.feature_window,
        shape_window=args.shape_window,
        feature_z_threshold=args.feature_z_threshold,
        checkpoint_interval_s=args.checkpoint_interval_s,
        log_interval_s=args.log_interval_s,
        metrics_port=args.metrics_port,
        instance_id=args.instance_id or "main",
        exactly_once=args.processing_guarantee == "exactly-once",
        redact_features=args.redact_features,
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    if args.stage != "all":
        stage_worker = split_stage(args, settings)
        stage_worker.run(stop)
        return EXIT_OK
    worker = MonitorWorker(settings)
    worker.run(stop)
    return EXIT_OK


def split_stage(args: argparse.Namespace, settings: MonitorSettings) -> JoinStage | AggregateStage:
    if args.stage == "join" and (args.features_topic or args.model):
        raise SettingsError(
            "--features-topic and --model belong to the aggregate stage: pass them to "
            "`scorestream monitor --stage aggregate`"
        )
    stage_settings = StageSettings.of(
        settings, outcomes_topic=args.outcomes_topic,
        instance_id=args.instance_id or socket.gethostname(),
    )  # fmt: skip
    if args.stage == "join":
        return JoinStage(stage_settings)
    return AggregateStage(stage_settings)
