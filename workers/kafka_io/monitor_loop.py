"""The monitor worker's loop: consume predictions, labels (and features), checkpoint, alert."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from workers.checkpoint import CheckpointStore
from workers.core.alerts import Alert, FeatureAlerts, redacted
from workers.core.calibrated_drift import ReferenceDrift
from workers.core.drift import FeatureDrift
from workers.core.events import EventDecoder, InvalidEvent
from workers.core.kind_drift import KindDrift
from workers.core.label_join import UNFIT_FIXES, LabelJoin
from workers.core.monitor import (
    Misplaced,
    MonitorConfig,
    MonitorState,
    ReferenceLookup,
    label_error,
)
from workers.core.partitioning import partition_of
from workers.drift_reference import DriftReferenceError, ModelReferences
from workers.drift_reference import load as load_reference
from workers.kafka_io.admin import create_topics, list_topics
from workers.kafka_io.clients import (
    TXN_CALL_LIMIT_S,
    AdminAccess,
    CallStuck,
    bounded_call,
    init_transactions,
    make_consumer,
    make_producer,
    partition_lags,
    produce_when_room,
    redact,
    retire,
)
from workers.metrics import REFRESH_INTERVAL_S, MetricsServer, MetricsSnapshot, MonitorMetrics
from workers.model_store import NO_KEYS, Manifest
from workers.process_tuning import tune_process
from workers.signing import Verifier

log = structlog.get_logger("scorestream.monitor")


def alert_seq(msg: Message, transactional_id: str) -> int | None:
    """The sequence number this monitor instance gave an alert it published; None for any
    other record (another instance's, another producer's, a header that is not ours)."""
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    found = dict(headers)
    if found.get("scorestream.transactional_id") != transactional_id.encode():
        return None
    seq = found.get("scorestream.alert_seq") or b""
    return int(seq) if seq.isdigit() and len(seq) < 20 else None


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
                seq = alert_seq(msg, transactional_id)
                if seq is not None:
                    seqs.add(seq)
        return seqs
    finally:
        consumer.close()


SOURCE_HEADER = "scorestream.source"
PREDICTION_SOURCE_HEADER = "scorestream.prediction_source"


def forwarding(
    msg: Message, partition: int, offset: int, *, prediction: bool = False
) -> dict[str, Any]:
    """How a label (or a mis-partitioned prediction) read at `partition`/`offset` is re-keyed:
    a header saying where it came from (read back by `forwarded_from`) and its own time."""
    name = PREDICTION_SOURCE_HEADER if prediction else SOURCE_HEADER
    return {
        "headers": [(name, f"{partition}:{offset}".encode())],
        # A label without label_time is timed by its record; 0 lets the client stamp one
        # that had none.
        "timestamp": max(msg.timestamp()[1], 0),
    }


def forwarded_from(msg: Message) -> tuple[bool, tuple[int, int]]:
    """Whether a repartition record is a re-keyed prediction, and where it was first read
    (partition, offset). A record no monitor forwarded (or whose header is not ours) is a
    label taken as it comes, placed by its own offset."""
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    for name, value in headers:
        if name in (SOURCE_HEADER, PREDICTION_SOURCE_HEADER) and value:
            partition, sep, offset = value.partition(b":")
            if sep and partition.isdigit() and offset.isdigit() and len(value) < 40:
                return name == PREDICTION_SOURCE_HEADER, (int(partition), int(offset))
    return False, (-1, msg.offset() or 0)


MISPLACED_FIX = (
    "produce Predictions keyed by event_id with the Java clients' partitioner (murmur2; "
    "librdkafka's partitioner=murmur2_random, as `scorestream infer` does): until then each "
    "is re-keyed through the repartition topic, which costs a produce and a read"
)


class OncePerPartition:
    """Logs a warning about bad input once per (event, partition): the counters say how many."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()

    def __call__(self, event: str, partition: int, **fields: Any) -> None:  # noqa: ANN401
        if (event, partition) in self.seen:
            return
        self.seen.add((event, partition))
        log.warning(event, partition=partition, **fields)

    def misplaced(self, topic: str, partition: int, key: bytes, partitions: int) -> None:
        self("predictions_misplaced", partition, topic=topic,
             event_id=key.decode(errors="replace")[:256],
             expected_partition=partition_of(key, partitions), fix=MISPLACED_FIX)  # fmt: skip

    def unforwardable(self, msg: Message, partition: int, max_label_bytes: int) -> None:
        """A label too large for this monitor (or, re-keyed, for the broker)."""
        self("label_too_large", partition, topic=msg.topic(), offset=msg.offset(),
             bytes=len(msg.value() or b""), max_label_bytes=max_label_bytes,
             fix="labels carry an event_id and a label; if yours must be larger, raise "
             "--max-label-bytes and the repartition topic's max.message.bytes")  # fmt: skip


