"""The inference worker's delivery guarantees: one class each, behind the calls its loop makes.

The loop reads as fetch -> score -> deliver; around it a guarantee is told when a batch starts
(`start_batch`), is asked for the producer the outputs go to and for a dead letter's delivery
callback, commits when due (`commit_due`), and handles a failed batch, a revoke, a lost
partition and the shutdown.

At-least-once: offsets are stored only once the broker has acknowledged every record produced
for them (predictions and dead letters alike). librdkafka reports only failed deliveries, so
success is read from the producer's queue running empty: after `poll`, `len(producer) == 0`
means every record produced so far is acknowledged. Under steady load the queue is rarely
empty, so at least every `confirm_interval_s` it waits for it (a flush); a failed delivery
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

import threading
import time
from collections.abc import Callable, Collection
from typing import Any, ClassVar, cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from workers.kafka_io.clients import (
    COORDINATOR_LOADING,
    TXN_CALL_LIMIT_S,
    CallStuck,
    bounded_call,
    committed_offsets,
    init_transactions,
    log_coordinator_loading,
    make_producer,
)
from workers.kafka_io.infer_settings import InferSettings
from workers.metrics import InferMetrics

log = structlog.get_logger("scorestream.infer")

TopicKey = tuple[str, int]
DeliveryCallback = Callable[[KafkaError | None, Message], None]


class Guarantee:
    """What both guarantees share: which input offsets are in flight, failed deliveries,
    rewinds with backoff, and partitions paused because the DLQ refused their dead letters."""

    name: ClassVar[str]
    # Consumer settings this guarantee depends on (beyond the worker's own).
    consumer_required: ClassVar[dict[str, Any]]

    def __init__(
        self,
        settings: InferSettings,
        consumer: Consumer,
        metrics: InferMetrics,
        transactional_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics
        self.transactional_id = transactional_id
        self.rewinds = 0
        # Producers stuck inside librdkafka, kept referenced: destroying one would block too.
        self.abandoned_producers: list[Producer] = []
        # Failed deliveries: the error and, for a dead letter, its source partition.
        self._failed_deliveries: list[tuple[KafkaError, int | None]] = []
        # Per input partition: (first offset not yet confirmed, next offset to store).
        self._pending: dict[TopicKey, tuple[int, int]] = {}
        self._oldest_pending = 0.0
        # After a failed delivery, wait before re-reading: a persistent cause (a topic that
        # refuses the records) must not become a tight loop.
        self._rewind_backoff_s = 0.0
        self._resume_at = 0.0
        # Partitions held back because the DLQ refused their dead letters: resume time, backoff.
        self._paused: dict[TopicKey, tuple[float, float]] = {}
        self._stop = threading.Event()  # the worker's, once connect() is called
        # Set when the loop failed half-way through a batch: nothing more may be committed.
        self._abandoned = False
        self.producer: Producer = self.new_producer()

    # -- the calls the loop makes ----------------------------------------------------------

    def connect(self, stop: threading.Event) -> bool:
        """Ready the producer once the cluster answers; False if stopped first."""
        self._stop = stop
        return True

    def start_batch(self, records: list[Message]) -> None:
        """Note the batch's offsets before anything is produced for it: a failure half-way
        re-reads this batch too."""
        self._track(records)

    def dead_letter_callback(self, source_partition: int) -> DeliveryCallback:
        """Dead letters are rare: each carries its own callback naming its source partition,
        so a DLQ that refuses it holds back that partition only."""

        def report(err: KafkaError | None, _msg: Message) -> None:
            self._delivery_failed(err, source_partition)

        return report

    def held_back(self, stop: threading.Event) -> bool:
        """True while a rewind's backoff runs (the loop fetches nothing); resumes paused
        partitions whose retry time has come."""
        if self._resume_at > time.monotonic():
            stop.wait(min(self._resume_at - time.monotonic(), 0.1))
            return True
        if self._paused:
            self._resume_due()
        return False

    def commit_due(self, *, force: bool) -> None:
        raise NotImplementedError

    def batch_failed(self, exc: KafkaException) -> None:
        """Producing a batch raised."""
        raise exc

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        """A partition handed (back) to this worker starts flowing: one paused before it was
        revoked is not left paused in the client."""
        try:
            self.consumer.resume(partitions)
        except KafkaException as exc:
            log.warning("resume_on_assign_failed", reason=str(exc))

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def abandon(self) -> None:
        """The loop failed with a batch in hand (a bug, or a client error this guarantee does
        not recover from): whatever is not committed yet stays uncommitted, so the events are
        read again after the restart instead of being committed unscored."""
        self._abandoned = True
        self._pending = {}

    def shutdown(self) -> None:
        raise NotImplementedError

    # -- producer ----------------------------------------------------------------------------

    def new_producer(self) -> Producer:
        required: dict[str, Any] = {
            # Ordered, not duplicated by retries, acknowledged by all in-sync replicas.
            "enable.idempotence": True,
            "acks": "all",
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery_failure,
            # The Java clients' key hashing: a prediction lands where any Java, Kafka Streams
            # or Kafka Connect producer would put its key, and where the monitor re-keys its
            # label to.
            "partitioner": "murmur2_random",
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
        s = self.settings
        return make_producer(
            s.bootstrap_servers, s.kafka_config, defaults=defaults, required=required,
            name="infer-producer",
        )  # fmt: skip

    def _on_delivery_failure(self, err: KafkaError | None, _msg: Message) -> None:
        self._delivery_failed(err, None)

    def _delivery_failed(self, err: KafkaError | None, source_partition: int | None) -> None:
        if err is None or err.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):  # noqa: SLF001
            return  # delivered, or an aborted transaction's record (rewound, not failed)
        self._failed_deliveries.append((err, source_partition))

    # -- offsets in flight -------------------------------------------------------------------

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

    def _rewind(self, reason: str | None = None, *, backoff: bool = True) -> None:
        """Re-read every pending partition from its first unconfirmed offset, after a backoff;
        a partition whose dead letters the DLQ refused is paused on its own."""
        failures = self._failed_deliveries
        self._failed_deliveries = []
        self.rewinds += 1
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

    def _committed(self) -> None:
        """Every output so far is acknowledged and its offsets handed on."""
        self._pending = {}
        self._rewind_backoff_s = 0.0

    # -- paused partitions -------------------------------------------------------------------

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

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._pending = {k: v for k, v in self._pending.items() if k not in gone}
        held = [TopicPartition(*k) for k in self._paused if k in gone]
        if held:
            # librdkafka 2.16 drops a pause with the partition (a test checks); lift it while it
            # is ours all the same, for a client that would keep it.
            try:
                self.consumer.resume(held)
            except KafkaException as exc:
                log.warning("resume_on_revoke_failed", reason=str(exc))
        self._paused = {k: v for k, v in self._paused.items() if k not in gone}
        self.metrics.paused.set(len(self._paused))


class AtLeastOnce(Guarantee):
    """Offsets stored once every output for them is acknowledged; a crash may repeat some."""

    name = "at-least-once"
    # Stored offsets are committed periodically; we store only acknowledged ones.
    consumer_required: ClassVar[dict[str, Any]] = {"enable.auto.commit": True}

    def commit_due(self, *, force: bool) -> None:
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

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Hand over cleanly: everything produced is acknowledged and committed first."""
        self.commit_due(force=True)
        self._commit_stored("commit_on_revoke_failed")
        super().on_revoke(partitions)

    def shutdown(self) -> None:
        if not self._abandoned:  # abandoned: what was stored is acknowledged, the rest re-read
            self.commit_due(force=True)
        self._commit_stored("final_commit_failed")

    def _commit_stored(self, failure_event: str) -> None:
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # noqa: SLF001 - public constant
                log.warning(failure_event, reason=str(exc))

    def _store(self, held_back: dict[TopicKey, tuple[int, int]]) -> None:
        offsets = [TopicPartition(t, p, nxt) for (t, p), (_, nxt) in self._pending.items()]
        self._committed()
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


