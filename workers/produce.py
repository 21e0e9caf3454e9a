"""`scorestream produce`: a rate-limited synthetic feature stream and its delayed labels."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from confluent_kafka import KafkaError, Message, Producer

from workers.core.synthetic import StreamSpec, SyntheticEvent, stream
from workers.kafka_io.admin import create_missing_topics
from workers.kafka_io.clients import LastError, make_producer, retry_until_ready

log = structlog.get_logger("scorestream.produce")


@dataclass(frozen=True, slots=True)
class ProduceSettings:
    bootstrap_servers: str
    features_topic: str
    labels_topic: str | None
    events: int  # 0: until stopped
    rate: float  # events per second
    spec: StreamSpec
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
        required={"enable.idempotence": True, "acks": "all",
                  "delivery.report.only.error": True, "on_delivery": on_delivery},
        name="produce",
    )  # fmt: skip
    errors = LastError()  # an admin call's failure is a timeout; this says why
    topics = {s.features_topic: s.partitions}
    if s.labels_topic:
        topics[s.labels_topic] = s.partitions
    if not retry_until_ready(
        lambda: create_missing_topics(
            s.bootstrap_servers, topics, client_config={**s.kafka_config, "error_cb": errors}
        ),
        stop, what="topics", bootstrap_servers=s.bootstrap_servers, last_error=errors,
    ):  # fmt: skip
        return counts
    pump = _Pump(
        s,
        producer,
        counts,
        stream(s.spec, s.start_ms or time.time_ns() // 1_000_000, 1000 / s.rate),
    )
    started, next_log = time.monotonic(), time.monotonic() + s.log_interval_s
    log.info("produce_started", features_topic=s.features_topic, labels_topic=s.labels_topic,
             events=s.events or "until stopped", rate=s.rate, drift_at=s.spec.drift_at)  # fmt: skip
    while not stop.is_set():
        due_events = int((time.monotonic() - started) * s.rate) + 1
        pump.events_until(min(due_events, s.events) if s.events else due_events)
        pump.labels_until(time.time_ns() // 1_000_000)
        producer.poll(0)
        if time.monotonic() >= next_log:
            log.info("produce_progress", events=counts.events, labels=counts.labels,
                     labels_waiting=len(pump.due_labels), failed=counts.failed)  # fmt: skip
            next_log = time.monotonic() + s.log_interval_s
        if s.events and counts.events >= s.events and not pump.due_labels:
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

    def events_until(self, due: int) -> None:
        s, counts = self.s, self.counts
        while counts.events < due:
            event = next(self.events)
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
