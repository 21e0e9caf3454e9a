"""A stage's settings come from the one-process monitor's, as the CLI builds them."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from workers.core.monitor import MonitorConfig
from workers.kafka_io.monitor_loop import MonitorSettings
from workers.kafka_io.stages import StageSettings


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
