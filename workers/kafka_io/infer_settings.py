"""What the inference worker is told: built once by `scorestream infer`, passed down."""

from __future__ import annotations

from dataclasses import dataclass

from workers.core.events import DEFAULT_MAX_FEATURES, MAX_EVENT_ID_CHARS


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
    # Add each event's features to its Prediction (for the monitor's Outcome records).
    emit_features: bool = False