class UnfitLabels:
    """Logs labels that met their prediction and did not fit it, with the event_id and the
    fix: the first of each reason, then at most one a minute (the counters say how many)."""

    INTERVAL_S = 60.0

    def __init__(self) -> None:
        self.next_at: dict[str, float] = {}

    def _allow(self, reason: str) -> bool:
        now = time.monotonic()
        if now < self.next_at.get(reason, 0.0):
            return False
        self.next_at[reason] = now + self.INTERVAL_S
        return True

    def unreadable(self, msg: Message, partition: int) -> None:
        """A label that is no Label at all (truncated JSON, no event_id): said where it is."""
        if self._allow("unreadable"):
            log.warning("label_invalid", topic=msg.topic(), partition=partition,
                        offset=msg.offset(), reason=label_error(msg.value()),
                        fix='a label is {"event_id": "...", "label": ..., "label_time": '
                        "epoch ms (optional)} in UTF-8 JSON")  # fmt: skip

    def drain(self, joins: Iterable[LabelJoin]) -> None:
        for join in joins:
            if not join.unfit_seen:
                continue
            for unfit in join.unfit_seen:
                if not self._allow(unfit.reason):
                    continue
                log.warning("label_unfit", event_id=unfit.event_id, model=unfit.model_name,
                            version=unfit.model_version, label=repr(unfit.label)[:100],
                            reason=unfit.reason, fix=UNFIT_FIXES[unfit.reason])  # fmt: skip
            join.unfit_seen.clear()


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
    # The folder of `manifest`'s model: each version's drift reference and calibration.
    model_dir: Path | None = None
    verifier: Verifier = NO_KEYS
    feature_window: int = 200
    shape_window: int = 500
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

    @property
    def repartition_topic(self) -> str:
        """Labels re-keyed by event_id with the predictions' partitioner, owned by the group."""
        return f"{self.group_id}-labels-repartition"


