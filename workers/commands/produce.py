"""`scorestream produce`: a rate-limited synthetic feature stream and its delayed labels."""

from __future__ import annotations

import argparse
import heapq
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer

from workers.commands.shared import (
    EXIT_ERROR,
    EXIT_OK,
    add_kafka_options,
    add_logging_options,
    add_model_verify_option,
    install_stop_handlers,
)
from workers.commands.train import DATASETS, load_dataset
from workers.core.synthetic import ReplaySpec, StreamSpec, SyntheticEvent, replay, stream
from workers.kafka_io.admin import create_missing_topics
from workers.kafka_io.clients import AdminAccess, make_producer
from workers.model_store import load_newest_good
from workers.settings import SettingsError, add_option, kafka_config
from workers.signing import load_verifier

log = structlog.get_logger("scorestream.produce")


def add_parser(commands: Any, environ: Mapping[str, str]) -> None:  # noqa: ANN401 - argparse's
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
    add_kafka_options(produce, environ)
    add_option(produce, "--features-topic", environ=environ, default="features",
               help="where feature events go")  # fmt: skip
    add_option(produce, "--labels-topic", environ=environ, default="labels",
               help="where labels go ('' for none)")  # fmt: skip
    add_option(produce, "--model", environ=environ, type=Path,
               help="models/NAME: use its features and the data set it was trained on")  # fmt: skip
    add_model_verify_option(produce, environ, action="read")
    add_option(produce, "--dataset", environ=environ, choices=sorted(DATASETS),
               default="breast_cancer", help="data set when no --model is given")  # fmt: skip
    add_option(produce, "--data", environ=environ, type=Path,
               help="replay this table (CSV or Parquet) row by row instead of a bundled data "
               "set: each row an event, its --target column the label")  # fmt: skip
    add_option(produce, "--target", environ=environ,
               help="with --data: the column holding the label (not a feature)")  # fmt: skip
    add_option(produce, "--id-column", environ=environ,
               help="with --data: the column holding each event's event_id (default: "
               "PREFIX-<row number>)")  # fmt: skip
    add_option(produce, "--events", environ=environ, type=int,
               help="how many events (0: until stopped; default 10000, or every row of "
               "--data once)")  # fmt: skip
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
    add_logging_options(produce, environ)
    produce.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if args.rate <= 0 or (args.events is not None and args.events < 0):
        raise SettingsError("--rate must be > 0 and --events >= 0")
    if not 0 <= args.label_delay_min_s <= args.label_delay_max_s:
        raise SettingsError("need 0 <= --label-delay-min-s <= --label-delay-max-s")
    delays = (int(args.label_delay_min_s * 1000), int(args.label_delay_max_s * 1000))
    spec: StreamSpec | TableReplay
    if args.data is not None:
        spec = table_replay(args.data, args.target, args.id_column, ReplaySpec(
            features=(), prefix=args.prefix, seed=args.seed, label_fraction=args.label_fraction,
            label_delay_ms=delays,
        ))  # fmt: skip
        events = len(spec.rows) if args.events is None else args.events
    else:
        dataset = args.dataset
        if args.model is not None:
            verifier = load_verifier(args.model_verify_key, environ)
            manifest = load_newest_good(args.model, None, verifier).manifest
            dataset = manifest.raw.get("dataset") or dataset
        data = load_dataset(dataset)
        spec = StreamSpec(
            features=data.features, rows=data.x, labels=data.y.astype("int64"),
            prefix=args.prefix, seed=args.seed, drift_at=args.drift_at,
            label_fraction=args.label_fraction, label_delay_ms=delays,
        )  # fmt: skip
        events = 10_000 if args.events is None else args.events
    settings = ProduceSettings(
        bootstrap_servers=args.bootstrap_servers, features_topic=args.features_topic,
        labels_topic=args.labels_topic or None, events=events, rate=args.rate, spec=spec,
        kafka_config=kafka_config(args.kafka_config, args.kafka_config_file, environ),
        log_interval_s=args.log_interval_s,
    )  # fmt: skip
    stop = threading.Event()
    install_stop_handlers(stop)
    counts = run_produce(settings, stop)
    return EXIT_ERROR if counts.failed else EXIT_OK


@dataclass(frozen=True, slots=True)
class TableReplay:
    """A user's table to replay: rows of (event_id or None, label or None, *features)."""

    spec: ReplaySpec
    rows: list[tuple[Any, ...]]


def table_replay(
    path: Path, target: str | None, id_column: str | None, spec: ReplaySpec
) -> TableReplay:
    from workers.registry import RegistrationError, read_table  # noqa: PLC0415 - pandas

    if not target:
        raise SettingsError("--data needs --target COLUMN: the column that holds the labels")
    try:
        table = read_table(path)
    except RegistrationError as exc:
        raise SettingsError(str(exc)) from exc
    for flag, column in (("--target", target), ("--id-column", id_column)):
        if column is not None and column not in table.columns:
            raise SettingsError(
                f"{flag} {column!r} is not a column of {path} (columns: "
                f"{', '.join(map(str, table.columns[:20]))})"
            )
    features = [str(c) for c in table.columns if c not in (target, id_column)]
    ids = table[id_column].tolist() if id_column else [None] * len(table)
    columns = [ids, table[target].tolist(), *(table[f].tolist() for f in features)]
    rows = list(zip(*columns, strict=True))
    return TableReplay(
        ReplaySpec(features, spec.prefix, spec.seed, spec.label_fraction, spec.label_delay_ms),
        rows,
    )


