"""A stage's settings come from the one-process monitor's, as the CLI builds them."""

from __future__ import annotations

import json
import threading
from dataclasses import fields
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message

from tests.unit.kafka_io.faults import RefusingProducer, bug_on_call
from workers.core.monitor import MonitorConfig
from workers.core.outcomes import JoinPartition
from workers.kafka_io.monitor_loop import MonitorSettings
from workers.kafka_io.stages import JoinStage, StageSettings

pytestmark = pytest.mark.unit


def test_a_stage_takes_every_setting_it_shares_with_the_monitor() -> None:
    monitor = MonitorSettings(
        bootstrap_servers="b:1", predictions_topic="p", labels_topic="l", alerts_topic="a",
        group_id="g", kafka_config={"x": "y"}, state_dir=Path("/unused"),
        config=MonitorConfig(window=7), features_topic="f", feature_window=9, shape_window=11,
        feature_z_threshold=3.0, batch_size=5, checkpoint_interval_s=0.5, log_interval_s=2.0,
        metrics_port=9, instance_id="main", exactly_once=True, redact_features=True,
    )  # fmt: skip
    stage = StageSettings.of(monitor, outcomes_topic="o", instance_id="host-1")
    assert (stage.outcomes_topic, stage.instance_id) == ("o", "host-1")
    shared = [f.name for f in fields(StageSettings) if f.name not in {"outcomes_topic",
                                                                        "instance_id"}]  # fmt: skip
    assert {n: getattr(stage, n) for n in shared} == {n: getattr(monitor, n) for n in shared}
    assert stage.repartition_topic == monitor.repartition_topic == "g-labels-repartition"


def join_stage(state_dir: Path) -> JoinStage:
    """A join stage whose clients point nowhere (they never connect in these tests)."""
    monitor = MonitorSettings(
        bootstrap_servers="127.0.0.1:1", predictions_topic="p", labels_topic="l",
        alerts_topic="a", group_id="g", kafka_config={}, state_dir=state_dir,
        config=MonitorConfig(),
    )  # fmt: skip
    return JoinStage(StageSettings.of(monitor, outcomes_topic="o", instance_id="i"))


def test_a_bug_mid_batch_stores_no_snapshot_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = join_stage(tmp_path)
    produced: list[str] = []
    monkeypatch.setattr(stage, "produce", lambda topic, *_a, **_k: produced.append(topic))
    body = {"model_name": "m", "model_version": 1, "label": 1, "event_time": 5}
    batch = [Message(topic="p", partition=0, offset=i, timestamp=(1, 0),
                     value=json.dumps({**body, "event_id": f"e{i}"}).encode())
             for i in range(3)]  # fmt: skip
    bug_on_call(monkeypatch, JoinPartition, "on_prediction", 2)
    real_consumer = stage.consumer

    class Batch:
        def consume(self, **_how: object) -> list[Message]:
            return batch

        def close(self) -> None:
            real_consumer.close()

    stage.consumer = Batch()  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            stage._loop(threading.Event())  # noqa: SLF001
        assert stage.dirty  # the first prediction was applied to partition 0's state
        assert not stage.checkpoint()
        assert stage.changelog not in produced
    finally:
        stage.close()


def test_a_produce_that_raises_fails_the_checkpoint_instead_of_the_stage(
    tmp_path: Path,
) -> None:
    stage = join_stage(tmp_path)
    real = stage.producer
    try:
        # An aggregate without write access to `alerts`, a transaction gone abortable: every
        # produce() after raises at once.
        stage.producer = RefusingProducer(KafkaError._FATAL)  # type: ignore[assignment]  # noqa: SLF001
        stage.produce("o", b"{}", b"k")
        assert stage.failed is not None
        assert stage.failed.code() == KafkaError._FATAL  # noqa: SLF001
    finally:
        stage.producer = real
        stage.close()
