"""The inference worker's loop: fetch a micro-batch, score it, hand its outputs over.

How outputs and offsets are delivered — at-least-once or exactly-once — is one class each in
`guarantees`; this loop calls it at the start of a batch, for the producer and a dead letter's
callback, when a commit may be due, and on revoke, loss and shutdown.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from workers.core.events import (
    EventDecoder,
    InvalidEvent,
    redacted_message,
)
from workers.core.inference import ServingModel, score_batch
from workers.kafka_io.admin import create_topics, list_topics
from workers.kafka_io.clients import (
    AdminAccess,
    ErrorReporter,
    make_consumer,
    next_batch,
    partition_lags,
    redact,
)
from workers.kafka_io.guarantees import AtLeastOnce, ExactlyOnce, Guarantee
from workers.kafka_io.infer_settings import InferSettings
from workers.metrics import REFRESH_INTERVAL_S, InferMetrics, MetricsServer, MetricsSnapshot
from workers.model_store import LoadedModel, ModelError, ModelWatcher
from workers.process_tuning import tune_process

log = structlog.get_logger("scorestream.infer")

# A dead letter by reference keeps its source key up to this size (the headers say how large
# the key and value were).
MAX_REFERENCE_KEY_BYTES = 1024

__all__ = ["InferSettings", "InferenceWorker", "serving_model"]


def serving_model(loaded: LoadedModel, settings: InferSettings) -> ServingModel:
    try:
        decoder = EventDecoder(
            loaded.manifest.specs,
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
        emit_features=settings.emit_features,
    )


class _Stats:
    def __init__(self) -> None:
        self.consumed = 0
        self.scored = 0
        self.batches = 0
        self.max_batch = 0
        self.dead_letters: Counter[str] = Counter()
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
        # A broker outage surfaces as an error per fetch: logged once per code per 10 s.
        self._consume_errors = ErrorReporter("infer-consumer")
        self._admin = AdminAccess(settings.bootstrap_servers, settings.kafka_config)
        guarantee = ExactlyOnce if settings.exactly_once else AtLeastOnce
        consumer_required: dict[str, Any] = {
            "group.id": settings.group_id,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            **guarantee.consumer_required,
        }
        if settings.instance_id:
            consumer_required["group.instance.id"] = settings.instance_id
        self.consumer: Consumer = make_consumer(
            settings.bootstrap_servers,
            settings.kafka_config,
            defaults={
                "auto.offset.reset": "earliest",
                # Cooperative rebalancing hands partitions over in two rounds. A static member
                # (--instance-id) killed between them is given back its first-round assignment
                # when it restarts, and no second round follows: the partitions revoked in the
                # first stay unassigned for good (the chaos test caught two of four). With static
                # membership a restart causes no rebalance anyway, so the one-round eager
                # protocol costs nothing there.
                "partition.assignment.strategy": (
                    "roundrobin" if settings.instance_id else "cooperative-sticky"
                ),
                "auto.commit.interval.ms": 1000,
                "fetch.wait.max.ms": 10,
                # librdkafka pauses fetching for 1 s once its local queue is full; working
                # through a backlog, that left the worker idle a third of the time.
                "fetch.queue.backoff.ms": 10,
            },
            required=consumer_required,
            name="infer-consumer",
        )
        transactional_id = (
            f"{settings.group_id}.{settings.instance_id or self._process_identity()}"
            if settings.exactly_once
            else None
        )
        self.delivery: Guarantee = guarantee(
            settings, self.consumer, self.metrics, transactional_id
        )

    @property
    def transactional_id(self) -> str | None:
        return self.delivery.transactional_id

    @property
    def abandoned_producers(self) -> list[Any]:
        """Producers stuck inside librdkafka; the process exits without destroying them."""
        return self.delivery.abandoned_producers

    @staticmethod
    def _process_identity() -> str:
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    # -- rebalance --------------------------------------------------------------------------

    def ready(self) -> bool:
        """/healthz: in the group with partitions handed out (the model is loaded before the
        worker exists: a worker without one never starts)."""
        return self._assigned

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = True
        self.delivery.on_assign(partitions)
        log.info(
            "partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions]
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.delivery.on_revoke(partitions)
        log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.delivery.on_lost(partitions)
        log.warning("partitions_lost", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    # -- the loop ---------------------------------------------------------------------------

    def ensure_output_topics(self, admin_config: dict[str, Any]) -> bool:
        """Create missing output topics with the input's partition count (laptop default);
        False while the input topic does not exist (nothing is created then)."""
        s = self.settings
        # Short: an unreachable cluster is retried (with backoff and a log line) by the caller.
        existing = list_topics(s.bootstrap_servers, admin_config, timeout_s=5)
        source = existing.topics.get(s.input_topic)
        if source is None or source.error is not None or not source.partitions:
            return False
        partitions = len(source.partitions)
        created = []
        # The DLQ has room for any input value plus the error headers.
        for topic, config in (
            (s.output_topic, {}),
            (s.dlq_topic, {"max.message.bytes": "2097152"}),
        ):
            if topic not in existing.topics:
                create_topics(s.bootstrap_servers, {topic: partitions}, config=config,
                              client_config=admin_config)  # fmt: skip
                created.append(topic)
        if created:
            log.info("topics_created", topics=sorted(created))
        return True

    def run(self, stop: threading.Event) -> None:
        s = self.settings
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
            processing_guarantee=self.delivery.name,
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
        except BaseException:
            # A bug, or a client error the guarantee does not recover from, with a batch in
            # hand: its events must be read again, never committed unscored.
            self.delivery.abandon()
            raise
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
            if self.delivery.held_back(stop):
                continue
            msgs = next_batch(self.consumer, s.batch_size, timeout_s)
            if msgs:
                try:
                    self._process(msgs)
                except KafkaException as exc:
                    self.delivery.batch_failed(exc)
                    continue
            self.delivery.commit_due(force=False)
            self._maybe_swap_model()
            if time.monotonic() >= next_summary:
                self._log_summary()
                next_summary = time.monotonic() + s.log_interval_s

    def _connect(self, stop: threading.Event) -> bool:
        return self._wait_for_input_topic(stop) and self.delivery.connect(stop)

    def _wait_for_input_topic(self, stop: threading.Event) -> bool:
        """Until the input topic exists: a worker started before its topic (or its producers)
        waits and says so, rather than failing; then its outputs are created to match."""
        s = self.settings
        said_at = -1e9
        found: list[bool] = []
        while not stop.is_set():
            found.clear()
            if not self._admin.retry_until_ready(
                lambda config: found.append(self.ensure_output_topics(config)), stop,
                what="topics",
            ):  # fmt: skip
                return False
            if found and found[0]:
                if said_at > -1e9:
                    log.info("input_topic_found", topic=s.input_topic)
                return True
            if time.monotonic() - said_at >= 30:
                said_at = time.monotonic()
                log.warning(
                    "input_topic_missing",
                    topic=s.input_topic,
                    bootstrap_servers=s.bootstrap_servers,
                    action="waiting for it, checking every 2 s",
                    fix=f"create it (`scorestream topics create --features-topic "
                    f"{s.input_topic}` creates the whole set) or start its producers if the "
                    "cluster creates topics on first write",
                )
            stop.wait(2.0)
        return False

    def _process(self, msgs: list[Message]) -> None:
        records = [m for m in msgs if m.error() is None]
        if len(records) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None:
                    self._consume_errors(err)
            if not records:
                return
        self.delivery.start_batch(records)
        started = time.perf_counter()
        values = [m.value() for m in records]
        timestamps = [m.timestamp()[1] for m in records]
        now_ms = time.time_ns() // 1_000_000
        result = score_batch(values, timestamps, self.model, now_ms)
        produce = self.delivery.producer.produce
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
        report = self.delivery.dead_letter_callback(msg.partition() or 0)
        value, key = msg.value(), msg.key()
        try:
            self._produce(self.settings.dlq_topic, value, key, headers, report)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            # Larger than any record this producer may send (an input topic can allow more
            # than our DLQ takes): dead-lettered by reference. The value is left out; the
            # headers say so, how large it was and where the original still is.
            headers += [
                ("error.value_omitted", b"true"),
                ("source.value_bytes", str(len(value or b"")).encode()),
                ("source.key_bytes", str(len(key or b"")).encode()),
            ]
            small_key = key if key is not None and len(key) <= MAX_REFERENCE_KEY_BYTES else None
            self._produce(self.settings.dlq_topic, b"", small_key, headers, report)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Any,  # noqa: ANN401
        on_delivery: Any,  # noqa: ANN401
    ) -> None:
        try:
            self.delivery.producer.produce(
                topic, value, key, headers=headers, on_delivery=on_delivery
            )
        except BufferError:
            self._produce_when_room(topic, value, key, headers, on_delivery)

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
            self.delivery.producer.poll(0.1)
            try:
                self.delivery.producer.produce(topic, value, key, headers=headers, **extra)
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
            self.watcher.refused(ready)
            log.error("model_refused", model=self.model.name, version=ready.version,
                      serving_version=previous, reason=str(exc))  # fmt: skip
            return
        self.watcher.accepted(ready.manifest)
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
        # `*_total` and the batch sizes count since the worker started; `interval_*` the
        # time since the previous summary; `lag` is now.
        log.info(
            "infer_summary",
            consumed_total=stats.consumed,
            scored_total=stats.scored,
            dead_letters_total=dict(stats.dead_letters),
            batches_total=stats.batches,
            rewinds_total=self.delivery.rewinds,
            max_batch=stats.max_batch,
            mean_batch=round(stats.consumed / stats.batches, 1) if stats.batches else 0,
            interval_s=round(interval, 1),
            interval_events_per_s=round(consumed / interval, 1) if interval > 0 else 0,
            lag=lag,
            model_version=self.model.version,
        )
        stats.since, stats.consumed_at_last = now, stats.consumed

    def _shutdown(self) -> None:
        try:
            self.delivery.shutdown()
            self._log_summary()
        finally:
            self.consumer.close()
            self.delivery.producer.flush(10)
            if self.watcher is not None:
                self.watcher.stop()
            log.info(
                "infer_stopped",
                consumed_total=self.stats.consumed,
                scored_total=self.stats.scored,
                dead_letters_total=dict(self.stats.dead_letters),
            )