@dataclass(frozen=True, slots=True)
class ProduceSettings:
    bootstrap_servers: str
    features_topic: str
    labels_topic: str | None
    events: int  # 0: until stopped
    rate: float  # events per second
    spec: StreamSpec | TableReplay
    kafka_config: dict[str, str]
    partitions: int = 4
    log_interval_s: float = 5.0
    start_ms: int | None = None  # event time of the first event; None: now


@dataclass(slots=True)
class ProduceCounts:
    events: int = 0
    labels: int = 0
    failed: int = 0


def run_produce(
    s: ProduceSettings, stop: threading.Event, counts: ProduceCounts | None = None
) -> ProduceCounts:
    """Send events at `rate` in event-time order; send each label when its delay has passed.
    `counts` (updated as records are sent) lets a caller on another thread show progress."""
    counts = ProduceCounts() if counts is None else counts

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            counts.failed += 1

    producer = make_producer(
        s.bootstrap_servers, s.kafka_config, defaults={"linger.ms": 5},
        required={"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random",
                  "delivery.report.only.error": True, "on_delivery": on_delivery},
        name="produce",
    )  # fmt: skip
    admin = AdminAccess(s.bootstrap_servers, s.kafka_config)
    topics = {s.features_topic: s.partitions}
    if s.labels_topic:
        topics[s.labels_topic] = s.partitions
    if not admin.retry_until_ready(
        lambda config: create_missing_topics(s.bootstrap_servers, topics, client_config=config),
        stop,
        what="topics",
    ):
        return counts
    start_ms = s.start_ms or time.time_ns() // 1_000_000
    events = (
        replay(s.spec.rows, s.spec.spec, start_ms, 1000 / s.rate)
        if isinstance(s.spec, TableReplay)
        else stream(s.spec, start_ms, 1000 / s.rate)
    )
    pump = _Pump(s, producer, counts, events)
    started, next_log = time.monotonic(), time.monotonic() + s.log_interval_s
    log.info("produce_started", features_topic=s.features_topic, labels_topic=s.labels_topic,
             events=s.events or "until stopped", rate=s.rate,
             drift_at=getattr(s.spec, "drift_at", None))  # fmt: skip
    while not stop.is_set():
        due_events = int((time.monotonic() - started) * s.rate) + 1
        pump.events_until(min(due_events, s.events) if s.events else due_events)
        pump.labels_until(time.time_ns() // 1_000_000)
        producer.poll(0)
        if time.monotonic() >= next_log:
            log.info("produce_progress", events=counts.events, labels=counts.labels,
                     labels_waiting=len(pump.due_labels), failed=counts.failed)  # fmt: skip
            next_log = time.monotonic() + s.log_interval_s
        done = pump.exhausted or (s.events and counts.events >= s.events)
        if done and not pump.due_labels:
            break
        stop.wait(0.01)
    producer.flush(30)
    log.info("produce_finished", events=counts.events, labels=counts.labels,
             labels_not_sent=len(pump.due_labels), failed=counts.failed)  # fmt: skip
    return counts


class _Pump:
    def __init__(
        self,
        settings: ProduceSettings,
        producer: Producer,
        counts: ProduceCounts,
        events: Iterator[SyntheticEvent],
    ) -> None:
        self.s = settings
        self.producer = producer
        self.counts = counts
        self.events = events
        self.due_labels: list[tuple[int, int, SyntheticEvent]] = []  # (due ms, index, event)
        self.exhausted = False

    def events_until(self, due: int) -> None:
        s, counts = self.s, self.counts
        while counts.events < due:
            event = next(self.events, None)
            if event is None:  # the whole table is sent
                self.exhausted = True
                return
            key = event.event_id.encode()
            _send(self.producer, s.features_topic, key, event.value, event.event_time)
            counts.events += 1
            if s.labels_topic and event.label_delay_ms is not None:
                label_due = event.event_time + event.label_delay_ms
                heapq.heappush(self.due_labels, (label_due, event.index, event))

    def labels_until(self, now_ms: int) -> None:
        topic = self.s.labels_topic
        while topic and self.due_labels and self.due_labels[0][0] <= now_ms:
            due, _, event = heapq.heappop(self.due_labels)
            _send(self.producer, topic, event.event_id.encode(), event.label_value(), due)
            self.counts.labels += 1


def _send(producer: Producer, topic: str, key: bytes, value: bytes, timestamp: int) -> None:
    while True:
        try:
            producer.produce(topic, value, key, timestamp=timestamp)
        except BufferError:
            producer.poll(0.05)
            continue
        return
