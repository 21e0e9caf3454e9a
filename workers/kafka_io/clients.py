"""Build confluent-kafka clients with our defaults, the user's pass-through settings and logging."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

log = structlog.get_logger("scorestream.kafka")

# A broker that has just started loads its group and transaction coordinators' state for a
# few seconds and answers with these meanwhile: expected, retried, not a failure.
COORDINATOR_LOADING = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


def log_coordinator_loading(what: str, reason: str, retry_in_s: float) -> None:
    log.info(
        "kafka_coordinator_loading",
        what=what,
        reason=reason,
        retry_in_s=retry_in_s,
        note="normal for a few seconds after a broker starts; retrying",
    )


# Settings whose values must never reach a log line.
SECRET_MARKERS = ("password", "secret", "sasl.oauthbearer.config", "key.pem", "token")


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v)
        for k, v in config.items()
        if not callable(v) and not isinstance(v, logging.Logger)
    }


class _LibrdkafkaLogHandler(logging.Handler):
    """Forward librdkafka's own log lines as structured warnings, each kind (client and the
    facility word that starts the line, e.g. FAIL) at most once per interval: with a broker
    down, every reconnect attempt of every connection logs, hundreds of lines a minute."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        kind = (record.name, message.split(" ", 1)[0])
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        log.warning(
            "librdkafka_log",
            client=record.name,
            message=message,
            suppressed=self._suppressed.pop(kind, 0),
        )


class ErrorReporter:
    """error_cb: log each distinct client error at most once per interval (no storms)."""

    def __init__(self, client: str, interval_s: float = 10.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self._last: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}

    def __call__(self, err: KafkaError) -> None:
        now = time.monotonic()
        code = err.code()
        if not err.fatal() and now - self._last.get(code, -1e9) < self.interval_s:
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return
        self._last[code] = now
        if code in COORDINATOR_LOADING and not err.fatal():
            self._suppressed.pop(code, None)
            log_coordinator_loading(self.client, err.str(), retry_in_s=0)
            return
        log.warning(
            "kafka_client_error",
            client=self.client,
            code=err.name(),
            reason=err.str(),
            fatal=err.fatal(),
            retriable=err.retriable(),
            suppressed=self._suppressed.pop(code, 0),
        )


def _logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"scorestream.librdkafka.{name}")
    if not logger.handlers:
        logger.addHandler(_LibrdkafkaLogHandler())
        logger.propagate = False
        logger.setLevel(logging.WARNING)
    return logger


def client_config(
    bootstrap_servers: str,
    extra: Mapping[str, str],
    *,
    defaults: Mapping[str, Any],
    required: Mapping[str, Any],
    name: str,
) -> dict[str, Any]:
    """Defaults < the user's --kafka-config < what our delivery guarantee depends on."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        **defaults,
        **extra,
        **required,
    }
    config.setdefault("error_cb", ErrorReporter(name))
    config.setdefault("logger", _logger(name))
    return config


def make_producer(bootstrap_servers: str, extra: Mapping[str, str], **how: Any) -> Producer:  # noqa: ANN401
    return Producer(client_config(bootstrap_servers, extra, **how))


def make_consumer(bootstrap_servers: str, extra: Mapping[str, str], **how: Any) -> Consumer:  # noqa: ANN401
    return Consumer(client_config(bootstrap_servers, extra, **how))


def committed_offsets(
    consumer: Consumer, wanted: list[TopicPartition], stop: threading.Event
) -> list[TopicPartition] | None:
    """The group's committed offsets, asked again until the coordinator answers (guessing
    would skip or repeat records); None if the worker is stopped first."""
    backoff = 0.5
    while True:
        try:
            return list(consumer.committed(wanted, timeout=10))
        except KafkaException as exc:
            log.warning("committed_offsets_unknown", reason=exc.args[0].str(), retry_in_s=backoff)
        if stop.wait(backoff):
            return None
        backoff = min(backoff * 2, 10.0)


def produce_when_room(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    **how: Any,  # noqa: ANN401 - produce()'s own keywords
) -> None:
    """Produce; while librdkafka's local queue is full, serve delivery reports and try again."""
    while True:
        try:
            producer.produce(topic, value, key, **how)
        except BufferError:
            producer.poll(0.1)
        else:
            return


class LastError:
    """error_cb for a short-lived client (an admin call): keeps the last error so a failure
    that surfaces only as a timeout can say why (wrong password, untrusted certificate)."""

    def __init__(self) -> None:
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        self.error = err

    def take(self) -> str | None:
        err, self.error = self.error, None
        return None if err is None else err.str()


def fix_for(reason: str) -> str:
    """What to check, from the words of a connection failure."""
    lowered = reason.lower()
    # Certificates first: a broker name in the text ("sasl_ssl://host") says nothing.
    if "certificate" in lowered or "handshake" in lowered:
        return (
            "check security.protocol and ssl.ca.location: it must hold the CA that signed the "
            "brokers' certificates (`scorestream broker start --tls` writes both to client.conf)"
        )
    if "authenticat" in lowered:
        return (
            "check sasl.mechanism, sasl.username and sasl.password (--kafka-config, "
            "--kafka-config-file or SCORESTREAM_KAFKA_SASL_PASSWORD)"
        )
    return (
        "check --bootstrap-servers and that the brokers are up "
        "(`scorestream broker start` runs one locally)"
    )


class CallStuck(Exception):  # noqa: N818 - it is what happened, not an error of ours
    """A librdkafka call did not return within its bound."""


# Longest a transactional call (init, send_offsets + commit, with their own retries) may take
# before its producer is considered stuck inside librdkafka.
TXN_CALL_LIMIT_S = 40.0


