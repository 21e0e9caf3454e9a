"""The monitor worker's loop: consume predictions, labels (and features), checkpoint, alert."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from workers.checkpoint import CheckpointStore
from workers.core.alerts import Alert, FeatureAlerts, redacted
from workers.core.drift import FeatureDrift
from workers.core.events import EventDecoder, InvalidEvent
from workers.core.monitor import MonitorConfig, MonitorState
from workers.kafka_io.admin import list_topics
from workers.kafka_io.clients import (
    TXN_CALL_LIMIT_S,
    AdminAccess,
    CallStuck,
    bounded_call,
    init_transactions,
    make_consumer,
    make_producer,
    partition_lags,
    redact,
)
from workers.metrics import REFRESH_INTERVAL_S, MetricsServer, MetricsSnapshot, MonitorMetrics
from workers.model_store import Manifest
from workers.process_tuning import tune_process

log = structlog.get_logger("scorestream.monitor")


def _published_seqs(settings: MonitorSettings, transactional_id: str, since_ms: int) -> set[int]:
    """Alert sequence numbers this monitor instance has in the alerts topic since `since_ms`."""
    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers, **settings.kafka_config,
        "group.id": f"{settings.group_id}.outbox-check", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True,
    })  # fmt: skip
    try:
        meta = consumer.list_topics(settings.alerts_topic, timeout=30).topics[settings.alerts_topic]
        wanted = [TopicPartition(settings.alerts_topic, p, since_ms) for p in meta.partitions]
        starts = consumer.offsets_for_times(wanted, timeout=30)
        consumer.assign(starts)
        seqs: set[int] = set()
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_end) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                        at_end.add(msg.partition() or 0)
                    continue
                headers = dict(msg.headers() or [])
                if headers.get("scorestream.transactional_id") == transactional_id.encode():
                    seqs.add(int(headers.get("scorestream.alert_seq", b"-1") or b"-1"))
        return seqs
    finally:
        consumer.close()


alert_log = structlog.get_logger("scorestream.alert")
LOG_LEVEL_OF_SEVERITY = {"warning": "warning", "critical": "critical"}


def _starting_at(tp: TopicPartition) -> str:
    """`predictions[3] from offset 1200 (checkpoint)`, for a person to read."""
    where = f"{tp.topic}[{tp.partition}]"
    if tp.offset >= 0:
        return f"{where} from offset {tp.offset} (checkpoint)"
    return f"{where} from the committed offset (the earliest when none)"


class MonitorStartupError(Exception):
    """The monitor cannot start; the message names the fix."""


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    bootstrap_servers: str
    predictions_topic: str
    labels_topic: str
    alerts_topic: str
    group_id: str
    kafka_config: dict[str, str]
    state_dir: Path
    config: MonitorConfig
    features_topic: str | None = None
    manifest: Manifest | None = None
    feature_window: int = 200
    feature_z_threshold: float = 5.0
    batch_size: int = 1000
    checkpoint_interval_s: float = 5.0
    log_interval_s: float = 10.0
    metrics_port: int | None = None
    instance_id: str = "main"
    # Alerts through an outbox stored with the checkpoint and published in transactions.
    exactly_once: bool = False
    # Keep what quotes feature values (a feature's training and live means) out of alerts.
    redact_features: bool = False


def check_partition_counts(
    settings: MonitorSettings, admin_config: dict[str, Any] | None = None
) -> int:
    """Predictions and labels must be co-partitioned; return their partition count."""
    extra: dict[str, Any] = dict(settings.kafka_config if admin_config is None else admin_config)
    # Short: an unreachable cluster is retried (with backoff and a log line) by the caller.
    topics = list_topics(settings.bootstrap_servers, extra, timeout_s=10).topics
    joined = (settings.predictions_topic, settings.labels_topic)
    counts = {
        name: len(meta.partitions)
        for name in joined
        if (meta := topics.get(name)) is not None and meta.error is None and meta.partitions
    }
    create = (
        f"scorestream topics create --bootstrap-servers {settings.bootstrap_servers} "
        f"--predictions-topic {settings.predictions_topic} "
        f"--labels-topic {settings.labels_topic} --partitions {{n}}"
    )
    for name, other in (joined, joined[::-1]):
        if name in counts:
            continue
        if other in counts:
            raise MonitorStartupError(
                f"topic {name!r} does not exist at {settings.bootstrap_servers}: create it with "
                f"{counts[other]} partitions, as many as {other!r} has (the monitor joins "
                f"partition i of one with partition i of the other): "
                f"`{create.format(n=counts[other])}`"
            )
        raise MonitorStartupError(
            f"topics {name!r} and {other!r} do not exist at {settings.bootstrap_servers}: "
            f"create both with the same partition count, e.g. `{create.format(n=4)}` (or "
            "start `scorestream infer`, which creates its predictions topic, and create the "
            "labels topic with as many partitions)"
        )
    if len(set(counts.values())) != 1:
        detail = " and ".join(f"{t!r} has {n}" for t, n in counts.items())
        most = max(counts.values())
        raise MonitorStartupError(
            f"{detail} partitions: the monitor joins partition i of one with partition i of "
            f"the other, so they need the same count. Raise the smaller to {most} "
            f"(kafka-topics.sh --alter --partitions {most}) or recreate both: "
            f"`{create.format(n=most)}`"
        )
    return counts[settings.predictions_topic]


class MonitorWorker:
    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        s = settings
        self.partitions = 0  # known once the cluster answers (run)
        identity = {
            "group_id": s.group_id,
            "predictions_topic": s.predictions_topic,
            "labels_topic": s.labels_topic,
            "features_topic": s.features_topic or "",
        }
        self.store = CheckpointStore(s.state_dir / "monitor.sqlite", identity, s.instance_id)
        restored = self.store.load_global()
        self.state: MonitorState = (
            dataclasses.replace(restored, config=s.config, joins={})
            if isinstance(restored, MonitorState)
            else MonitorState(s.config)
        )
        self.feature_decoder: EventDecoder | None = None
        if s.features_topic and s.manifest is not None:
            self._init_feature_drift(s.manifest)
        self.offsets: dict[tuple[str, int], int] = {}
        self.metrics = MonitorMetrics()
        self._assigned = False
        # What the last summary said; partitions handed back at shutdown leave `state` empty.
        self.last_counters: dict[str, int] = {}
        # Exactly-once: alerts raised since the last checkpoint, (key, value, created_at ms).
        self._outbox: list[tuple[bytes | None, bytes, int]] = []
        self.transactional_id = f"{s.group_id}.monitor.{s.instance_id}" if s.exactly_once else None
        # Producers stuck inside librdkafka, kept referenced: destroying one would block too.
        self.abandoned_producers: list[Producer] = []
        self.producer: Producer = self.new_producer()
        self.consumer: Consumer = make_consumer(
            s.bootstrap_servers,
            s.kafka_config,
            defaults={
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "fetch.queue.backoff.ms": 10,  # not 1 s of idling after a full local queue
                # Smaller per-partition fetches interleave the partitions of a backlog more
                # finely, so joined outcomes reach the rolling window closer to time order.
                "max.partition.fetch.bytes": 262_144,
            },
            required={
                "group.id": s.group_id,
                # Range assigns partition n of both topics to the same member: co-partitioned.
                "partition.assignment.strategy": "range",
                # The checkpoint is the source of truth; Kafka commits only show the lag.
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
            name="monitor-consumer",
        )

    def new_producer(self) -> Producer:
        s = self.settings
        required: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
        if self.transactional_id is not None:
            required["transactional.id"] = self.transactional_id
        return make_producer(
            s.bootstrap_servers, s.kafka_config, defaults={"linger.ms": 5},
            required=required, name="monitor-producer",
        )  # fmt: skip

    # -- exactly-once alerts: an outbox in the checkpoint, published in transactions ---------

    def _forget_published(self) -> None:
        """After a crash between publishing and clearing the outbox, some of its alerts are in
        the topic already: read the topic back from just before the oldest and drop those."""
        pending = self.store.outbox()
        if not pending:
            return
        since = min(at for _, at, _, _ in pending) - 60_000
        seen = _published_seqs(self.settings, self.transactional_id or "", since)
        done = [seq for seq, _, _, _ in pending if seq in seen]
        self.store.published(done)
        log.info("alert_outbox_recovered", published_before=len(done),
                 to_publish=len(pending) - len(done))  # fmt: skip

    def _publish(self) -> None:
        """Publish the outbox in one transaction; clear it once committed."""
        pending = self.store.outbox()
        if not pending:
            return
        producer = self.producer
        try:
            producer.begin_transaction()
            for seq, _, key, value in pending:
                headers: list[tuple[str, str | bytes | None]] = [
                           ("scorestream.transactional_id", self.transactional_id or ""),
                           ("scorestream.alert_seq", str(seq))]  # fmt: skip
                while True:
                    try:
                        producer.produce(self.settings.alerts_topic, value, key,
                                         headers=headers)  # fmt: skip
                        break
                    except BufferError:
                        producer.poll(0.1)
            # Bounded as the infer worker's commits are: librdkafka can block here past its
            # own timeout once the coordinator went away.
            bounded_call(lambda: producer.commit_transaction(30), TXN_CALL_LIMIT_S)
        except CallStuck:
            # Kept in the outbox; the stuck producer is set aside (destroying it would block
            # too) and a fresh one with the same transactional.id fences it.
            log.error("alerts_publish_stuck", waited_s=TXN_CALL_LIMIT_S, pending=len(pending))
            self.abandoned_producers.append(producer)
            self._replace_producer()
            return
        except KafkaException as exc:
            # Kept in the outbox: the next checkpoint tries again with a fresh producer.
            log.warning("alerts_not_published", reason=exc.args[0].str(), pending=len(pending))
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(10)
            with contextlib.suppress(KafkaException):
                producer.purge()
                producer.flush(0)
            self._replace_producer()
            return
        self.store.published(seq for seq, _, _, _ in pending)

    def _replace_producer(self) -> None:
        self.producer = self.new_producer()
        producer = self.producer
        try:
            bounded_call(lambda: producer.init_transactions(30), TXN_CALL_LIMIT_S)
        except CallStuck:
            log.error("init_transactions_stuck", waited_s=TXN_CALL_LIMIT_S)
            self.abandoned_producers.append(producer)
            self.producer = self.new_producer()  # initialised at the next publish's failure
        except KafkaException as exc:
            log.warning("init_transactions_failed", reason=exc.args[0].str())

    def _init_feature_drift(self, manifest: Manifest) -> None:
        summary = manifest.raw.get("feature_summary") or {}
        missing = [f for f in manifest.features if f not in summary]
        if missing:
            raise MonitorStartupError(
                f"{manifest.name} v{manifest.version} has no training summary for {missing}: "
                "retrain it with `scorestream train` to enable data-drift checks"
            )
        self.feature_decoder = EventDecoder(manifest.features)
        if self.state.feature_drift is None or self.state.feature_drift.names != manifest.features:
            self.state.feature_drift = FeatureDrift(
                manifest.features,
                [summary[f]["mean"] for f in manifest.features],
                [summary[f]["std"] for f in manifest.features],
                window=self.settings.feature_window,
                z_threshold=self.settings.feature_z_threshold,
            )
            self.state.feature_alerts = FeatureAlerts(manifest.name, manifest.version)

    # -- assignment: resume each partition from its checkpoint ------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        joined_topics = (self.settings.predictions_topic, self.settings.labels_topic)
        for tp in partitions:
            stored = self.store.offset(tp.topic, tp.partition)
            if stored is not None:
                tp.offset = stored
                self.offsets[(tp.topic, tp.partition)] = stored
            if tp.topic in joined_topics and tp.partition not in self.state.joins:
                join = self.store.load_partition(tp.partition)
                if join is not None:
                    self.state.joins[tp.partition] = join
        consumer.assign(partitions)
        self._assigned = True
        log.info("partitions_assigned", partitions=[_starting_at(tp) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.checkpoint()
        for tp in partitions:
            self.offsets.pop((tp.topic, tp.partition), None)
            if tp.topic == self.settings.predictions_topic:
                self.state.joins.pop(tp.partition, None)
        consumer.unassign()
        log.info(
            "partitions_revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
        )

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        tune_process()
        admin = AdminAccess(s.bootstrap_servers, s.kafka_config)

        def check(config: dict[str, Any]) -> None:
            self.partitions = check_partition_counts(s, config)

        if not admin.retry_until_ready(check, stop, what="topics"):
            self.consumer.close()
            self.store.close()
            return
        topics = [s.predictions_topic, s.labels_topic]
        if s.features_topic and self.feature_decoder is not None:
            topics.append(s.features_topic)
        log.info(
            "monitor_started",
            topics=topics,
            alerts_topic=s.alerts_topic,
            group_id=s.group_id,
            partitions=self.partitions,
            instance_id=s.instance_id,
            state=str(self.store.path),
            window=s.config.window,
            accuracy_threshold=s.config.rules.accuracy_threshold,
            detector=s.config.detector,
            label_ttl_ms=s.config.label_ttl_ms,
            max_pending=s.config.max_pending,
            kafka_config=redact(s.kafka_config),
        )
        if s.exactly_once:
            ready = init_transactions(self, stop, bootstrap_servers=s.bootstrap_servers)
            if not ready:
                self.consumer.close()
                self.store.close()
                return
            self._forget_published()
            self._publish()
        server = None
        if s.metrics_port is not None:
            server = MetricsServer(s.metrics_port, self.metrics.registry, lambda: self._assigned)
            server.start()
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            self._loop(stop)
        finally:
            try:
                self.checkpoint()
                self._log_summary()
            finally:
                self.consumer.close()
                self.producer.flush(10)
                self.store.close()
                if server is not None:
                    server.stop()
                # The partitions were handed back on close, their buffers with them: the last
                # summary's counters are the run's.
                log.info("monitor_stopped", **self.last_counters)

    def _loop(self, stop: threading.Event) -> None:
        s = self.settings
        next_checkpoint = time.monotonic() + s.checkpoint_interval_s
        next_summary = time.monotonic() + s.log_interval_s
        next_refresh = time.monotonic() + REFRESH_INTERVAL_S
        while not stop.is_set():
            msgs = self.consumer.consume(num_messages=s.batch_size, timeout=0.1)
            if msgs:
                self._process(msgs)
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_metrics()
                next_refresh = now + REFRESH_INTERVAL_S
            if now >= next_checkpoint:
                self.checkpoint()
                next_checkpoint = now + s.checkpoint_interval_s
            if now >= next_summary:
                self._log_summary()
                next_summary = now + s.log_interval_s

    def _process(self, msgs: list[Message]) -> None:
        s = self.settings
        state = self.state
        now_ms = time.time_ns() // 1_000_000
        alerts: list[Alert] = []
        seen: dict[str, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                    log.warning("consume_error", code=err.name(), reason=err.str())
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue
            seen[topic] = seen.get(topic, 0) + 1
            if topic == s.predictions_topic:
                alerts += state.on_prediction(partition, msg.value(), now_ms)
            elif topic == s.labels_topic:
                alerts += state.on_label(partition, msg.value(), msg.timestamp()[1], now_ms)
            elif self.feature_decoder is not None:
                decoded = self.feature_decoder.decode(msg.value())
                if not isinstance(decoded, InvalidEvent):
                    alerts += state.on_features(decoded[1], now_ms)
            self.offsets[(topic, partition)] = offset + 1
        self._count_consumed(seen)
        for alert in alerts:
            self._raise(alert)

    def _count_consumed(self, per_topic: dict[str, int]) -> None:
        s = self.settings
        streams = {s.predictions_topic: "predictions", s.labels_topic: "labels"}
        for topic, count in per_topic.items():
            self.metrics.consumed.labels(streams.get(topic, "features")).inc(count)

    def _raise(self, alert: Alert) -> None:
        if self.settings.redact_features:
            alert = redacted(alert)
        fields: dict[str, Any] = {k: v for k, v in alert.fields().items() if v is not None}
        name = fields.pop("alert")
        # A log filter on level must catch a critical alert: the level is its severity.
        getattr(alert_log, LOG_LEVEL_OF_SEVERITY.get(alert.severity, "warning"))(
            name, alert=name, **fields
        )
        self.metrics.alerts.labels(name).inc()
        encoded = msgspec.json.encode(alert)
        if self.settings.exactly_once:
            self._outbox.append((alert.model_name.encode(), encoded, time.time_ns() // 1_000_000))
            return
        while True:
            try:
                self.producer.produce(
                    self.settings.alerts_topic, encoded, alert.model_name.encode()
                )
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def checkpoint(self) -> None:
        """Alerts acknowledged, then state and offsets stored together, then Kafka told.

        Exactly-once: state, offsets and the alerts that state raised are stored together,
        then the alerts are published in a transaction and dropped from the outbox."""
        if self.settings.exactly_once:
            global_state = dataclasses.replace(self.state, joins={})
            self.store.save(global_state, dict(self.state.joins), self.offsets, self._outbox)
            self._outbox = []
            self._publish()
            self._commit_positions()
            return
        if self.producer.flush(30) > 0:
            log.warning("checkpoint_deferred", reason="alerts not yet acknowledged")
            return
        global_state = dataclasses.replace(self.state, joins={})
        self.store.save(global_state, dict(self.state.joins), self.offsets)
        self._commit_positions()

    def _commit_positions(self) -> None:
        """Kafka's committed offsets only show the lag: the checkpoint is the truth."""
        if self.offsets:
            try:
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in self.offsets.items()],
                    asynchronous=True,
                )
            except KafkaException as exc:
                log.warning("commit_failed", reason=str(exc))

    def _refresh_metrics(self) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        """Swap in a new metrics snapshot; return the counters and per-version metrics it was
        made from (the summary line logs the same)."""
        lags = partition_lags(self.consumer)
        counters, versions = self.state.counters(), self.state.metrics()
        accuracy, joined = {}, {}
        for key, values in versions.items():
            model, version = key.rsplit("/v", 1)
            joined[(model, version)] = values["joined"]
            if values["window_accuracy"] is not None:
                accuracy[(model, version)] = values["window_accuracy"]
        self.metrics.snapshot.snapshot = MetricsSnapshot(
            lag=self.metrics.snapshot.snapshot.lag if lags is None else lags,
            counters=counters,
            accuracy=accuracy,
            version_joined=joined,
        )
        return counters, versions

    def _log_summary(self) -> None:
        counters, versions = self._refresh_metrics()
        self.last_counters = counters
        log.info(
            "monitor_summary",
            **counters,
            versions=versions,
            alerts=dict(self.state.alerts_raised),
        )