def check_topics(settings: MonitorSettings, admin_config: dict[str, Any] | None = None) -> int:
    """Predictions and labels must exist (labels with any partition count and partitioner);
    the repartition topic is made with as many partitions as predictions. Return that count."""
    config: dict[str, Any] = dict(settings.kafka_config if admin_config is None else admin_config)
    s = settings
    # Short: an unreachable cluster is retried (with backoff and a log line) by the caller.
    topics = list_topics(s.bootstrap_servers, config, timeout_s=10).topics
    counts = {
        name: len(meta.partitions)
        for name in (s.predictions_topic, s.labels_topic, s.repartition_topic)
        if (meta := topics.get(name)) is not None and meta.error is None and meta.partitions
    }
    create = (
        f"scorestream topics create --bootstrap-servers {s.bootstrap_servers} "
        f"--predictions-topic {s.predictions_topic} --labels-topic {s.labels_topic}"
    )
    missing = [t for t in (s.predictions_topic, s.labels_topic) if t not in counts]
    if missing:
        raise MonitorStartupError(
            f"{' and '.join(repr(t) for t in missing)} "
            f"{'does' if len(missing) == 1 else 'do'} not exist at {s.bootstrap_servers}: "
            f"create {'it' if len(missing) == 1 else 'them'} with `{create}` (or start "
            "`scorestream infer`, which creates its predictions topic)"
        )
    partitions = counts[s.predictions_topic]
    rekeyed = counts.get(s.repartition_topic)
    if rekeyed is None:
        create_topics(s.bootstrap_servers, {s.repartition_topic: partitions},
                      client_config=config)  # fmt: skip
        log.info("topics_created", topics=[s.repartition_topic], partitions=partitions)
    elif rekeyed != partitions:
        raise MonitorStartupError(
            f"the monitor's repartition topic {s.repartition_topic!r} has {rekeyed} partitions "
            f"and {s.predictions_topic!r} has {partitions}: they must match. Delete "
            f"{s.repartition_topic!r} (it holds only labels in transit; the monitor makes it "
            "again) or use another --group-id"
        )
    return partitions


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
        # What the state file is for; another monitor sharing it must have the same.
        self.store_identity = identity
        self.store = CheckpointStore(s.state_dir / "monitor.sqlite", identity, s.instance_id)
        self.references = (
            ReferenceLookup() if s.model_dir is None or s.manifest is None
            else ModelReferences(s.model_dir, s.manifest.name, s.verifier)
        )  # fmt: skip
        self.state: MonitorState = self._stored_state(s.config)
        self.feature_decoder: EventDecoder | None = None
        if s.features_topic and s.manifest is not None:
            self._init_feature_drift(s.manifest)
        self.offsets: dict[tuple[str, int], int] = {}
        self._once = OncePerPartition()
        self.metrics = MonitorMetrics()
        self._assigned = False
        # What the last summary said; partitions handed back at shutdown leave `state` empty.
        self.last_counters: dict[str, int] = {}
        # Exactly-once: alerts raised since the last checkpoint, (key, value, created_at ms).
        self._outbox: list[tuple[bytes | None, bytes, int]] = []
        self.transactional_id = f"{s.group_id}.monitor.{s.instance_id}" if s.exactly_once else None
        # Producers stuck inside librdkafka, kept referenced: destroying one would block too.
        self.abandoned_producers: list[Producer] = []
        # Set when a bug stopped a batch half-way: nothing is checkpointed from then on.
        self.torn = False
        self.producer: Producer = self.new_producer()
        # Labels re-keyed onto the repartition topic; a failed one is reported here.
        self._forward_failed: KafkaError | None = None
        self._unfit = UnfitLabels()
        self._forwarder_generation = 0
        self.forwarder: Producer = self._new_forwarder()
        # At-least-once: alerts handed to the producer and not yet acknowledged, by sequence;
        # a failed one is produced again before the state that raised it is checkpointed.
        self._alert_seq = 0
        self._unacked_alerts: dict[int, tuple[bytes | None, bytes]] = {}
        self._failed_alerts: dict[int, str] = {}
        # The partitions this instance holds, with the generation it claimed them at.
        self._claims: dict[tuple[str, int], int] = {}
        self.consumer = monitor_consumer(s.bootstrap_servers, s.kafka_config, s.group_id,
                                         "monitor-consumer")  # fmt: skip

    def _new_forwarder(self) -> Producer:
        self._forwarder_generation += 1
        generation = self._forwarder_generation

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # A replaced forwarder's purged records say nothing of the current one.
            current = generation == self._forwarder_generation
            if err is not None and current and self._forward_failed is None:
                self._forward_failed = err

        s = self.settings
        return make_producer(
            s.bootstrap_servers, s.kafka_config, defaults={"linger.ms": 5},
            required={
                # The predictions' partitioner: a label lands on its prediction's partition.
                "partitioner": "murmur2_random",
                # In order and without gaps per partition, so a label forwarded twice (after a
                # restart) is recognised by its source offset; any failure is fatal instead.
                "enable.idempotence": True,
                "enable.gapless.guarantee": True,
                # Which does not cover a record that times out: one retried after an outage
                # would land behind later ones and be taken for a replay. Never given up on;
                # the checkpoint waits for it instead.
                "message.timeout.ms": 0,
                "acks": "all",
                "delivery.report.only.error": True,
                "on_delivery": on_delivery,
            },
            name="monitor-forwarder",
        )  # fmt: skip

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
                produce_when_room(producer, self.settings.alerts_topic, value, key,
                                  headers=headers)  # fmt: skip
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
        s = self.settings
        self.feature_decoder = attach_feature_drift(
            self.state, manifest, s.model_dir, feature_window=s.feature_window,
            shape_window=s.shape_window, z_threshold=s.feature_z_threshold,
        )  # fmt: skip

    # -- assignment: resume each partition from its checkpoint ------------------------------

    def _joined(self, topic: str) -> bool:
        """Topics whose partition n feeds join buffer n."""
        return topic in (self.settings.predictions_topic, self.settings.repartition_topic)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._claims.update(self.store.claim([(tp.topic, tp.partition) for tp in partitions]))
        for tp in partitions:
            stored = self._restore(tp.topic, tp.partition)
            if stored is not None:
                tp.offset = stored
        consumer.assign(partitions)
        self._assigned = True
        log.info("partitions_assigned", partitions=[_starting_at(tp) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self.torn and not self.checkpoint():
            # What this instance counted since its last checkpoint came (in part) from these
            # partitions, which their next owner re-reads from that checkpoint: counted there,
            # it must not stay counted here.
            self._reload_state("the checkpoint on revoke could not be saved")
        self._drop(partitions)
        consumer.unassign()
        log.info(
            "partitions_revoked", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member owns them already: their state is discarded, never written, and
        what was counted from them since the last checkpoint is taken back."""
        self._reload_state("partitions lost")
        self._drop(partitions)
        consumer.unassign()
        log.warning(
            "partitions_lost", partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions]
        )

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.offsets.pop((tp.topic, tp.partition), None)
            self._claims.pop((tp.topic, tp.partition), None)
            if self._joined(tp.topic):
                self.state.joins.pop(tp.partition, None)

    def _stored_state(self, config: MonitorConfig) -> MonitorState:
        """This instance's state as last checkpointed (join buffers come with partitions)."""
        restored = self.store.load_global()
        if isinstance(restored, MonitorState):
            # A checkpoint written before a field existed: that field starts as new.
            fresh = MonitorState(config)
            for f in dataclasses.fields(MonitorState):
                if not hasattr(restored, f.name):
                    setattr(restored, f.name, getattr(fresh, f.name))
            return dataclasses.replace(
                restored, config=config, joins={}, references=self.references
            )
        return MonitorState(config, references=self.references)

    def _restore(self, topic: str, partition: int) -> int | None:
        """A partition's checkpointed offset (None: none stored) and, for a joined topic, its
        join buffers; both become this instance's."""
        stored = self.store.offset(topic, partition)
        if stored is not None:
            self.offsets[(topic, partition)] = stored
        if self._joined(topic) and partition not in self.state.joins:
            join = self.store.load_partition(partition)
            if join is not None:
                self.state.adopt(partition, join)
        return stored

    def _reload_state(self, reason: str) -> None:
        """Back to the last checkpoint: state, join buffers and offsets of what is held, and
        the consumer's positions; the records since are read (and counted) again."""
        s = self.settings
        self.state = self._stored_state(self.state.config)
        if s.features_topic and s.manifest is not None:
            self._init_feature_drift(s.manifest)
        self._outbox = []
        self._unacked_alerts.clear()
        self._failed_alerts.clear()
        rewound = []
        for topic, partition in self._claims:
            self.offsets.pop((topic, partition), None)
            stored = self._restore(topic, partition)
            rewound.append(TopicPartition(topic, partition, OFFSET_BEGINNING if stored is None
                                          else stored))  # fmt: skip
        for tp in rewound:
            with contextlib.suppress(KafkaException):  # not fetching yet: starts there anyway
                self.consumer.seek(tp)
        log.warning("state_reloaded", reason=reason, partitions=len(rewound),
                    to="the last checkpoint; records since are read again")  # fmt: skip

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        tune_process()
        admin = AdminAccess(s.bootstrap_servers, s.kafka_config)

        def check(config: dict[str, Any]) -> None:
            self.partitions = check_topics(s, config)
            self.state.config = dataclasses.replace(self.state.config, partitions=self.partitions)

        if not admin.retry_until_ready(check, stop, what="topics"):
            self.consumer.close()
            self.store.close()
            return
        topics = [s.predictions_topic, s.labels_topic, s.repartition_topic]
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
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            self._loop(stop)
        finally:
            try:
                self.checkpoint()
                self._log_summary()
            finally:
                self.consumer.close()
                self.producer.flush(10)
                self.forwarder.flush(10)
                self.store.close()
                if server is not None:
                    server.stop()
                # The partitions were handed back on close, their buffers with them: the last
                # summary's counters are the run's.
                log.info("monitor_stopped", **self.last_counters)

    def _loop(self, stop: threading.Event) -> None:
        s = self.settings

        def step() -> None:
            msgs = self.consumer.consume(num_messages=s.batch_size, timeout=0.1)
            if msgs:
                self._process(msgs)

        loop_until(stop, step, [(REFRESH_INTERVAL_S, self._refresh_metrics),
                                (REFRESH_INTERVAL_S, self._tick_joins),
                                (s.checkpoint_interval_s, self.checkpoint),
                                (s.log_interval_s, self._log_summary)],
                   on_bug=self._tear)  # fmt: skip

    def _tick_joins(self) -> None:
        """A join's idle sources stop holding its clock even when nothing more arrives."""
        now_ms = time.time_ns() // 1_000_000
        for join in self.state.joins.values():
            join.tick(now_ms)

    def _tear(self) -> None:
        """A bug mid-batch: nothing of the half-applied batch may be stored (an alert's
        firing never published, a label marked seen before it joined); the restart resumes
        from the last checkpoint."""
        self.torn = True

    def _process(self, msgs: list[Message]) -> None:
        now_ms = time.time_ns() // 1_000_000
        alerts: list[Alert] = []
        seen: dict[str, int] = {}
        for msg, topic, partition, offset in records(msgs):
            seen[topic] = seen.get(topic, 0) + 1
            alerts += self._one(msg, topic, partition, offset, now_ms)
            self.offsets[(topic, partition)] = offset + 1
        self.forwarder.poll(0)  # delivery reports of the labels forwarded, once a batch
        self._count_consumed(seen)
        self._unfit.drain(self.state.joins.values())
        for alert in alerts:
            self._raise(alert)

    def _one(
        self, msg: Message, topic: str, partition: int, offset: int, now_ms: int
    ) -> list[Alert]:
        s, state = self.settings, self.state
        if topic == s.predictions_topic:
            result = state.on_prediction(partition, msg.value(), now_ms, msg.timestamp()[1])
            if isinstance(result, Misplaced):
                self._forward_prediction(msg, partition, offset, result.key)
                return []
            return result
        if topic == s.repartition_topic:
            prediction, source = forwarded_from(msg)
            return state.on_forwarded(partition, msg.value(), msg.timestamp()[1], source,
                                      now_ms, prediction=prediction)  # fmt: skip
        if topic == s.labels_topic:
            self._forward(msg, partition, offset)
            return []
        if self.feature_decoder is not None:
            decoded = self.feature_decoder.decode(msg.value())
            if not isinstance(decoded, InvalidEvent):
                return state.on_features(decoded[1], now_ms)
        return []

    def _forward(self, msg: Message, partition: int, offset: int) -> None:
        """Re-key a label by its event_id onto the repartition topic, where it meets its
        prediction's partition whatever partitioner its producer used."""
        key = self.state.label_key(msg.value())
        if key is None:
            if len(msg.value() or b"") > self.state.config.max_label_bytes:
                self._once.unforwardable(msg, partition, self.state.config.max_label_bytes)
            else:
                self._unfit.unreadable(msg, partition)
            return
        self._rekey(msg, partition, offset, key, prediction=False)

    def _forward_prediction(self, msg: Message, partition: int, offset: int, key: bytes) -> None:
        """Re-key a prediction another producer's partitioner placed by its event_id, onto
        the repartition partition its label goes to (as Kafka Streams repartitions a side
        that is not co-partitioned)."""
        s = self.settings
        self._once.misplaced(s.predictions_topic, partition, key, self.state.config.partitions)
        self._rekey(msg, partition, offset, key, prediction=True)

    def _rekey(
        self, msg: Message, partition: int, offset: int, key: bytes, *, prediction: bool
    ) -> None:
        try:
            how = forwarding(msg, partition, offset, prediction=prediction)
            produce_when_room(self.forwarder, self.settings.repartition_topic, msg.value(), key,
                              **how)  # fmt: skip
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # this record, never any other
                if prediction:
                    self.state.invalid_predictions += 1
                else:
                    self.state.invalid_labels += 1
                self._once.unforwardable(msg, partition, self.state.config.max_label_bytes)
            elif self._forward_failed is None:
                # The forwarder failed (fatal): the checkpoint replaces it and reads again.
                self._forward_failed = err

    def _count_consumed(self, per_topic: dict[str, int]) -> None:
        s = self.settings
        streams = {
            s.predictions_topic: "predictions",
            s.labels_topic: "labels",
            s.repartition_topic: "labels_repartitioned",
        }
        for topic, count in per_topic.items():
            self.metrics.consumed.labels(streams.get(topic, "features")).inc(count)

    def _raise(self, alert: Alert) -> None:
        encoded = announce(alert, self.metrics, redact=self.settings.redact_features)
        if self.settings.exactly_once:
            self._outbox.append((alert.model_name.encode(), encoded, time.time_ns() // 1_000_000))
            return
        self._alert_seq += 1
        self._send_alert(self._alert_seq, alert.model_name.encode(), encoded)

    def _send_alert(self, seq: int, key: bytes | None, value: bytes) -> None:
        """Produce an alert and keep it until the broker acknowledges it."""
        self._unacked_alerts[seq] = (key, value)

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._unacked_alerts.pop(seq, None)
                self._failed_alerts.pop(seq, None)
            elif seq in self._unacked_alerts:
                self._failed_alerts[seq] = err.str()

        try:
            produce_when_room(self.producer, self.settings.alerts_topic, value, key,
                              on_delivery=on_delivery)  # fmt: skip
        except KafkaException as exc:  # after an earlier failure: kept, the checkpoint retries
            self._failed_alerts[seq] = exc.args[0].str()
        self.producer.poll(0)

    def checkpoint(self) -> bool:
        """Outputs acknowledged, then state and offsets stored together, then Kafka told;
        True once stored.

        What a checkpoint stores must not run ahead of what the broker has: the labels
        forwarded for the labels offsets it stores, and (at-least-once) the alerts its state
        raised. Exactly-once: state, offsets and the alerts that state raised are stored
        together, then the alerts are published in a transaction and dropped from the outbox."""
        if self.torn or not self._forwards_acknowledged():
            return False
        if not self.settings.exactly_once and not self._alerts_acknowledged():
            return False
        global_state = dataclasses.replace(self.state, joins={})
        outbox = self._outbox if self.settings.exactly_once else ()
        if not self.store.save(global_state, dict(self.state.joins), self.offsets, outbox,
                               owned=self._claims):  # fmt: skip
            # Another instance claimed one of our partitions meanwhile (this one stalled past
            # its session): our view is stale and must not overwrite the new owner's.
            self._reload_state("another monitor instance owns some of these partitions now")
            return False
        if self.settings.exactly_once:
            self._outbox = []
            self._publish()
        self._commit_positions()
        return True

    def _forwards_acknowledged(self) -> bool:
        if self.forwarder.flush(30) > 0:
            log.warning("checkpoint_deferred", reason="re-keyed labels not yet acknowledged")
            return False
        failed, self._forward_failed = self._forward_failed, None
        if failed is None:
            return True
        # Gapless: nothing after the failed one was written either. Everything since the
        # last checkpoint is read and forwarded again (what did land is recognised).
        log.error("labels_not_forwarded", reason=failed.str(),
                  topic=self.settings.repartition_topic,
                  fix="check that the monitor may write its repartition topic")  # fmt: skip
        self._replace_forwarder()
        self._reload_state("a re-keyed label was not delivered")
        return False

    def _replace_forwarder(self) -> None:
        old, self.forwarder = self.forwarder, self._new_forwarder()
        retire(old)

    def _alerts_acknowledged(self) -> bool:
        self.producer.flush(30)
        if not self._unacked_alerts:
            return True
        failed = dict(self._failed_alerts)
        log.warning(
            "checkpoint_deferred",
            reason=f"{len(self._unacked_alerts)} alert(s) not acknowledged",
            first_error=next(iter(failed.values()), None),
            alerts_topic=self.settings.alerts_topic,
            fix="check that the alerts topic exists and this client may write it; the alerts "
            "are sent again and the state that raised them is kept until they are in",
        )
        for seq in failed:  # sent again; the state that raised them waits for them
            self._failed_alerts.pop(seq, None)
            key, value = self._unacked_alerts[seq]
            self._send_alert(seq, key, value)
        return False

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
        counters, versions = self.state.counters(), self.state.metrics()
        publish_metrics(self.metrics, partition_lags(self.consumer), counters, versions)
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


def announce(alert: Alert, metrics: MonitorMetrics, *, redact: bool) -> bytes:
    """Log an alert (its level is its severity), count it; return the record to publish."""
    if redact:
        alert = redacted(alert)
    fields: dict[str, Any] = {k: v for k, v in alert.fields().items() if v is not None}
    name = fields.pop("alert")
    # A log filter on level must catch a critical alert: the level is its severity.
    getattr(alert_log, LOG_LEVEL_OF_SEVERITY.get(alert.severity, "warning"))(
        name, alert=name, **fields
    )
    metrics.alerts.labels(name).inc()
    return msgspec.json.encode(alert)


def publish_metrics(
    metrics: MonitorMetrics,
    lags: dict[tuple[str, int], int] | None,
    counters: dict[str, int],
    versions: dict[str, dict[str, Any]],
) -> None:
    """Swap in a new metrics snapshot made from these counters and per-version metrics."""
    joined: dict[tuple[str, str], int] = {}
    accuracy: dict[tuple[str, str], float] = {}
    mae: dict[tuple[str, str], float] = {}
    rmse: dict[tuple[str, str], float] = {}
    estimated: dict[tuple[str, str], float] = {}
    gap: dict[tuple[str, str], float] = {}
    for key, values in versions.items():
        model, version = key.rsplit("/v", 1)
        joined[(model, version)] = values["joined"]
        for gauge, field_name in ((accuracy, "window_accuracy"), (mae, "window_mae"),
                                  (rmse, "window_rmse"), (estimated, "estimated_accuracy"),
                                  (gap, "estimation_gap")):  # fmt: skip
            if values.get(field_name) is not None:
                gauge[(model, version)] = values[field_name]
    metrics.snapshot.snapshot = MetricsSnapshot(
        lag=metrics.snapshot.snapshot.lag if lags is None else lags,
        counters=counters,
        accuracy=accuracy,
        version_joined=joined,
        mae=mae,
        rmse=rmse,
        estimated_accuracy=estimated,
        estimation_gap=gap,
    )


def attach_feature_drift(  # noqa: PLR0913 - the version and its windows
    state: MonitorState,
    manifest: Manifest,
    model_dir: Path | None,
    *,
    feature_window: int,
    shape_window: int,
    z_threshold: float,
) -> EventDecoder:
    """Give `state` data-drift checks for `manifest`'s version (a checkpointed set of the same
    kind and reference is kept); return the decoder of its FeatureEvents."""
    decoder = _attach_reference_drift(state, manifest, model_dir, feature_window, shape_window)
    if decoder is not None:
        return decoder
    summary = manifest.raw.get("feature_summary") or {}
    missing = [f for f in manifest.features if f not in summary]
    if missing:
        raise MonitorStartupError(
            f"{manifest.name} v{manifest.version} has no training summary for {missing}: "
            "register it with --training-data and --target (or train it with "
            "`scorestream train`) to enable data-drift checks"
        )
    decoder = EventDecoder(manifest.specs)
    drift = state.feature_drift
    plain = decoder.plain_numeric
    wanted = FeatureDrift if plain else KindDrift
    # A checkpoint from before a check's fields existed starts that check afresh.
    outdated = isinstance(drift, FeatureDrift) and not hasattr(drift, "constant")
    if not isinstance(drift, wanted) or drift.names != manifest.features or outdated:
        if plain:
            state.feature_drift = FeatureDrift(
                manifest.features,
                [summary[f]["mean"] for f in manifest.features],
                [summary[f]["std"] for f in manifest.features],
                window=feature_window,
                z_threshold=z_threshold,
                constant=[
                    "min" in summary[f] and summary[f]["min"] == summary[f].get("max")
                    for f in manifest.features
                ],
            )
        else:
            state.feature_drift = KindDrift(
                manifest.specs,
                summary,
                window=feature_window,
                z_threshold=z_threshold,
            )
        state.feature_alerts = FeatureAlerts(manifest.name, manifest.version)
    return decoder


def _attach_reference_drift(
    state: MonitorState,
    manifest: Manifest,
    model_dir: Path | None,
    feature_window: int,
    shape_window: int,
) -> EventDecoder | None:
    """Checks calibrated on the version's reference, when it has one; a checkpointed set
    is kept if it was calibrated on the same reference with the same windows."""
    if model_dir is None:
        return None
    try:
        reference = load_reference(model_dir / str(manifest.version), manifest.raw)
    except DriftReferenceError as exc:
        raise MonitorStartupError(str(exc)) from exc
    if reference is None:
        return None
    decoder = EventDecoder(manifest.specs)
    sha256 = str(manifest.raw["reference"]["sha256"])
    windows = (feature_window, shape_window, shape_window)
    drift = state.feature_drift
    if not (
        isinstance(drift, ReferenceDrift) and drift.sha256 == sha256 and drift.windows == windows
    ):
        drift = state.feature_drift = ReferenceDrift(
            reference.features, reference.numeric, reference.columns, window=feature_window,
            shape_window=shape_window, multivariate_window=shape_window, sha256=sha256,
        )  # fmt: skip
        state.feature_alerts = FeatureAlerts(manifest.name, manifest.version)
    log.info(
        "data_drift_checks", model=manifest.name, version=manifest.version,
        reference_rows=reference.rows, window=feature_window, shape_window=shape_window,
        multivariate=list(drift.multivariate.names) if drift.multivariate.enabled else [],
        features=drift.univariate.describe(),
    )  # fmt: skip
    return decoder


def monitor_consumer(
    bootstrap_servers: str, kafka_config: dict[str, str], group_id: str, name: str
) -> Consumer:
    """The consumer of a monitor group (either monitor, either stage)."""
    return make_consumer(
        bootstrap_servers,
        kafka_config,
        defaults={
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            "fetch.queue.backoff.ms": 10,  # not 1 s of idling after a full local queue
            # Smaller per-partition fetches interleave the partitions of a backlog more
            # finely, so joined outcomes reach the rolling window closer to time order.
            "max.partition.fetch.bytes": 262_144,
        },
        required={
            "group.id": group_id,
            # Range gives partition n of every subscribed topic (predictions, the re-keyed
            # labels) to one member.
            "partition.assignment.strategy": "range",
            # The checkpoint is the source of truth; Kafka commits only show the lag.
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        },
        name=name,
    )


def records(msgs: list[Message]) -> Iterator[tuple[Message, str, int, int]]:
    """Each record of a batch with its topic, partition and offset; errors other than the
    end of a partition are logged and skipped."""
    for msg in msgs:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                log.warning("consume_error", code=err.name(), reason=err.str())
            continue
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is not None and partition is not None and offset is not None:
            yield msg, topic, partition, offset


def loop_until(
    stop: threading.Event,
    step: Callable[[], None],
    every: list[tuple[float, Callable[[], Any]]],
    on_bug: Callable[[], None],
) -> None:
    """Call `step` until stopped, and each task of `every` (interval s, task) when due;
    `on_bug` before an exception leaves."""
    due = [time.monotonic() + interval for interval, _ in every]
    try:
        while not stop.is_set():
            step()
            now = time.monotonic()
            for i, (interval, task) in enumerate(every):
                if now >= due[i]:
                    task()
                    due[i] = now + interval
    except BaseException:
        on_bug()
        raise
