"""The monitor's state as a whole: what its summary line reports."""

from __future__ import annotations

import json

import pytest

from workers.core.monitor import MonitorConfig, MonitorState

pytestmark = pytest.mark.unit


def test_the_summary_names_the_baseline_as_alerts_and_the_readme_do() -> None:
    state = MonitorState(MonitorConfig(window=4))
    for i in range(6):
        body = {"event_id": f"e{i}", "model_name": "m", "model_version": 1, "label": 1,
                "event_time": 1000 * i}  # fmt: skip
        state.on_prediction(0, json.dumps(body).encode(), now_ms=0)
        label = {"event_id": f"e{i}", "label": 1 if i < 4 else 0, "label_time": 1000 * i}
        state.on_label(0, json.dumps(label).encode(), 0, now_ms=0)
    version = state.metrics()["m/v1"]
    assert "reference_accuracy" not in version
    assert version["baseline_accuracy"] == 1.0  # the first `window` outcomes
    assert version["window_accuracy"] == 0.5
    assert version["joined"] == 6