def bounded_call(call: Callable[[], object], limit_s: float) -> None:
    """Run `call` on a daemon thread; raise what it raised, or CallStuck after `limit_s`.

    librdkafka's transactional calls can block past their own timeout once the coordinator
    went away (librdkafka issues 5456 and 5511): the caller sets the producer aside instead
    of waiting with it."""
    raised: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="bounded-call").start()
    if not done.wait(limit_s):
        raise CallStuck
    if raised:
        raise raised[0]


def retry_until_ready(  # noqa: PLR0913 - the call, its name and how to diagnose and recover
    call: Callable[[], object],
    stop: threading.Event,
    *,
    what: str,
    bootstrap_servers: str,
    max_backoff_s: float = 30.0,
    last_error: LastError | None = None,
    recover: Callable[[KafkaError | None], None] | None = None,
) -> bool:
    """Call until Kafka answers, backing off 1 s, 2 s, ... `max_backoff_s`; False if stopped.

    A worker started before its brokers (or during an outage) waits and says so, rather than
    exiting. A fatal client error raises, unless `recover` is given: it is called after every
    failed attempt (with the client's error, None for a timeout) and can replace the client,
    so even a fatal error is retried with a fresh one.
    """
    backoff, attempt = 1.0, 0
    while not stop.is_set():
        attempt += 1
        try:
            call()
        except (KafkaException, FutureTimeout) as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is not None and err.fatal() and recover is None:
                raise
            if recover is not None:
                recover(err)
            if err is not None and err.code() in COORDINATOR_LOADING:
                log_coordinator_loading(what, err.str(), backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff_s)
                continue
            reason = err.str() if err is not None else "timed out"
            cause = last_error.take() if last_error is not None else None
            if cause and cause not in reason:
                reason = f"{reason}; the client reported: {cause}"
            log.warning(
                "kafka_unreachable",
                what=what,
                bootstrap_servers=bootstrap_servers,
                attempt=attempt,
                reason=reason,
                retry_in_s=backoff,
                fix=fix_for(reason),
            )
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        if attempt > 1:
            log.info("kafka_reachable", what=what, attempts=attempt)
        return True
    return False


class HoldsTransactionalProducer(Protocol):
    producer: Producer
    abandoned_producers: list[Producer]

    def new_producer(self) -> Producer: ...


def init_transactions(
    holder: HoldsTransactionalProducer, stop: threading.Event, *, bootstrap_servers: str
) -> bool:
    """Initialise `holder.producer`'s transactions once the cluster answers; False if stopped.

    init_transactions can hang inside librdkafka like the other transactional calls, so each
    attempt is bounded: a stuck producer is set aside (destroying it would block too) and the
    next attempt starts from a new one, as it does after a fatal error."""
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        producer = holder.producer
        try:
            bounded_call(lambda: producer.init_transactions(10), TXN_CALL_LIMIT_S)
        except CallStuck:
            log.error("init_transactions_stuck", waited_s=TXN_CALL_LIMIT_S, attempt=attempts)
            holder.abandoned_producers.append(producer)
            holder.producer = holder.new_producer()
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "init_transactions did not return")  # noqa: SLF001
            ) from None

    def recover(err: KafkaError | None) -> None:
        if err is not None and err.fatal():
            holder.producer = holder.new_producer()

    return retry_until_ready(
        attempt, stop, what="init_transactions", bootstrap_servers=bootstrap_servers,
        recover=recover,
    )  # fmt: skip


class AdminAccess:
    """Settings for short-lived admin clients (topic checks, creation) whose error callback
    keeps the client's last error: an admin call that fails says only that it timed out, the
    callback says why (wrong password, untrusted certificate, nothing listening)."""

    def __init__(self, bootstrap_servers: str, kafka_config: Mapping[str, str]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.errors = LastError()
        self.config: dict[str, Any] = {**kafka_config, "error_cb": self.errors}

    def retry_until_ready(
        self, call: Callable[[dict[str, Any]], object], stop: threading.Event, *, what: str
    ) -> bool:
        """`call(config)` until the cluster answers, as `retry_until_ready`."""
        return retry_until_ready(
            lambda: call(self.config),
            stop,
            what=what,
            bootstrap_servers=self.bootstrap_servers,
            last_error=self.errors,
        )


def partition_lags(consumer: Consumer) -> dict[tuple[str, int], int] | None:
    """Records behind the high watermark per assigned partition, from the consumer's cached
    watermarks (no broker round trip); None while the client cannot tell."""
    try:
        assignment = consumer.assignment()
        if not assignment:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.position(assignment):
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                lags[(tp.topic, tp.partition)] = max(high - tp.offset, 0)
    except KafkaException:
        return None
    return lags


def next_batch(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Every message already fetched, up to `max_messages`; when there is none, wait up to
    `timeout_s` for the first (and take what arrived with it).

    librdkafka's consume() waits until the batch is full or the timeout passes: at moderate
    rates that adds the whole fill time to every event's latency. Taken this way, batches stay
    small while the worker keeps up and grow by themselves when it falls behind (events pile
    up while a batch is scored), which is when their lower cost per event is needed.
    """
    msgs: list[Message] = consumer.consume(num_messages=max_messages, timeout=0)
    if msgs or timeout_s <= 0:
        return msgs
    msgs = consumer.consume(num_messages=1, timeout=timeout_s)
    if msgs and max_messages > 1:
        msgs += consumer.consume(num_messages=max_messages - 1, timeout=0)
    return msgs


def retire(producer: Producer) -> None:
    """Let go of a failed (not stuck) producer: what it still holds is purged, so its
    librdkafka instance is destroyed at once instead of being kept, one per failure."""
    with contextlib.suppress(KafkaException, RuntimeError):
        producer.purge()
        producer.flush(0)