class ExactlyOnce(Guarantee):
    """Outputs and consumed offsets commit in one Kafka transaction."""

    name = "exactly-once"
    # Offsets commit inside the transactions; inputs written transactionally by their
    # producers are read only once committed.
    consumer_required: ClassVar[dict[str, Any]] = {
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }

    # Whether a transaction is open, and since when (monotonic s).
    _txn_open = False
    _txn_started = 0.0

    def connect(self, stop: threading.Event) -> bool:
        self._stop = stop
        return self._init_transactions()

    def start_batch(self, records: list[Message]) -> None:
        super().start_batch(records)
        if not self._txn_open:
            self.producer.begin_transaction()
            self._txn_open = True
            self._txn_started = time.monotonic()

    def commit_due(self, *, force: bool) -> None:
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
            bounded_call(commit, TXN_CALL_LIMIT_S)
        except KafkaException as exc:
            self._transaction_failed(exc.args[0])
            return
        except CallStuck:
            self._producer_stuck()
            return
        self._txn_open = False
        self._committed()
        self._forget_recovered()
        self.metrics.transactions.labels("committed").inc()

    def batch_failed(self, exc: KafkaException) -> None:
        self._transaction_failed(exc.args[0])

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Hand over cleanly: the open transaction commits first."""
        self.commit_due(force=True)
        super().on_revoke(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        if self._txn_open:
            # Another member owns them now: our offsets would be refused. Re-read the rest.
            self._abort()
            self._rewind(reason="partitions lost")
        super().on_lost(partitions)

    def shutdown(self) -> None:
        if not self._abandoned:
            self.commit_due(force=True)

    def abandon(self) -> None:
        self._abort_open()
        super().abandon()

    def _abort_open(self) -> None:
        if self._txn_open:
            self._txn_open = False
            try:
                self.producer.abort_transaction(10)
            except KafkaException as exc:
                log.warning("abort_failed", reason=exc.args[0].str())

    # -- the transactional producer -----------------------------------------------------------

    def _init_transactions(self) -> bool:
        return init_transactions(
            self, self._stop, bootstrap_servers=self.settings.bootstrap_servers
        )

    def _fresh_producer(self) -> None:
        self.producer = self.new_producer()
        self._init_transactions()
        log.info("producer_replaced", transactional_id=self.transactional_id)

    @staticmethod
    def _retrying(call: Callable[[], object]) -> None:
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
                if err.code() in COORDINATOR_LOADING:
                    log_coordinator_loading("transaction", err.str(), 0.1 * 2**attempt)
                else:
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
        """Re-read from what the group has committed. Guessing instead (the transaction's
        first offsets) would re-process events a commit that did land already covered."""
        wanted = [TopicPartition(t, p) for t, p in self._pending]
        committed = committed_offsets(self.consumer, wanted, self._stop) if wanted else []
        if committed is None:  # stopping before the group answered: nothing more is read
            self._pending = {}
            return
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
        self._abort_open()
        try:
            self.producer.purge()
            self.producer.flush(0)
        except KafkaException as exc:  # fenced or fatal: it is being replaced anyway
            log.warning("producer_discarded", reason=exc.args[0].str())
        self._fresh_producer()
