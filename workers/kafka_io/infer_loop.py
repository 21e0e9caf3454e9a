"""The inference worker's consume -> score -> produce loop, at-least-once or exactly-once.

At-least-once: offsets are stored only once the broker has acknowledged every record produced
for them (predictions and dead letters alike). librdkafka reports only failed deliveries, so
success is read from the producer's queue running empty: after `poll`, `len(producer) == 0`
means every record produced so far is acknowledged. Under steady load the queue is rarely
empty, so at least every `confirm_interval_s` the loop waits for it (a flush); a failed delivery
rewinds the partitions to the first unconfirmed offset instead of advancing them.

Exactly-once (KIP-447): one transactional producer per process. The records produced for the
batches of `transaction_interval_ms` and the consumed offsets commit in one transaction;
readers with isolation.level=read_committed see each prediction once. An abortable error
aborts and rewinds to the transaction's first offsets; a fatal one (fenced) also replaces the
producer. Partitions are committed before they are revoked and aborted when they are lost.

Either way, a dead letter the DLQ refuses pauses its source partition (with a growing retry
interval) instead of being dropped: the other partitions keep flowing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from workers.core.events import (
    DEFAULT_MAX_FEATURES,
    MAX_EVENT_ID_CHARS,
    EventDecoder,
    InvalidEvent,
    redacted_message,
)
from workers.core.inference import ServingModel, score_batch
from workers.kafka_io.admin import create_topics, list_topics
from workers.kafka_io.clients import (
    ErrorReporter,
    LastError,
    make_consumer,
    make_producer,
    next_batch,
    partition_lags,
    redact,
    retry_until_ready,
)
from workers.metrics import REFRESH_INTERVAL_S, InferMetrics, MetricsServer, MetricsSnapshot
from workers.model_store import LoadedModel, ModelError, ModelWatcher
from workers.process_tuning import tune_process

log = structlog.get_logger("scorestream.infer")

TopicKey = tuple[str, int]

# Longest a commit (send_offsets + commit_transaction, with their own retries) may take before
# the producer is considered stuck.
TXN_CALL_LIMIT_S = 40.0


class _Stuck(Exception):  # noqa: N818 - internal signal
    pass


def _bounded(call: Any, limit_s: float) -> None:  # noqa: ANN401
    """Run `call` on a daemon thread; raise what it raised, or _Stuck after `limit_s`."""
    raised: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="transaction-call").start()
    if not done.wait(limit_s):
        raise _Stuck
    if raised:
        raise raised[0]


@dataclass(frozen=True, slots=True)
class InferSettings:
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    group_id: str
    batch_size: int
    batch_timeout_ms: int
    kafka_config: dict[str, str]
    max_value_bytes: int
    log_interval_s: float = 10.0
    confirm_interval_s: float = 0.5
    metrics_port: int | None = None
    exactly_once: bool = False
    # Stable identity across restarts: static group membership (a restarted worker takes its
    # partitions back without a rebalance) and, exactly-once, the transactional.id (its restart
    # fences the previous incarnation and aborts its open transaction at once).
    instance_id: str | None = None
    transaction_interval_ms: int = 100
    # Input limits beyond max_value_bytes; an event over one is dead-lettered.
    max_event_id_chars: int = MAX_EVENT_ID_CHARS
    max_features: int = DEFAULT_MAX_FEATURES
    # Keep feature values (and the messages that quote them) out of logs and DLQ headers.
    redact_features: bool = False


def serving_model(loaded: LoadedModel, settings: InferSettings) -> ServingModel:
    try:
        decoder = EventDecoder(
            loaded.manifest.features,
            settings.max_value_bytes,
            max_event_id_chars=settings.max_event_id_chars,
            max_features=settings.max_features,
        )
    except ValueError as exc:
        raise ModelError(f"{loaded.path}: {exc} (raise --max-features)") from exc
    return ServingModel(
        name=loaded.manifest.name,
        version=loaded.manifest.version,
        decoder=decoder,
        scorer=loaded.scorer,
    )


class _Stats:
    def __init__(self) -> None:
        self.consumed = 0
        self.scored = 0
        self.batches = 0
        self.max_batch = 0
        self.dead_letters: Counter[str] = Counter()
        self.rewinds = 0
        self.since = time.monotonic()
        self.consumed_at_last = 0


class InferenceWorker:
    def __init__(
        self,
        settings: InferSettings,
        model: LoadedModel,
        watcher: ModelWatcher | None = None,
    ) -> None:
        self.settings = settings
        self.model = serving_model(model, settings)
        self.model_sha256 = model.manifest.sha256
        self.watcher = watcher
        self.stats = _Stats()
        self.metrics = InferMetrics()
        self.metrics.serving(self.model.name, self.model.version, self.model_sha256)
        self._assigned = False
        # Failed deliveries: the error and, for a dead letter, its source partition.
        self._failed_deliveries: list[tuple[KafkaError, int | None]] = []
        # A broker outage surfaces as an error per fetch: logged once per code per 10 s.
        self._consume_errors = ErrorReporter("infer-consumer")
        # Admin calls fail as timeouts; their client's last error says why (auth, TLS).
        self._admin_errors = LastError()
        self._admin_config: dict[str, Any] = {
            **settings.kafka_config,
            "error_cb": self._admin_errors,
        }
        # Per input partition: (first offset not yet confirmed, next offset to store).
        self._pending: dict[TopicKey, tuple[int, int]] = {}
        self._oldest_pending = 0.0
        # After a failed delivery, wait before re-reading: a persistent cause (a topic that
        # refuses the records) must not become a tight loop.
        self._rewind_backoff_s = 0.0
        self._resume_at = 0.0
        # Partitions held back because the DLQ refused their dead letters: resume time, backoff.
        self._paused: dict[TopicKey, tuple[float, float]] = {}
        self._txn_open = False
        self._txn_started = 0.0
        # Producers stuck inside librdkafka, kept referenced: destroying one would block too.
        self.abandoned_producers: list[Producer] = []
        self._stop = threading.Event()  # run()'s, once it runs
        self.transactional_id = (
            f"{settings.group_id}.{settings.instance_id or self._process_identity()}"
            if settings.exactly_once
            else None
        )
        self.producer: Producer = self._make_producer()
        consumer_required: dict[str, Any] = {
            "group.id": settings.group_id,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
        }
        if settings.exactly_once:
            # Offsets commit inside the transactions; inputs written transactionally by their
            # producers are read only once committed.
            consumer_required |= {"enable.auto.commit": False, "isolation.level": "read_committed"}
        else:
            # Stored offsets are committed periodically; we store only acknowledged ones.
            consumer_required["enable.auto.commit"] = True
        if settings.instance_id:
            consumer_required["group.instance.id"] = settings.instance_id
        self.consumer: Consumer = make_consumer(
            settings.bootstrap_servers,
            settings.kafka_config,
            defaults={
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "auto.commit.interval.ms": 1000,
                "fetch.wait.max.ms": 10,
                # librdkafka pauses fetching for 1 s once its local queue is full; working
                # through a backlog, that left the worker idle a third of the time.
                "fetch.queue.backoff.ms": 10,
            },
            required=consumer_required,
            name="infer-consumer",
        )

    @staticmethod
    def _process_identity() -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def _make_producer(self) -> Producer:
        s = self.settings
        required: dict[str, Any] = {
            # Ordered, not duplicated by retries, acknowledged by all in-sync replicas.
            "enable.idempotence": True,
            "acks": "all",
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery_failure,
        }
        defaults: dict[str, Any] = {
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # Above the broker's 1 MB default: a dead letter is its source value plus
            # headers, so a value near the input topic's limit must still fit; the DLQ
            # topic's own limit decides.
            "message.max.bytes": 2_097_152,
        }
        if self.transactional_id is not None:
            required["transactional.id"] = self.transactional_id
            # An incarnation killed mid-transaction (without a stable --instance-id to fence
            # it) holds back read_committed readers until this expires: keep it short.
            defaults["transaction.timeout.ms"] = 10_000
        return make_producer(
            s.bootstrap_servers, s.kafka_config, defaults=defaults, required=required,
            name="infer-producer",
        )  # fmt: skip

    # -- delivery bookkeeping -------------------------------------------------------------

    def _on_delivery_failure(self, err: KafkaError | None, _msg: Message) -> None:
        self._delivery_failed(err, None)

    def _delivery_failed(self, err: KafkaError | None, source_partition: int | None) -> None:
        if err is None or err.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):  # noqa: SLF001
            return  # delivered, or an aborted transaction's record (rewound, not failed)
        self._failed_deliveries.append((err, source_partition))

    def _track(self, msgs: list[Message]) -> None:
        pending = self._pending
        if not pending:
            self._oldest_pending = time.monotonic()
        topic = self.settings.input_topic  # the only topic subscribed
        # Two C-level passes: the last offset per partition wins forwards, the first backwards.
        last = {m.partition(): m.offset() for m in msgs}
        first = {m.partition(): m.offset() for m in reversed(msgs)}
        for partition, offset in last.items():
            key = cast("TopicKey", (topic, partition))
            start = pending[key][0] if key in pending else cast("int", first[partition])
            pending[key] = (start, cast("int", offset) + 1)

    def _confirm(self, *, force: bool) -> None:
        """Store offsets whose outputs are all acknowledged; rewind after a failed delivery."""
        if not self._pending:
            return
        self.producer.poll(0)
        if (
            len(self.producer)
            and not force
            and not self._failed_deliveries
            and time.monotonic() - self._oldest_pending < self.settings.confirm_interval_s
        ):
            return
        self._flush_all()
        if self._failed_deliveries:
            refused = {src for _, src in self._failed_deliveries}
            if None in refused:  # a prediction failed: its partition is unknown, rewind all
                self._rewind()
                return
            # Only dead letters failed: every other output is acknowledged (the flush
            # returned), so the other partitions advance and only the refused ones rewind.
            topic = self.settings.input_topic
            held = {k: v for k, v in self._pending.items() if k[0] == topic and k[1] in refused}
            self._pending = {k: v for k, v in self._pending.items() if k not in held}
            self._store(held_back=held)
            self._pending = held
            self._rewind(backoff=False)
            return
        self._store(held_back={})

    def _store(self, held_back: dict[TopicKey, tuple[int, int]]) -> None:
        offsets = [TopicPartition(t, p, nxt) for (t, p), (_, nxt) in self._pending.items()]
        self._pending = {}
        self._rewind_backoff_s = 0.0
        self._forget_recovered(still_failing=held_back.keys())
        if not offsets:
            return
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # A partition revoked meanwhile: its new owner re-reads from the committed offset.
            log.warning("offsets_not_stored", reason=str(exc))

    def _flush_all(self) -> None:
        waited = 0.0
        while self.producer.flush(1.0) > 0:
            waited += 1.0
            log.warning(
                "waiting_for_acknowledgements",
                in_flight=len(self.producer),
                waited_s=waited,
            )

    def _rewind(self, reason: str | None = None, *, backoff: bool = True) -> None:
        """Re-read every pending partition from its first unconfirmed offset, after a backoff;
        a partition whose dead letters the DLQ refused is paused on its own."""
        failures = self._failed_deliveries
        self._failed_deliveries = []
        self.stats.rewinds += 1
        self.metrics.rewinds.inc()
        if backoff:
            self._rewind_backoff_s = min(max(self._rewind_backoff_s * 2, 0.1), 5.0)
            self._resume_at = time.monotonic() + self._rewind_backoff_s
        dlq_refused = {source for _, source in failures if source is not None}
        log.error(
            "delivery_failed",
            failures=len(failures),
            first_error=failures[0][0].str() if failures else reason,
            retry_in_s=self._rewind_backoff_s,
            rewound={f"{t}[{p}]": first for (t, p), (first, _) in self._pending.items()},
        )
        for (topic, partition), (first, _) in self._pending.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, first))
            except KafkaException as exc:
                log.warning("rewind_skipped", topic=topic, partition=partition, reason=str(exc))
        self._pending = {}
        for partition in sorted(dlq_refused):
            self._pause(
                (self.settings.input_topic, partition),
                next(e.str() for e, src in failures if src == partition),
            )

    def _pause(self, key: TopicKey, reason: str) -> None:
        """Stop consuming a partition whose dead letters cannot be written; retry later."""
        _, previous = self._paused.get(key, (0.0, 0.0))
        backoff = min(max(previous * 2, 1.0), 60.0)
        try:
            self.consumer.pause([TopicPartition(*key)])
        except KafkaException as exc:  # revoked meanwhile: its new owner takes it from here
            log.warning("pause_skipped", partition=f"{key[0]}[{key[1]}]", reason=str(exc))
            return
        self._paused[key] = (time.monotonic() + backoff, backoff)
        self.metrics.paused.set(len(self._paused))
        log.error(
            "partition_paused",
            partition=f"{key[0]}[{key[1]}]",
            dlq_topic=self.settings.dlq_topic,
            reason=f"the dead-letter topic refused a record: {reason}",
            retry_in_s=backoff,
            fix="make the DLQ topic writable (exists, this client may write, max.message.bytes)",
        )

    def _forget_recovered(self, still_failing: Collection[TopicKey] = ()) -> None:
        """Outputs committed: a resumed partition that got this far is healthy again, so its
        backoff is forgotten (unless it is among those that just failed)."""
        self._paused = {
            k: v for k, v in self._paused.items() if v[0] != float("inf") or k in still_failing
        }
        self.metrics.paused.set(len(self._paused))

    def _resume_due(self) -> None:
        now = time.monotonic()
        for key, (at, backoff) in list(self._paused.items()):
            if at > now:
                continue
            try:
                self.consumer.resume([TopicPartition(*key)])
            except KafkaException as exc:
                log.warning("resume_skipped", partition=f"{key[0]}[{key[1]}]", reason=str(exc))
                del self._paused[key]
                continue
            # Keep the backoff: a second refusal doubles it. Forgotten once a batch commits.
            self._paused[key] = (float("inf"), backoff)
            log.info("partition_resumed", partition=f"{key[0]}[{key[1]}]")

    # -- exactly-once -----------------------------------------------------------------------

    def _init_transactions(self, stop: threading.Event) -> bool:
        producer = self._initialised_producer(stop)
        if producer is None:
            return False
        self.producer = producer
        return True

    def _begin(self) -> None:
        if not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True
            self._txn_started = time.monotonic()

    def _commit_transaction(self, *, force: bool) -> None:
        """Commit the outputs and the consumed offsets together; on failure abort and rewind."""
        if not self._txn_open:
            return
        interval_s = self.settings.transaction_interval_ms / 1000
        if not force and time.monotonic() - self._txn_started < interval_s:
            return
        offsets = [TopicPartition(t, p, nxt) for (t, p), (_, nxt) in self._pending.items()]
        self.producer.poll(0)
        if self._failed_deliveries:  # the commit would fail: abort now
            self._transaction_failed(self._failed_deliveries[0][0])
            return
        producer, group = self.producer, self.consumer.consumer_group_metadata()

        def commit() -> None:
            if offsets:
                self._retrying(lambda: producer.send_offsets_to_transaction(offsets, group, 10))
            self._retrying(lambda: producer.commit_transaction(10))

        try:
            _bounded(commit, TXN_CALL_LIMIT_S)
        except KafkaException as exc:
            self._transaction_failed(exc.args[0])
            return
        except _Stuck:
            self._producer_stuck()
            return
        self._txn_open = False
        self._pending = {}
        self._rewind_backoff_s = 0.0
        self._forget_recovered()
        self.metrics.transactions.labels("committed").inc()

    @staticmethod
    def _retrying(call: Any) -> None:  # noqa: ANN401
        """librdkafka asks for the same call again on a retriable error (e.g. a timeout).

        A few times only: after a broker restart a call can time out again and again, and a
        fresh producer (what a failed transaction leads to) recovers where retrying does not.
        """
        for attempt in range(3):
            try:
                call()
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or attempt == 2:
                    raise
                log.warning("transaction_call_retried", code=err.name(), reason=err.str())
                time.sleep(min(0.1 * 2**attempt, 2.0))
            else:
                return

    def _producer_stuck(self) -> None:
        """librdkafka did not return from a transactional call (it can block past its own
        timeout once the group coordinator went away: librdkafka issues 5456 and 5511). The
        stuck producer is set aside, a new one with the same transactional.id fences it, and
        the partitions are re-read from what is committed, whichever way the stuck commit
        went."""
        self.metrics.transactions.labels("stuck").inc()
        log.error(
            "transaction_stuck",
            waited_s=TXN_CALL_LIMIT_S,
            transactional_id=self.transactional_id,
            action="replacing the producer; re-reading from the committed offsets",
        )
        self._txn_open = False
        self.abandoned_producers.append(self.producer)  # never destroyed: that would block
        self._fresh_producer()
        self._rewind_to_committed("transactional call did not return")

    def _rewind_to_committed(self, reason: str) -> None:
        wanted = [TopicPartition(t, p) for t, p in self._pending]
        try:
            committed = self.consumer.committed(wanted, timeout=10) if wanted else []
        except KafkaException as exc:
            log.warning("committed_offsets_unknown", reason=exc.args[0].str())
            committed = []
        for tp in committed:
            if tp.offset >= 0:
                self._pending[(tp.topic, tp.partition)] = (tp.offset, tp.offset)
        self._rewind(reason=reason)

    def _transaction_failed(self, err: KafkaError) -> None:
        self.producer.poll(0)  # collect the failed deliveries: which DLQ partitions refused
        self.metrics.transactions.labels("aborted").inc()
        log.error(
            "transaction_failed",
            code=err.name(),
            reason=err.str(),
            abortable=err.txn_requires_abort(),
            fatal=err.fatal(),
        )
        self._abort()
        self._rewind_to_committed(err.str())

    def _abort(self) -> None:
        """Abort the open transaction and start over with a new producer.

        A new producer with the same transactional.id fences the old one and bumps the epoch:
        after some failures (a record the broker refused) librdkafka's own abort leaves
        sequence numbers that the next transaction trips over, so recovery never relies on it.
        """
        if self._txn_open:
            self._txn_open = False
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort_failed", reason=exc.args[0].str())
        try:
            self.producer.purge()
            self.producer.flush(0)
        except KafkaException as exc:  # fenced or fatal: it is being replaced anyway
            log.warning("producer_discarded", reason=exc.args[0].str())
        self._fresh_producer()

    def _fresh_producer(self) -> None:
        """A new transactional producer, initialised once the cluster answers.

        init_transactions can hang inside librdkafka like send_offsets_to_transaction (the
        same coordinator-request bug), so each attempt is bounded; a stuck producer is set
        aside and the next attempt starts from a new one."""
        self.producer = self._initialised_producer(self._stop) or self.producer
        log.info("producer_replaced", transactional_id=self.transactional_id)

    def _initialised_producer(self, stop: threading.Event) -> Producer | None:
        producer, backoff, attempt = self._make_producer(), 1.0, 0
        while not stop.is_set():
            attempt += 1
            try:
                _bounded(lambda p=producer: p.init_transactions(10), TXN_CALL_LIMIT_S)
            except _Stuck:
                log.error("init_transactions_stuck", waited_s=TXN_CALL_LIMIT_S, attempt=attempt)
                self.abandoned_producers.append(producer)
                producer = self._make_producer()
                continue
            except KafkaException as exc:
                err = exc.args[0]
                log.warning(
                    "kafka_unreachable",
                    what="init_transactions",
                    bootstrap_servers=self.settings.bootstrap_servers,
                    attempt=attempt,
                    reason=err.str(),
                    retry_in_s=backoff,
                )
                if err.fatal():
                    producer = self._make_producer()
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            return producer
        return None

    # -- rebalance --------------------------------------------------------------------------

    def ready(self) -> bool:
        """/healthz: in the group with partitions handed out (the model is loaded before the
        worker exists: a worker without one never starts)."""
        return self._assigned

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        log.info(
            "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions]
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Hand over cleanly: everything produced is acknowledged and committed first."""
        if self.settings.exactly_once:
            self._commit_transaction(force=True)
        else:
            self._confirm(force=True)
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:  # noqa: SLF001 - public constant
                    log.warning("commit_on_revoke_failed", reason=str(exc))
        self._forget(partitions)
        log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.settings.exactly_once and self._txn_open:
            # Another member owns them now: our offsets would be refused. Re-read the rest.
            self._abort()
            self._rewind(reason="partitions lost")
        self._forget(partitions)
        log.warning("partitions_lost", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._pending = {k: v for k, v in self._pending.items() if k not in gone}
        self._paused = {k: v for k, v in self._paused.items() if k not in gone}
        self.metrics.paused.set(len(self._paused))

    # -- the loop ---------------------------------------------------------------------------

    def ensure_output_topics(self) -> None:
        """Create missing output topics with the input's partition count (laptop default)."""
        s = self.settings
        # Short: an unreachable cluster is retried (with backoff and a log line) by the caller.
        existing = list_topics(s.bootstrap_servers, self._admin_config, timeout_s=5)
        source = existing.topics.get(s.input_topic)
        partitions = len(source.partitions) if source is not None and source.partitions else 4
        created = []
        # The DLQ has room for any input value plus the error headers.
        for topic, config in (
            (s.output_topic, {}),
            (s.dlq_topic, {"max.message.bytes": "2097152"}),
        ):
            if topic not in existing.topics:
                create_topics(s.bootstrap_servers, {topic: partitions}, config=config,
                              client_config=self._admin_config)  # fmt: skip
                created.append(topic)
        if created:
            log.info("topics_created", topics=sorted(created))

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self._stop = stop
        tune_process()
        if not self._connect(stop):  # stopped before Kafka answered
            self.consumer.close()
            if self.watcher is not None:
                self.watcher.stop()
            return
        log.info(
            "infer_started",
            input_topic=s.input_topic,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            group_id=s.group_id,
            batch_size=s.batch_size,
            batch_timeout_ms=s.batch_timeout_ms,
            kafka_config=redact(s.kafka_config),
            model=self.model.name,
            model_version=self.model.version,
            model_sha256=self.model_sha256,
            compiled_scoring=getattr(self.model.scorer, "accelerated", False),
            processing_guarantee="exactly-once" if s.exactly_once else "at-least-once",
            transactional_id=self.transactional_id,
            instance_id=s.instance_id,
        )
        self.consumer.subscribe(
            [s.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        server = None
        if s.metrics_port is not None:
            server = MetricsServer(s.metrics_port, self.metrics.registry, self.ready)
            server.start()
            log.info("metrics_serving", port=server.port)
        try:
            self._loop(stop)
        finally:
            self._shutdown()
            if server is not None:
                server.stop()

    def _loop(self, stop: threading.Event) -> None:
        s = self.settings
        timeout_s = s.batch_timeout_ms / 1000
        next_summary = time.monotonic() + s.log_interval_s
        next_refresh = time.monotonic() + REFRESH_INTERVAL_S
        while not stop.is_set():
            if time.monotonic() >= next_refresh:
                self._refresh_metrics()
                next_refresh = time.monotonic() + REFRESH_INTERVAL_S
            if self._resume_at > time.monotonic():
                stop.wait(min(self._resume_at - time.monotonic(), 0.1))
                continue
            if self._paused:
                self._resume_due()
            msgs = next_batch(self.consumer, s.batch_size, timeout_s)
            if msgs:
                try:
                    self._process(msgs)
                except KafkaException as exc:
                    if not s.exactly_once:
                        raise
                    self._transaction_failed(exc.args[0])
                    continue
            if s.exactly_once:
                self._commit_transaction(force=False)
            else:
                self._confirm(force=False)
            self._maybe_swap_model()
            if time.monotonic() >= next_summary:
                self._log_summary()
                next_summary = time.monotonic() + s.log_interval_s

    def _connect(self, stop: threading.Event) -> bool:
        s = self.settings
        ready = retry_until_ready(
            self.ensure_output_topics, stop, what="topics", bootstrap_servers=s.bootstrap_servers,
            last_error=self._admin_errors,
        )  # fmt: skip
        return ready and (not s.exactly_once or self._init_transactions(stop))

    def _process(self, msgs: list[Message]) -> None:
        records = [m for m in msgs if m.error() is None]
        if len(records) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None:
                    self._consume_errors(err)
            if not records:
                return
        # Tracked before anything is produced: a failure half-way rewinds this batch too.
        self._track(records)
        if self.settings.exactly_once:
            self._begin()
        started = time.perf_counter()
        values = [m.value() for m in records]
        timestamps = [m.timestamp()[1] for m in records]
        now_ms = time.time_ns() // 1_000_000
        result = score_batch(values, timestamps, self.model, now_ms)
        produce = self.producer.produce
        topic = self.settings.output_topic
        for _, key, value in result.predictions:
            try:
                produce(topic, value, key)
            except BufferError:
                self._produce_when_room(topic, value, key, None)
        for index, invalid in result.invalid:
            self._dead_letter(records[index], invalid)
        metrics = self.metrics
        # Timestamps of 0 or below: the producer set none (old clients), nothing to measure.
        stamps = np.asarray(timestamps, dtype=np.int64)
        stamps = stamps[stamps > 0]
        done_ms = time.time_ns() // 1_000_000
        metrics.latency.observe_many(np.maximum(done_ms - stamps, 0) / 1000.0)
        metrics.consumed.inc(len(records))
        metrics.scored.inc(len(result.predictions))
        metrics.batch_size.observe(len(records))
        metrics.batch_seconds.observe(time.perf_counter() - started)
        stats = self.stats
        stats.consumed += len(records)
        stats.scored += len(result.predictions)
        stats.batches += 1
        stats.max_batch = max(stats.max_batch, len(records))

    def _dead_letter(self, msg: Message, invalid: InvalidEvent) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("error.type", invalid.error_type.value.encode()),
            ("error.message", self._message(invalid).encode("utf-8", "replace")[:1000]),
            ("source.topic", (msg.topic() or "").encode()),
            ("source.partition", str(msg.partition()).encode()),
            ("source.offset", str(msg.offset()).encode()),
        ]
        self.stats.dead_letters[invalid.error_type.value] += 1
        self.metrics.dead_letters.labels(invalid.error_type.value).inc()
        # Dead letters are rare: each carries its own callback naming its source partition, so
        # a DLQ that refuses it holds back that partition only.
        source = msg.partition()

        def report(err: KafkaError | None, _msg: Message) -> None:
            self._delivery_failed(err, source)

        try:
            self.producer.produce(
                self.settings.dlq_topic, msg.value(), msg.key(), headers=headers, on_delivery=report
            )
        except BufferError:
            self._produce_when_room(
                self.settings.dlq_topic, msg.value(), msg.key(), headers, report
            )

    def _message(self, invalid: InvalidEvent) -> str:
        return redacted_message(invalid) if self.settings.redact_features else invalid.message

    def _produce_when_room(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Any,  # noqa: ANN401
        on_delivery: Any = None,  # noqa: ANN401
    ) -> None:
        """The local queue is full: serve delivery reports until there is room, then produce."""
        extra = {} if on_delivery is None else {"on_delivery": on_delivery}
        while True:
            self.producer.poll(0.1)
            try:
                self.producer.produce(topic, value, key, headers=headers, **extra)
            except BufferError:
                continue
            return

    def _maybe_swap_model(self) -> None:
        if self.watcher is None:
            return
        ready = self.watcher.take_ready()
        if ready is None:
            return
        previous = self.model.version
        try:
            self.model = serving_model(ready, self.settings)
        except ModelError as exc:
            log.error("model_refused", model=self.model.name, version=ready.version,
                      serving_version=previous, reason=str(exc))  # fmt: skip
            return
        self.model_sha256 = ready.manifest.sha256
        self.metrics.serving(self.model.name, self.model.version, self.model_sha256)
        log.info(
            "model_swapped",
            model=self.model.name,
            from_version=previous,
            to_version=self.model.version,
            sha256=self.model_sha256,
        )

    def _refresh_metrics(self) -> int | None:
        """Publish lag per partition to the metrics; the total for the summary line."""
        lags = partition_lags(self.consumer)
        if lags is None:
            return None
        self.metrics.snapshot.snapshot = MetricsSnapshot(lag=lags)
        return sum(lags.values())

    def _log_summary(self) -> None:
        stats = self.stats
        now = time.monotonic()
        interval = now - stats.since
        consumed = stats.consumed - stats.consumed_at_last
        lag = self._refresh_metrics()
        log.info(
            "infer_summary",
            consumed=stats.consumed,
            scored=stats.scored,
            dead_letters=dict(stats.dead_letters),
            batches=stats.batches,
            max_batch=stats.max_batch,
            mean_batch=round(stats.consumed / stats.batches, 1) if stats.batches else 0,
            events_per_s=round(consumed / interval, 1) if interval > 0 else 0,
            lag=lag,
            rewinds=stats.rewinds,
            model_version=self.model.version,
        )
        stats.since, stats.consumed_at_last = now, stats.consumed

    def _shutdown(self) -> None:
        try:
            if self.settings.exactly_once:
                self._commit_transaction(force=True)
            else:
                self._confirm(force=True)
                try:
                    self.consumer.commit(asynchronous=False)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError._NO_OFFSET:  # noqa: SLF001
                        log.warning("final_commit_failed", reason=str(exc))
            self._log_summary()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            if self.watcher is not None:
                self.watcher.stop()
            log.info("infer_stopped", consumed=self.stats.consumed, scored=self.stats.scored)
