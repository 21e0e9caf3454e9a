"""The monitor split in two stages over Kafka, for more than one machine.

`join`: predictions and labels (re-keyed by event_id onto the repartition topic, as the
one-process monitor does) meet per partition; every joined pair, expired prediction and orphan
label becomes an Outcome record on the outcomes topic, keyed by model version. `aggregate`:
reads the outcomes and keeps each version's rolling metrics, concept drift and alerts, so a
version's figures are global whichever partitions its events came through.

Each stage keeps its state per partition of what it consumes and writes it, with the offsets it
covers, to a compacted changelog topic at every checkpoint: a partition resumes on any instance
on any machine from its last snapshot. Exactly-once, the snapshot, the outputs since the last
checkpoint and the consumed offsets commit in one transaction; at-least-once, outputs are
acknowledged before the snapshot that covers them is written, so a crash repeats some outcomes
(which the aggregate stage recognises and counts) and loses none.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

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

from workers.core import snapshots
from workers.core.alerts import Alert
from workers.core.events import EventDecoder, InvalidEvent
from workers.core.monitor import Misplaced, MonitorConfig, MonitorState, ReferenceLookup, label_key
from workers.core.outcomes import (
    OUTCOME_ENCODER,
    AggregatePartition,
    JoinPartition,
    LeadChecks,
    sum_counters,
)
from workers.drift_reference import ModelReferences
from workers.kafka_io.admin import create_topics, list_topics
from workers.kafka_io.changelog import (
    CHANGELOG_CONFIG,
    claim_record,
    new_writer_id,
    partition_count,
    read_snapshots,
    snapshot_records,
)
from workers.kafka_io.clients import (
    TXN_CALL_LIMIT_S,
    AdminAccess,
    CallStuck,
    bounded_call,
    committed_offsets,
    init_transactions,
    make_consumer,
    make_producer,
    partition_lags,
    produce_when_room,
    redact,
)
from workers.kafka_io.monitor_loop import (
    MonitorSettings,
    MonitorStartupError,
    OncePerPartition,
    UnfitLabels,
    announce,
    attach_feature_drift,
    forwarded_from,
    forwarding,
    loop_until,
    monitor_consumer,
    publish_metrics,
    records,
)
from workers.metrics import REFRESH_INTERVAL_S, MetricsServer, MonitorMetrics
from workers.model_store import NO_KEYS, Manifest
from workers.process_tuning import tune_process
from workers.signing import Verifier

log = structlog.get_logger("scorestream.monitor")

# At-least-once: outcomes per aggregate partition remembered to recognise a repeat.
DEDUPE_OUTCOMES = 200_000
SNAPSHOT_FIX = (
    "a record in the changelog that is no snapshot this stage wrote was skipped (the "
    "partition resumes from an older snapshot or its committed offsets); only "
    "scorestream's stages may write their changelog topics (README, Security)"
)


@dataclass(frozen=True, slots=True)
class StageSettings:
    bootstrap_servers: str
    predictions_topic: str
    labels_topic: str
    alerts_topic: str
    outcomes_topic: str
    group_id: str
    kafka_config: dict[str, str]
    config: MonitorConfig
    instance_id: str
    exactly_once: bool = False
    batch_size: int = 1000
    checkpoint_interval_s: float = 5.0
    log_interval_s: float = 10.0
    metrics_port: int | None = None
    redact_features: bool = False
    # The aggregate stage's checks before labels: with model_dir, prediction drift and
    # estimated accuracy; with features_topic too, data drift on the newest version.
    model_dir: Path | None = None
    manifest: Manifest | None = None
    verifier: Verifier = NO_KEYS
    features_topic: str | None = None
    feature_window: int = 200
    shape_window: int = 500
    feature_z_threshold: float = 5.0

    @classmethod
    def of(
        cls, monitor: MonitorSettings, *, outcomes_topic: str, instance_id: str
    ) -> StageSettings:
        """The one-process monitor's settings, for a stage (what a stage has no use for,
        --state-dir, is left behind)."""
        same = {f.name: getattr(monitor, f.name) for f in fields(cls) if hasattr(monitor, f.name)}
        return cls(**{**same, "outcomes_topic": outcomes_topic, "instance_id": instance_id})

    @property
    def repartition_topic(self) -> str:
        return f"{self.group_id}-labels-repartition"

    @property
    def join_changelog(self) -> str:
        return f"{self.group_id}-join-changelog"

    @property
    def aggregate_group(self) -> str:
        return f"{self.group_id}-aggregate"

    @property
    def aggregate_changelog(self) -> str:
        return f"{self.group_id}-aggregate-changelog"


P = TypeVar("P", JoinPartition, AggregatePartition)


class TopicsMissing(Exception):  # noqa: N818 - a state to wait out, not a failure
    """Inputs another worker makes are not there yet."""

    def __init__(self, topics: list[str], fix: str) -> None:
        super().__init__(", ".join(topics))
        self.topics, self.fix = topics, fix


class StageWorker(ABC, Generic[P]):
    """A consumer group member whose state is per partition and lives in a changelog."""

    stage: str
    group: str
    changelog: str
    # Topics whose partition n feeds state n (their offsets are stored in it).
    state_topics: frozenset[str]
    # What a snapshot of one partition holds; anything else read back is refused.
    state_type: type[P]

    def __init__(self, settings: StageSettings) -> None:
        self.settings = s = settings
        self.config = settings.config
        self.metrics = MonitorMetrics()
        self.parts: dict[int, P] = {}
        self.dirty: set[int] = set()
        # Next offsets of the topics that carry no state (the labels, before re-keying).
        self.loose: dict[tuple[str, int], int] = {}
        self.assigned: list[TopicPartition] = []
        self.writer = new_writer_id()
        self.seq = 0
        # Per partition, the slot of its last stored snapshot, and of those being written.
        self.slots: dict[int, int] = {}
        self.writing: dict[int, int] = {}
        self.txn_open = False
        self.failed: KafkaError | None = None
        self.transactional_id = (
            f"{self.group}.{self.stage}.{s.instance_id}" if s.exactly_once else None
        )
        self.abandoned_producers: list[Producer] = []
        # Set when a bug stopped a batch half-way: nothing is checkpointed from then on.
        self.torn = False
        self._stop = threading.Event()  # the worker's, once run() is called
        self.producer = self.new_producer()
        self.consumer = monitor_consumer(s.bootstrap_servers, s.kafka_config, self.group,
                                         f"{self.stage}-consumer")  # fmt: skip
        self.last_counters: dict[str, int] = {}

    # -- what a stage is --------------------------------------------------------------------

    @abstractmethod
    def topics(self) -> list[str]: ...

    @abstractmethod
    def new_partition(self, partition: int) -> P: ...

    @abstractmethod
    def prepare_topics(self, admin_config: dict[str, Any]) -> None:
        """Check the inputs, create what the stage owns; MonitorStartupError names a fix."""

    @abstractmethod
    def handle(self, msg: Message, topic: str, partition: int, offset: int, now_ms: int) -> None:
        """One record: update state, produce outputs."""

    @abstractmethod
    def summary(self) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, int]]:
        """Counters, per-version metrics and alerts raised, over the partitions held."""

    # -- producing -------------------------------------------------------------------------

    def new_producer(self) -> Producer:
        s = self.settings

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None and self.failed is None:
                self.failed = err

        required: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            # The Java clients' hashing: a label lands on its prediction's partition, and a
            # version's outcomes where any Java or Kafka Streams producer would put them.
            "partitioner": "murmur2_random",
            "on_delivery": on_delivery,
            "delivery.report.only.error": True,
        }
        defaults: dict[str, Any] = {"linger.ms": 5}
        if self.transactional_id is not None:
            required["transactional.id"] = self.transactional_id
            # Under the consumer session timeout (45 s): by the time a killed instance's
            # partitions move, the broker has aborted its open transaction, so the next owner
            # reads every snapshot committed after it.
            defaults["transaction.timeout.ms"] = 30_000
        else:
            # In order without gaps per partition: a label forwarded twice after a restart
            # is recognised by its source offset.
            required["enable.gapless.guarantee"] = True
            # Which does not cover a record that times out (one retried after an outage would
            # land behind later ones, a re-keyed label taken for a replay): never given up on.
            required["message.timeout.ms"] = 0
        return make_producer(s.bootstrap_servers, s.kafka_config, defaults=defaults,
                             required=required, name=f"{self.stage}-producer")  # fmt: skip

    def produce(  # noqa: PLR0913 - what a record is
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        *,
        partition: int = -1,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        timestamp: int = 0,
    ) -> None:
        try:
            produce_when_room(self.producer, topic, value, key, partition=partition,
                              headers=headers, timestamp=timestamp)  # fmt: skip
        except KafkaException as exc:
            # Raised at once after an earlier failure (an abortable transaction, a fatal
            # producer) or for a record over the client's limit: the checkpoint fails, the
            # producer is replaced and what was read since is read again.
            log.error("produce_failed", stage=self.stage, topic=topic, bytes=len(value),
                      reason=exc.args[0].str())  # fmt: skip
            if self.failed is None:
                self.failed = exc.args[0]

    # -- state in the changelog -------------------------------------------------------------

    def _restore(self, partitions: list[int]) -> None:
        s = self.settings
        if not s.exactly_once:
            self._claim(partitions)
        found = read_snapshots(s.bootstrap_servers, s.kafka_config, self.changelog, partitions)
        for p in partitions:
            self.parts[p] = self.new_partition(p)
            self.slots.pop(p, None)
            self.writing.pop(p, None)
            read = found.get(p)
            if read is None:
                continue
            if read.ignored:
                log.warning("changelog_records_ignored", stage=self.stage, partition=p,
                            changelog=self.changelog, records=read.ignored,
                            reason="no snapshot framing, or written by no owner of the "
                            "partition", fix=SNAPSHOT_FIX)  # fmt: skip
            for snapshot in reversed(read.found):
                try:
                    restored = snapshots.load(snapshot.blob, self.changelog, self.state_type)
                except snapshots.SnapshotRefused as exc:
                    log.warning("snapshot_skipped", stage=self.stage, changelog=self.changelog,
                                partition=p, reason=str(exc), fix=SNAPSHOT_FIX)  # fmt: skip
                    continue
                self.parts[p], self.slots[p] = self.adopt(restored), snapshot.slot
                break
        log.info("state_restored", stage=self.stage, changelog=self.changelog,
                 partitions=sorted(partitions),
                 from_snapshot=sorted(p for p in partitions if p in self.slots))  # fmt: skip

    def _claim(self, partitions: list[int]) -> None:
        """Mark these partitions ours in the changelog before reading it: a stalled former
        owner's snapshots written after this never count (exactly-once, its transaction is
        fenced instead)."""
        for p in partitions:
            key, value = claim_record(p, self.writer)
            self.produce(self.changelog, value, key, partition=p)
        if self.producer.flush(30) > 0 or self.failed is not None:
            reason = "not acknowledged" if self.failed is None else self.failed.str()
            log.warning("claim_not_written", stage=self.stage, changelog=self.changelog,
                        reason=reason, consequence="a stalled former owner's checkpoint may "
                        "win over this instance's")  # fmt: skip

    def adopt(self, restored: P) -> P:
        """A restored partition, under this instance's settings."""
        return restored

    def restored(self) -> None:
        """Called once the partitions held are restored (on assignment and on reload)."""

    def dropped(self) -> None:
        """Called when every partition is handed back."""

    def poll_more(self, now_ms: int) -> None:
        """Called once a loop: what a stage reads besides its group's topics."""

    def _positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where each partition resumes: its snapshot's offset, else the committed one."""
        out = []
        for tp in partitions:
            part = self.parts.get(tp.partition) if tp.topic in self.state_topics else None
            stored = None if part is None else part.offsets.get(tp.topic)
            out.append(TopicPartition(tp.topic, tp.partition, tp.offset if stored is None
                                      else stored))  # fmt: skip
        return out

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._restore(sorted({tp.partition for tp in partitions if tp.topic in self.state_topics}))
        self.assigned = self._positions(partitions)
        consumer.assign(self.assigned)
        self.restored()
        log.info("partitions_assigned", stage=self.stage, partitions=[
            f"{tp.topic}[{tp.partition}]" + (f" from offset {tp.offset} (changelog)"
                                             if tp.offset >= 0 else "")
            for tp in self.assigned])  # fmt: skip

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.checkpoint()
        self._drop()
        consumer.unassign()
        log.info("partitions_revoked", stage=self.stage,
                 partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])  # fmt: skip

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member owns them already: nothing of theirs may be committed from here."""
        self._abort()
        self._drop()
        consumer.unassign()
        log.warning("partitions_lost", stage=self.stage,
                    partitions=[f"{tp.topic}[{tp.partition}]" for tp in partitions])  # fmt: skip

    def _drop(self) -> None:
        self.parts.clear()
        self.dirty.clear()
        self.slots.clear()
        self.writing.clear()
        self.loose.clear()
        self.assigned = []
        self.dropped()

    def _reload(self, reason: str) -> None:
        """Back to the last checkpoint of every partition held: its records are read again."""
        self._abort()
        held = sorted({tp.partition for tp in self.assigned if tp.topic in self.state_topics})
        self.parts.clear()
        self.dirty.clear()
        self.loose.clear()
        self._restore(held)
        answered = committed_offsets(self.consumer, self.assigned, self._stop)
        if answered is None:  # stopping before the group answered: nothing more is read
            return
        committed = {(tp.topic, tp.partition): tp.offset for tp in answered}
        for tp in self._positions(self.assigned):
            offset = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
            if offset < 0:
                continue  # never committed: already reading from the start
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        self.restored()
        log.warning("state_reloaded", stage=self.stage, reason=reason,
                    to="the last checkpoint; records since are read again")  # fmt: skip

    def _abort(self) -> None:
        if not self.txn_open:
            return
        self.txn_open = False
        try:
            self.producer.abort_transaction(10)
        except KafkaException as exc:
            log.warning("abort_failed", reason=exc.args[0].str())
            self._fresh_producer()

    def _fresh_producer(self) -> None:
        with contextlib.suppress(KafkaException):
            self.producer.purge()
            self.producer.flush(0)
        self.producer = self.new_producer()
        self.failed = None
        if self.transactional_id is not None:
            try:
                bounded_call(lambda: self.producer.init_transactions(30), TXN_CALL_LIMIT_S)
            except (KafkaException, CallStuck) as exc:
                log.warning("init_transactions_failed", reason=str(exc))

    def _snapshots(self) -> None:
        for p in sorted(self.dirty):
            part = self.parts.get(p)
            if part is None:
                continue
            self.seq += 1
            # The slot the last stored snapshot is not in: tearing this one spoils no other.
            slot = self.writing.setdefault(p, 1 - self.slots.get(p, 1))
            blob = snapshots.dump(part, self.changelog)
            for key, value in snapshot_records(p, self.writer, self.seq, blob, slot):
                self.produce(self.changelog, value, key, partition=p)

    def _offsets(self) -> list[TopicPartition]:
        out = [TopicPartition(t, p, o) for (t, p), o in self.loose.items()]
        for p, part in self.parts.items():
            out += [TopicPartition(t, p, o) for t, o in part.offsets.items()]
        return out

    def checkpoint(self) -> bool:
        """Snapshots of what changed, with the outputs and offsets they cover; True once in."""
        if self.torn:
            return False
        if self.settings.exactly_once:
            return self._checkpoint_transaction()
        self.producer.flush(30)
        if self.failed is None and self.dirty:
            self._snapshots()
            self.producer.flush(30)
        if self.failed is not None or len(self.producer) > 0:
            reason = "not acknowledged" if self.failed is None else self.failed.str()
            self.failed = None
            log.error("checkpoint_failed", stage=self.stage, reason=reason,
                      fix="check that this client may write the outcomes, alerts and "
                      "changelog topics")  # fmt: skip
            self._fresh_producer()
            self._reload(f"an output was not delivered: {reason}")
            return False
        self._stored()
        offsets = self._offsets()
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # the snapshots hold the offsets: only lag shows it
                log.warning("commit_failed", reason=str(exc))
        return True

    def _checkpoint_transaction(self) -> bool:
        if self.failed is not None:
            # A record of this transaction was refused: it must not commit without it.
            reason, self.failed = self.failed.str(), None
            log.error("transaction_failed", stage=self.stage, reason=reason)
            self._abort()
            self._fresh_producer()
            self._reload(f"an output was not produced: {reason}")
            return False
        if not self.txn_open and not self.dirty and not self.loose:
            return True
        if not self.txn_open:
            self.producer.begin_transaction()
            self.txn_open = True
        producer, offsets = self.producer, self._offsets()
        try:
            self._snapshots()
            group = self.consumer.consumer_group_metadata()

            def commit() -> None:
                if offsets:
                    producer.send_offsets_to_transaction(offsets, group, 30)
                producer.commit_transaction(30)

            bounded_call(commit, TXN_CALL_LIMIT_S)
        except (KafkaException, CallStuck) as exc:
            reason = exc.args[0].str() if isinstance(exc, KafkaException) else "stuck"
            if isinstance(exc, KafkaException):
                self._fenced_hint(exc.args[0])
            else:
                log.error("transaction_failed", stage=self.stage, reason=reason)
            self.txn_open = False
            if isinstance(exc, CallStuck):
                self.abandoned_producers.append(self.producer)
            else:
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(10)
            self._fresh_producer()
            self._reload(f"the transaction did not commit: {reason}")
            return False
        self.txn_open = False
        self._stored()
        return True

    def _stored(self) -> None:
        self.dirty.clear()
        self.slots.update(self.writing)
        self.writing.clear()

    # -- the loop ---------------------------------------------------------------------------

    def close(self) -> None:
        self.consumer.close()

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self._stop = stop
        tune_process()
        if not self._topics_ready(stop):
            self.close()
            return
        log.info("monitor_started", stage=self.stage, topics=self.topics(), group_id=self.group,
                 changelog=self.changelog, outcomes_topic=s.outcomes_topic,
                 instance_id=s.instance_id, exactly_once=s.exactly_once,
                 kafka_config=redact(s.kafka_config))  # fmt: skip
        if s.exactly_once and not init_transactions(
            self, stop, bootstrap_servers=s.bootstrap_servers
        ):
            self.close()
            return
        server = None
        if s.metrics_port is not None:
            server = MetricsServer(s.metrics_port, self.metrics.registry,
                                   lambda: bool(self.assigned))  # fmt: skip
            server.start()
        self.consumer.subscribe(self.topics(), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)  # fmt: skip
        try:
            self._loop(stop)
        finally:
            try:
                self.checkpoint()
                self._log_summary()
            finally:
                self.close()
                self.producer.flush(10)
                if server is not None:
                    server.stop()
                log.info("monitor_stopped", stage=self.stage, **self.last_counters)

    def _topics_ready(self, stop: threading.Event) -> bool:
        """Prepare the topics once the cluster answers; an input made by another stage (the
        outcomes) is waited for, and the wait is said, as infer waits for its input topic."""
        admin = AdminAccess(self.settings.bootstrap_servers, self.settings.kafka_config)
        backoff = 1.0
        while not stop.is_set():
            try:
                return admin.retry_until_ready(self.prepare_topics, stop, what="topics")
            except TopicsMissing as missing:
                log.warning("waiting_for_topics", stage=self.stage, topics=missing.topics,
                            fix=missing.fix, retry_in_s=backoff)  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return False

    def _loop(self, stop: threading.Event) -> None:
        s = self.settings

        def step() -> None:
            msgs = self.consumer.consume(num_messages=s.batch_size, timeout=0.1)
            if msgs:
                self._process(msgs)
            self.poll_more(time.time_ns() // 1_000_000)

        loop_until(stop, step, [(REFRESH_INTERVAL_S, self._refresh_metrics),
                                (s.checkpoint_interval_s, self.checkpoint),
                                (s.log_interval_s, self._log_summary)],
                   on_bug=self._tear)  # fmt: skip

    def _tear(self) -> None:
        """A bug mid-batch: what the batch applied so far is never stored (nor committed in
        the open transaction); the next owner resumes from the last checkpoint."""
        self.torn = True
        self._abort()

    def in_transaction(self) -> None:
        """Exactly-once: what is produced from here on goes in the open transaction."""
        if self.settings.exactly_once and not self.txn_open:
            try:
                self.producer.begin_transaction()
            except KafkaException as exc:  # fenced or fatal: a fresh producer takes over
                self._fenced_hint(exc.args[0])
                self._fresh_producer()
                self.producer.begin_transaction()
            self.txn_open = True

    def _fenced_hint(self, err: KafkaError) -> None:
        log.error("transaction_failed", stage=self.stage, reason=err.str(), fatal=err.fatal(),
                  fix=f"if another {self.stage} instance runs with --instance-id "
                  f"{self.settings.instance_id}, give each its own (the default is the host "
                  "name)")  # fmt: skip

    def _process(self, msgs: list[Message]) -> None:
        self.in_transaction()
        now_ms = time.time_ns() // 1_000_000
        seen: dict[str, int] = {}
        for msg, topic, partition, offset in records(msgs):
            seen[topic] = seen.get(topic, 0) + 1
            if topic in self.state_topics:
                part = self.parts.get(partition)
                if part is None:
                    part = self.parts[partition] = self.new_partition(partition)
                self.handle(msg, topic, partition, offset, now_ms)
                part.offsets[topic] = offset + 1
                self.dirty.add(partition)
            else:
                self.handle(msg, topic, partition, offset, now_ms)
                self.loose[(topic, partition)] = offset + 1
        self.producer.poll(0)
        for topic, count in seen.items():
            self.metrics.consumed.labels(self.stream_name(topic)).inc(count)

    def stream_name(self, topic: str) -> str:
        return topic

    def _refresh_metrics(self) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, int]]:
        counters, versions, alerts = self.summary()
        publish_metrics(self.metrics, partition_lags(self.consumer), counters, versions)
        return counters, versions, alerts

    def _log_summary(self) -> None:
        counters, versions, alerts = self._refresh_metrics()
        self.last_counters = counters
        log.info("monitor_summary", stage=self.stage, **counters, versions=versions,
                 alerts=alerts, partitions=sorted(self.parts))  # fmt: skip


def _ensure(
    settings: StageSettings, config: dict[str, Any], wanted: dict[str, int], compact: set[str]
) -> None:
    """Create the topics of `wanted` that do not exist; those that do must have its count."""
    s = settings
    metadata = list_topics(s.bootstrap_servers, config, timeout_s=10)
    for topic, partitions in wanted.items():
        have = partition_count(metadata, topic)
        if have is None:
            create_topics(s.bootstrap_servers, {topic: partitions},
                          config=CHANGELOG_CONFIG if topic in compact else None,
                          client_config=config)  # fmt: skip
            log.info("topics_created", topics=[topic], partitions=partitions)
        elif have != partitions:
            raise MonitorStartupError(
                f"{topic!r} has {have} partitions where {partitions} are needed: it is the "
                "monitor's own (delete it to start its state over) or use another --group-id"
            )


class JoinStage(StageWorker[JoinPartition]):
    stage = "join"

    def __init__(self, settings: StageSettings) -> None:
        self.group = settings.group_id
        self.changelog = settings.join_changelog
        self.state_type = JoinPartition
        self.state_topics = frozenset({settings.predictions_topic, settings.repartition_topic})
        self.bad_labels = 0  # labels that are no Label, counted where first read
        self._once = OncePerPartition()
        self._unfit = UnfitLabels()
        super().__init__(settings)

    def topics(self) -> list[str]:
        s = self.settings
        return [s.predictions_topic, s.labels_topic, s.repartition_topic]

    def poll_more(self, now_ms: int) -> None:
        self._unfit.drain(part.join for part in self.parts.values())
        for p, part in self.parts.items():
            records = part.tick(now_ms)
            if records is None:
                continue
            self.in_transaction()
            self.dirty.add(p)
            for record in records:
                self.produce(self.settings.outcomes_topic, OUTCOME_ENCODER.encode(record),
                             record.key)  # fmt: skip

    def new_partition(self, partition: int) -> JoinPartition:
        return JoinPartition.new(self.config, partition)

    def adopt(self, restored: JoinPartition) -> JoinPartition:
        restored.join.max_pending = self.config.pending_per_partition
        return restored

    def prepare_topics(self, admin_config: dict[str, Any]) -> None:
        s = self.settings
        metadata = list_topics(s.bootstrap_servers, admin_config, timeout_s=10)
        missing = [t for t in (s.predictions_topic, s.labels_topic)
                   if partition_count(metadata, t) is None]  # fmt: skip
        if missing:
            raise MonitorStartupError(
                f"{' and '.join(map(repr, missing))} not found at {s.bootstrap_servers}: create "
                f"with `scorestream topics create --bootstrap-servers {s.bootstrap_servers}` "
                "(or start `scorestream infer`, which creates its predictions topic)"
            )
        partitions = partition_count(metadata, s.predictions_topic) or 1
        existing = partition_count(metadata, s.outcomes_topic)
        wanted = {s.repartition_topic: partitions, s.join_changelog: partitions}
        _ensure(s, admin_config, wanted, compact={s.join_changelog})
        if existing is None:
            # As many as the predictions: orphans spread by event_id; a version's outcomes
            # use one partition (one aggregate instance) whatever the count.
            _ensure(s, admin_config, {s.outcomes_topic: partitions}, compact=set())
        # The bound on pending events is per monitor group, split over its partitions.
        self.config = replace(self.config, partitions=partitions)

    def handle(self, msg: Message, topic: str, partition: int, offset: int, now_ms: int) -> None:
        s = self.settings
        if topic == s.labels_topic:
            self._forward(msg, partition, offset)
            return
        part = self.parts[partition]
        if topic == s.predictions_topic:
            result = part.on_prediction(msg.value(), msg.timestamp()[1], now_ms,
                                        (partition, self.config.partitions))  # fmt: skip
            if isinstance(result, Misplaced):
                self._once.misplaced(topic, partition, result.key, self.config.partitions)
                self.produce(s.repartition_topic, msg.value() or b"", result.key,
                             **forwarding(msg, partition, offset, prediction=True))  # fmt: skip
                return
            records = result
        else:
            prediction, source = forwarded_from(msg)
            take = part.on_forwarded_prediction if prediction else part.on_label
            records = take(msg.value(), msg.timestamp()[1], source, now_ms)
        for record in records:
            self.produce(s.outcomes_topic, OUTCOME_ENCODER.encode(record), record.key)

    def _forward(self, msg: Message, partition: int, offset: int) -> None:
        """Re-key a label by event_id onto the repartition topic (see the one-process
        monitor): it meets its prediction's partition whatever partitioner its producer
        used. A label that is no Label is counted where it is first read."""
        key = label_key(msg.value(), self.config.max_label_bytes)
        if key is None:
            self.bad_labels += 1
            if len(msg.value() or b"") > self.config.max_label_bytes:
                self._once.unforwardable(msg, partition, self.config.max_label_bytes)
            else:
                self._unfit.unreadable(msg, partition)
            return
        self.produce(
            self.settings.repartition_topic,
            msg.value() or b"",
            key,
            **forwarding(msg, partition, offset),
        )

    def stream_name(self, topic: str) -> str:
        s = self.settings
        return {s.predictions_topic: "predictions", s.labels_topic: "labels",
                s.repartition_topic: "labels_repartitioned"}.get(topic, topic)  # fmt: skip

    def summary(self) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, int]]:
        counters = sum_counters([part.counters() for part in self.parts.values()])
        counters["invalid_labels"] = counters.get("invalid_labels", 0) + self.bad_labels
        return counters, {}, {}


class AggregateStage(StageWorker[AggregatePartition]):
    stage = "aggregate"

    def __init__(self, settings: StageSettings) -> None:
        s = settings
        self.group = s.aggregate_group
        self.changelog = s.aggregate_changelog
        self.state_type = AggregatePartition
        self.state_topics = frozenset({s.outcomes_topic})
        self.references = (
            ReferenceLookup() if s.model_dir is None or s.manifest is None
            else ModelReferences(s.model_dir, s.manifest.name, s.verifier)
        )  # fmt: skip
        # Read by the lead (the holder of outcomes partition 0) alone, all partitions each.
        self.lead_topics = [t for t, wanted in ((s.predictions_topic, s.model_dir is not None),
                                                (s.features_topic, s.features_topic is not None))
                            if wanted and t is not None]  # fmt: skip
        self.lead_partitions: dict[str, int] = {}
        self.feature_decoder: EventDecoder | None = None
        self.leading = False
        super().__init__(settings)
        self.lead_consumer: Consumer | None = None
        if self.lead_topics:
            self.lead_consumer = make_consumer(
                s.bootstrap_servers, s.kafka_config,
                defaults={"fetch.wait.max.ms": 50, "fetch.queue.backoff.ms": 10},
                required={"group.id": f"{self.group}-lead", "enable.auto.commit": False,
                          "isolation.level": "read_committed"},
                name="aggregate-lead-consumer",
            )  # fmt: skip

    def topics(self) -> list[str]:
        return [self.settings.outcomes_topic]

    def new_partition(self, partition: int) -> AggregatePartition:  # noqa: ARG002 - by version
        dedupe = 0 if self.settings.exactly_once else DEDUPE_OUTCOMES
        return self.adopt(AggregatePartition.new(self.config, dedupe))

    def adopt(self, restored: AggregatePartition) -> AggregatePartition:
        # A lookup reads the model folder, which is no state: it pickles empty.
        restored.state.references = self.references
        if restored.lead is not None:
            restored.lead.state.references = self.references
        return restored

    def prepare_topics(self, admin_config: dict[str, Any]) -> None:
        s = self.settings
        metadata = list_topics(s.bootstrap_servers, admin_config, timeout_s=10)
        counts = {t: partition_count(metadata, t) for t in [s.outcomes_topic, *self.lead_topics]}
        missing = [t for t, count in counts.items() if count is None]
        if missing:
            raise TopicsMissing(missing, "start `scorestream monitor --stage join` (it makes "
                                f"{s.outcomes_topic!r}); `scorestream infer` makes its "
                                "predictions topic; or create them")  # fmt: skip
        partitions = counts[s.outcomes_topic] or 1
        self.lead_partitions = {t: counts[t] or 1 for t in self.lead_topics}
        _ensure(s, admin_config, {s.aggregate_changelog: partitions},
                compact={s.aggregate_changelog})  # fmt: skip

    # -- the lead: the checks on every prediction and FeatureEvent -------------------------

    def restored(self) -> None:
        part = self.parts.get(0)
        if self.lead_consumer is None or part is None:
            self.dropped()
            return
        s = self.settings
        if part.lead is None:
            part.lead = LeadChecks(MonitorState(self.config, references=self.references))
        if s.features_topic is not None and s.manifest is not None:
            self.feature_decoder = attach_feature_drift(
                part.lead.state, s.manifest, s.model_dir, feature_window=s.feature_window,
                shape_window=s.shape_window, z_threshold=s.feature_z_threshold,
            )  # fmt: skip
        offsets = part.lead.offsets
        self.lead_consumer.assign([
            TopicPartition(t, p, offsets.get((t, p), OFFSET_BEGINNING))
            for t in self.lead_topics for p in range(self.lead_partitions[t])
        ])  # fmt: skip
        self.leading = True
        log.info("lead_checks", stage=self.stage, topics=self.lead_topics,
                 resumed=len(offsets))  # fmt: skip

    def dropped(self) -> None:
        if self.leading and self.lead_consumer is not None:
            self.lead_consumer.unassign()
        self.leading = False

    def poll_more(self, now_ms: int) -> None:
        part = self.parts.get(0)
        if not self.leading or self.lead_consumer is None or part is None or part.lead is None:
            return
        msgs = self.lead_consumer.consume(num_messages=self.settings.batch_size, timeout=0)
        if not msgs:
            return
        self.in_transaction()
        lead, s = part.lead, self.settings
        seen = {"predictions": 0, "features": 0}
        for msg, topic, partition, offset in records(msgs):
            if topic == s.predictions_topic:
                alerts = lead.state.check_prediction(msg.value(), now_ms)
                seen["predictions"] += 1
            else:
                alerts = self._features(lead.state, msg.value(), now_ms)
                seen["features"] += 1
            lead.offsets[(topic, partition)] = offset + 1
            for alert in alerts:
                self._raise(alert)
        self.dirty.add(0)
        for stream, count in seen.items():
            if count:
                self.metrics.consumed.labels(stream).inc(count)

    def _features(self, state: MonitorState, value: bytes | None, now_ms: int) -> list[Alert]:
        if self.feature_decoder is None:
            return []
        decoded = self.feature_decoder.decode(value)
        if isinstance(decoded, InvalidEvent):
            return []  # infer dead-letters it; the checks take what it scores
        return state.on_features(decoded[1], now_ms)

    def close(self) -> None:
        super().close()
        if self.lead_consumer is not None:
            self.lead_consumer.close()

    # -- the outcomes ----------------------------------------------------------------------

    def handle(self, msg: Message, topic: str, partition: int, offset: int, now_ms: int) -> None:
        del topic, offset
        for alert in self.parts[partition].on_record(msg.value(), now_ms):
            self._raise(alert)

    def _raise(self, alert: Alert) -> None:
        s = self.settings
        value = announce(alert, self.metrics, redact=s.redact_features)
        self.produce(s.alerts_topic, value, alert.model_name.encode())

    def stream_name(self, topic: str) -> str:
        del topic
        return "outcomes"

    def summary(self) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, int]]:
        counters: dict[str, int] = {"joined": 0, "expired_without_label": 0, "orphan_labels": 0}
        counters = sum_counters([counters, *(p.counts for p in self.parts.values())])
        versions: dict[str, dict[str, Any]] = {}
        alerts: dict[str, int] = {}
        states = [p.state for p in self.parts.values()]
        states += [p.lead.state for p in self.parts.values() if p.lead is not None]
        for state in states:
            for key, entry in state.metrics().items():
                merged = versions.setdefault(key, {"joined": 0})
                # A version's outcomes are on one partition; its estimates are the lead's.
                joined = max(merged["joined"], entry["joined"])
                merged.update(entry)
                merged["joined"] = joined
            alerts = sum_counters([alerts, state.alerts_raised])
        return counters, dict(sorted(versions.items())), alerts
