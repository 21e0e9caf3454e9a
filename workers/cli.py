"""The `scorestream` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from workers import __version__
from workers.checkpoint import CheckpointError
from workers.core.events import DEFAULT_MAX_FEATURES, DEFAULT_MAX_VALUE_BYTES, MAX_EVENT_ID_CHARS
from workers.core.report import ReportError
from workers.kafka_io.monitor_loop import MonitorStartupError
from workers.local_kafka import cluster
from workers.local_kafka.layout import MAX_NODES, ClusterLayout
from workers.local_kafka.runtime import BrokerSetupError, default_cache_dir
from workers.log import LOG_FORMATS, LOG_LEVELS, configure_logging
from workers.model_store import ModelError, list_versions
from workers.run_infer import StartupError
from workers.settings import SettingsError, add_option, default_state_dir, kafka_config
from workers.signing import SignatureError

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
        add_option(sub, "--tls", environ=environ, switch=True,
                   help="TLS on the client listener: a local CA and a broker certificate for "
                   "127.0.0.1 are made with openssl on first start; clients trust "
                   "DATA_DIR/security/ca.pem (written into DATA_DIR/client.conf)")  # fmt: skip
        add_option(sub, "--sasl", environ=environ, switch=True,
                   help="SASL/SCRAM-SHA-512 on the client listener, with a user 'scorestream' "
                   "whose random password is in DATA_DIR/client.conf (owner-only)")  # fmt: skip

    demo = commands.add_parser(
        "demo",
        help="start the local broker and show events flowing through it",
        description="Start the local broker (as `broker start`), train the demo model if "
        "missing, run `scorestream infer` and `scorestream monitor`, stream --events synthetic "
        "feature events (plus a few malformed ones) at --rate with each label 0.5-3 s later "
        "and half the labels flipped from the midpoint on (a drift), follow it with a progress "
        "bar, then write --out/report.png and report.html (rolling accuracy, the drift point, "
        "the alerts) and summary.json, and print the counts.",
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
        demo, "--rate", environ=environ, type=float, default=1000.0, help="events per second"
    )
    add_option(
        demo,
        "--models-dir",
        environ=environ,
        type=Path,
        default=Path("models"),
        help="registry root; the demo model is trained there on first run",
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
    _add_train_parser(commands, environ)
    _add_infer_parser(commands, environ)
    _add_monitor_parser(commands, environ)
    _add_bench_parser(commands, environ)
    _add_produce_parser(commands, environ)
    _add_report_parser(commands, environ)
    return parser


def _add_produce_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    from workers.training import DATASETS  # noqa: PLC0415

    produce = commands.add_parser(
        "produce",
        help="send a synthetic feature stream and its delayed labels, at a set rate",
        description="Feature events drawn from a bundled data set (the one --model was trained "
        "on, or --dataset) with a little noise, at --rate per second, and for each a label "
        "sent --label-delay-min-s to --label-delay-max-s later (event time follows the wall "
        "clock). From --drift-at on, labels are flipped with probability 0.5: a concept "
        "drift for the monitor to find. Runs until --events are sent (and their labels), or "
        "until SIGTERM/SIGINT with --events 0.",
    )
    _add_kafka_options(produce, environ)
    add_option(produce, "--features-topic", environ=environ, default="features",
               help="where feature events go")  # fmt: skip
    add_option(produce, "--labels-topic", environ=environ, default="labels",
               help="where labels go ('' for none)")  # fmt: skip
    add_option(produce, "--model", environ=environ, type=Path,
               help="models/NAME: use its features and the data set it was trained on")  # fmt: skip
    add_option(produce, "--dataset", environ=environ, choices=sorted(DATASETS),
               default="breast_cancer", help="data set when no --model is given")  # fmt: skip
    add_option(produce, "--events", environ=environ, type=int, default=10_000,
               help="how many events (0: until stopped)")  # fmt: skip
    add_option(produce, "--rate", environ=environ, type=float, default=1000.0,
               help="events per second")  # fmt: skip
    add_option(produce, "--drift-at", environ=environ, type=int,
               help="from this event on, labels flip with probability 0.5")  # fmt: skip
    add_option(produce, "--label-delay-min-s", environ=environ, type=float, default=1.0,
               help="shortest delay of a label after its event")  # fmt: skip
    add_option(produce, "--label-delay-max-s", environ=environ, type=float, default=60.0,
               help="longest delay of a label after its event")  # fmt: skip
    add_option(produce, "--label-fraction", environ=environ, type=float, default=1.0,
               help="share of events that ever get a label")  # fmt: skip
    add_option(produce, "--prefix", environ=environ, default="evt", help="event_id prefix")
    add_option(produce, "--seed", environ=environ, type=int, default=0, help="random seed")
    add_option(produce, "--log-interval-s", environ=environ, type=float, default=5.0,
               help="seconds between progress lines")  # fmt: skip
    _add_logging_options(produce, environ)
    produce.set_defaults(handler=_produce)


def _produce(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.core.synthetic import StreamSpec  # noqa: PLC0415
    from workers.model_store import load_newest_good  # noqa: PLC0415
    from workers.produce import ProduceSettings, run_produce  # noqa: PLC0415
    from workers.run_infer import install_stop_handlers  # noqa: PLC0415
    from workers.training import load_dataset  # noqa: PLC0415

    if args.rate <= 0 or args.events < 0:
        raise SettingsError("--rate must be > 0 and --events >= 0")
    if not 0 <= args.label_delay_min_s <= args.label_delay_max_s:
        raise SettingsError("need 0 <= --label-delay-min-s <= --label-delay-max-s")
    dataset = args.dataset
    if args.model is not None:
        manifest = load_newest_good(args.model, None).manifest
        dataset = manifest.raw.get("dataset") or dataset
    data = load_dataset(dataset)
    spec = StreamSpec(
        features=data.features, rows=data.x, labels=data.y.astype("int64"), prefix=args.prefix,
        seed=args.seed, drift_at=args.drift_at, label_fraction=args.label_fraction,
        label_delay_ms=(int(args.label_delay_min_s * 1000), int(args.label_delay_max_s * 1000)),
    )  # fmt: skip
    settings = ProduceSettings(
        bootstrap_servers=args.bootstrap_servers, features_topic=args.features_topic,
        labels_topic=args.labels_topic or None, events=args.events, rate=args.rate, spec=spec,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
        log_interval_s=args.log_interval_s,
    )  # fmt: skip
    stop = threading.Event()
    install_stop_handlers(stop)
    counts = run_produce(settings, stop)
    return EXIT_ERROR if counts.failed else EXIT_OK


def _add_report_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    report = commands.add_parser(
        "report",
        help="draw rolling accuracy, the drift point and the alerts from the topics",
        description="Read the predictions, labels and alerts topics from their start, join "
        "each prediction to its label by event_id, and write OUT/report.png (accuracy over "
        "the last --window outcomes per model version against event time, the drift point "
        "if given, each alert as a marker at the time it was raised) and OUT/report.html "
        "(the picture with the counts and the alerts). Needs matplotlib "
        "(pip install 'scorestream[report]').",
    )
    _add_kafka_options(report, environ)
    add_option(report, "--predictions-topic", environ=environ, default="predictions",
               help="Predictions")  # fmt: skip
    add_option(report, "--labels-topic", environ=environ, default="labels", help="Labels")
    add_option(report, "--alerts-topic", environ=environ, default="alerts", help="Alerts")
    add_option(report, "--window", environ=environ, type=_positive_int, default=500,
               help="outcomes per rolling-accuracy point")  # fmt: skip
    add_option(report, "--drift-at-ms", environ=environ, type=int,
               help="event time (epoch ms) to mark as the drift point")  # fmt: skip
    add_option(report, "--accuracy-threshold", environ=environ, type=float, default=0.8,
               help="drawn as a dotted line")  # fmt: skip
    add_option(report, "--out", environ=environ, type=Path, default=Path("report-out"),
               help="folder for report.png and report.html")  # fmt: skip
    _add_logging_options(report, environ)
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.report import report_from_topics, write_report  # noqa: PLC0415

    data = report_from_topics(
        args.bootstrap_servers, predictions_topic=args.predictions_topic,
        labels_topic=args.labels_topic, alerts_topic=args.alerts_topic, window=args.window,
        drift_at_ms=args.drift_at_ms,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
    )  # fmt: skip
    title = f"scorestream: {args.predictions_topic} joined with {args.labels_topic}"
    png, page = write_report(data, args.out, title=title,
                             accuracy_threshold=args.accuracy_threshold)  # fmt: skip
    print(json.dumps({"report_png": str(png), "report_html": str(page), **data.counts}))
    return EXIT_OK


def _add_bench_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    from workers.benchmark import add_arguments  # noqa: PLC0415 - argparse only, no Kafka

    bench = commands.add_parser(
        "bench",
        help="measure throughput, latency and memory beside a passthrough and a naive loop",
        description="Against a real broker (SCORESTREAM_BOOTSTRAP_SERVERS, or a local one "
        "started on port 39092 and stopped after): preload --events events, then measure "
        "(a) a bare passthrough, (b) a naive one-message loop, (c) infer with logistic "
        "regression, (d) infer with 100-tree HistGradientBoosting, (e) the monitor, (f) (c) "
        "exactly-once; latency "
        "at half of (c)'s maximum beside (a); bytes per pending prediction in the monitor. "
        "Prints a table with PASS/MISS per target and writes --out. Takes about 5 minutes "
        "(--quick: seconds). Exit 1 when a target is missed.",
    )
    add_arguments(bench)
    _add_logging_options(bench, environ)
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    from workers.benchmark import run  # noqa: PLC0415

    return run(args)


def _add_kafka_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
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


def _add_train_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    from workers.training import DATASETS, ESTIMATORS  # noqa: PLC0415

    train = commands.add_parser(
        "train",
        help="train a model and register its next version",
        description="Fit a pipeline on a data set that ships inside scikit-learn or river, "
        "evaluate it on a held-out split and register it as the next version under "
        "MODELS_DIR/NAME/<version>/ (model.joblib + manifest.json).",
    )
    add_option(train, "--name", environ=environ, help="model name (folder under --models-dir)")
    add_option(
        train,
        "--models-dir",
        environ=environ,
        type=Path,
        default=Path("models"),
        help="registry root",
    )
    add_option(
        train,
        "--dataset",
        environ=environ,
        choices=DATASETS,
        default="breast_cancer",
        help="bundled training data",
    )
    add_option(
        train,
        "--estimator",
        environ=environ,
        choices=ESTIMATORS,
        default="logistic_regression",
        help="what to fit",
    )
    add_option(
        train,
        "--seed",
        environ=environ,
        type=int,
        default=0,
        help="random seed of the split and the estimator",
    )
    add_option(
        train,
        "--sign-key",
        environ=environ,
        type=Path,
        help="PEM ed25519 private key: sign the manifest into manifest.sig (with "
        "SCORESTREAM_MODEL_HMAC_KEY set and no --sign-key, HMAC-SHA256 signs instead)",
    )
    add_option(
        train,
        "--if-missing",
        environ=environ,
        switch=True,
        help="do nothing when NAME already has a version (for init containers and scripts "
        "that run on every start)",
    )
    _add_logging_options(train, environ)
    train.set_defaults(handler=_train)


def _add_infer_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    infer = commands.add_parser(
        "infer",
        help="score feature events from Kafka and publish predictions",
        description="Consume FeatureEvents as a consumer group, score them in micro-batches "
        "with the newest verified version under --model (or --model-version), publish "
        "Predictions keyed by event_id and dead-letter every event that cannot be scored. "
        "At-least-once: an input offset is committed only after its outputs are acknowledged. "
        "SIGTERM/SIGINT finish the batch, commit and exit 0.",
    )
    _add_kafka_options(infer, environ)
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
        type=_positive_int,
        help="pin this version (default: serve the highest and pick up newer ones)",
    )
    add_option(
        infer,
        "--model-verify-key",
        environ=environ,
        type=Path,
        help="PEM ed25519 public key: serve only versions whose manifest.sig it verifies "
        "(SCORESTREAM_MODEL_HMAC_KEY in the environment requires HMAC-SHA256 signatures too)",
    )
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
        type=_positive_int,
        default=1000,
        help="most events per micro-batch",
    )
    add_option(
        infer,
        "--batch-timeout-ms",
        environ=environ,
        type=_positive_int,
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
        type=_positive_int,
        default=100,
        help="exactly-once: micro-batches committed per transaction span at most this long",
    )
    add_option(
        infer,
        "--max-value-bytes",
        environ=environ,
        type=_positive_int,
        default=DEFAULT_MAX_VALUE_BYTES,
        help="larger values are dead-lettered",
    )
    add_option(
        infer,
        "--max-event-id-length",
        environ=environ,
        type=_positive_int,
        default=MAX_EVENT_ID_CHARS,
        help="longer event_ids are dead-lettered (schema)",
    )
    add_option(
        infer,
        "--max-features",
        environ=environ,
        type=_positive_int,
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
    _add_logging_options(infer, environ)
    infer.set_defaults(handler=_infer)


def _add_monitor_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401
    from workers.core.drift import DEFAULT_DETECTOR, DETECTORS  # noqa: PLC0415

    monitor = commands.add_parser(
        "monitor",
        help="join labels to predictions, track accuracy and drift, raise alerts",
        description="Join the ground-truth labels (which may come before or after) to the "
        "predictions, keep rolling accuracy per model version, detect concept drift on the "
        "outcome stream and, with --features-topic and --model, data drift on the features. "
        "Alerts are JSON log lines (field `event` = the alert name) and records on "
        "--alerts-topic. State and offsets are checkpointed together in --state-dir, so a "
        "restart loses nothing and counts nothing twice.",
    )
    _add_kafka_options(monitor, environ)
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
        help="Labels, keyed by event_id; same partition count as the predictions",
    )
    add_option(monitor, "--alerts-topic", environ=environ, default="alerts", help="Alerts")
    add_option(
        monitor,
        "--features-topic",
        environ=environ,
        help="FeatureEvents to check for data drift (needs --model)",
    )
    add_option(
        monitor,
        "--model",
        environ=environ,
        type=Path,
        help="model folder whose training summary the features are compared with",
    )
    add_option(
        monitor,
        "--window",
        environ=environ,
        type=_positive_int,
        default=1000,
        help="joined outcomes in the rolling accuracy window",
    )
    add_option(
        monitor,
        "--accuracy-threshold",
        environ=environ,
        type=float,
        default=0.8,
        help="accuracy_below_threshold fires under this window accuracy",
    )
    add_option(
        monitor,
        "--min-outcomes",
        environ=environ,
        type=_positive_int,
        default=100,
        help="outcomes in the window before the first accuracy verdict",
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
        help="concept-drift detector on the outcome stream",
    )
    add_option(
        monitor,
        "--drift-cooldown",
        environ=environ,
        type=_positive_int,
        default=1000,
        help="outcomes (or feature events) before the same drift alert again",
    )
    add_option(
        monitor,
        "--feature-window",
        environ=environ,
        type=_positive_int,
        default=200,
        help="recent feature events compared with the training distribution",
    )
    add_option(
        monitor,
        "--feature-z-threshold",
        environ=environ,
        type=float,
        default=5.0,
        help="|z| of a feature's mean shift that counts as drift",
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
        type=_positive_int,
        default=1_000_000,
        help="most predictions (and labels) waiting; the oldest are evicted",
    )
    add_option(
        monitor,
        "--time-window-s",
        environ=environ,
        type=_positive_int,
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
        default="main",
        help="name of this monitor's own state when several share --state-dir",
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
    _add_logging_options(monitor, environ)
    monitor.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.core.alerts import AlertRules  # noqa: PLC0415
    from workers.core.monitor import MonitorConfig  # noqa: PLC0415
    from workers.kafka_io.monitor_loop import MonitorSettings, MonitorWorker  # noqa: PLC0415
    from workers.model_store import load_newest_good  # noqa: PLC0415
    from workers.run_infer import install_stop_handlers  # noqa: PLC0415

    if (args.features_topic is None) != (args.model is None):
        raise SettingsError("--features-topic and --model go together (data drift needs both)")
    manifest = None
    if args.model is not None:
        manifest = load_newest_good(args.model, None).manifest
    config = MonitorConfig(
        window=args.window,
        label_ttl_ms=int(args.label_ttl_s * 1000),
        orphan_label_ttl_ms=int(args.orphan_label_ttl_s * 1000),
        max_pending=args.max_pending,
        time_window_ms=args.time_window_s * 1000,
        detector=args.detector,
        rules=AlertRules(
            accuracy_threshold=args.accuracy_threshold,
            min_outcomes=args.min_outcomes,
            recover_margin=args.recover_margin,
            drift_cooldown=args.drift_cooldown,
        ),
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
        feature_window=args.feature_window,
        feature_z_threshold=args.feature_z_threshold,
        checkpoint_interval_s=args.checkpoint_interval_s,
        log_interval_s=args.log_interval_s,
        metrics_port=args.metrics_port,
        instance_id=args.instance_id,
        exactly_once=args.processing_guarantee == "exactly-once",
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    worker = MonitorWorker(settings)
    worker.run(stop)
    return EXIT_OK


def _train(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.signing import load_signer  # noqa: PLC0415
    from workers.training import train  # noqa: PLC0415

    if not args.name:
        raise SettingsError("--name is required (or SCORESTREAM_NAME)")
    log = structlog.get_logger("scorestream.train")
    existing = list_versions(args.models_dir / args.name)
    if args.if_missing and existing:
        log.info("model_present", model=args.name, versions=existing, trained=False)
        return EXIT_OK
    signer = load_signer(args.sign_key, environ)
    folder = train(
        args.name,
        args.models_dir,
        signer=signer,
        dataset=args.dataset,
        estimator=args.estimator,
        seed=args.seed,
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    log.info(
        "model_registered",
        model=manifest["name"],
        version=manifest["version"],
        path=str(folder),
        sha256=manifest["sha256"],
        signed=(folder / "manifest.sig").exists(),
        metrics=manifest["metrics"],
    )
    return EXIT_OK


def _infer(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from workers.kafka_io.infer_loop import InferSettings  # noqa: PLC0415
    from workers.run_infer import install_stop_handlers, run_infer  # noqa: PLC0415
    from workers.signing import load_verifier  # noqa: PLC0415

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
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    verifier = load_verifier(args.model_verify_key, environ)
    return run_infer(
        settings, args.model, args.model_version, args.model_poll_s, stop, verifier=verifier
    )


def _layout(args: argparse.Namespace) -> ClusterLayout:
    try:
        return ClusterLayout(
            args.nodes,
            args.port,
            args.data_dir.expanduser().resolve(),
            tls=getattr(args, "tls", False),
            sasl=getattr(args, "sasl", False),
        )
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
        security_protocol=layout.protocol,
        client_config=None if result.client_config_path is None else str(result.client_config_path),
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
    print(f"Kafka ready at {result.bootstrap_servers} (stop it with `scorestream broker stop`)")
    if args.rate <= 0:
        raise SettingsError("--rate must be > 0")
    return run_demo(result.bootstrap_servers, args.events, args.out, args.models_dir, args.rate)


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
    except (
        BrokerSetupError,
        SettingsError,
        StartupError,
        ModelError,
        MonitorStartupError,
        CheckpointError,
        ReportError,
        SignatureError,
    ) as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
