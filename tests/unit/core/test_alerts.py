from __future__ import annotations

import numpy as np

from workers.core.alerts import (
    ACCURACY_BELOW_THRESHOLD,
    ACCURACY_RECOVERED,
    DRIFT_DETECTED,
    FEATURE_DRIFT,
    AlertRules,
    FeatureAlerts,
    VersionAlerts,
)
from workers.core.drift import DETECTORS, ConceptDrift, FeatureDrift, MovedFeature
from workers.core.performance import Snapshot

RULES = AlertRules(accuracy_threshold=0.8, min_outcomes=100, recover_margin=0.02, drift_cooldown=50)


def snap(accuracy: float, joined: int, window_size: int = 1000) -> Snapshot:
    return Snapshot(joined, window_size, accuracy, None, None, None, 0.9, {})


def names(alerts: list) -> list[str]:  # type: ignore[type-arg]
    return [a.alert for a in alerts]


def test_accuracy_alert_fires_once_per_episode_with_hysteresis() -> None:
    state = VersionAlerts("m", 1)
    fired = []
    for i, accuracy in enumerate([0.85, 0.79, 0.7, 0.79, 0.81, 0.815, 0.82, 0.7, 0.9]):
        fired += names(
            state.on_outcome(RULES, snap(accuracy, 200 + i), drifted=False, detector="d", now_ms=0)
        )
    assert fired == [
        ACCURACY_BELOW_THRESHOLD,  # 0.79: first verdict below
        ACCURACY_RECOVERED,  # 0.82 = threshold + margin; 0.81 and 0.815 were not enough
        ACCURACY_BELOW_THRESHOLD,  # 0.7: a new episode
        ACCURACY_RECOVERED,
    ]


def test_no_accuracy_verdict_before_min_outcomes() -> None:
    state = VersionAlerts("m", 1)
    assert (
        state.on_outcome(
            RULES, snap(0.1, 99, window_size=99), drifted=False, detector="d", now_ms=0
        )
        == []
    )
    [alert] = state.on_outcome(
        RULES, snap(0.1, 100, window_size=100), drifted=False, detector="d", now_ms=0
    )
    assert alert.alert == ACCURACY_BELOW_THRESHOLD
    assert alert.severity == "critical"
    assert alert.window_accuracy == 0.1
    assert alert.baseline_accuracy == 0.9
    assert alert.joined == 100


def test_drift_alerts_respect_the_cooldown() -> None:
    state = VersionAlerts("m", 3)
    fired = [
        (alert.alert, alert.joined, alert.detector, alert.model_version)
        for joined in (200, 220, 249, 250, 260, 400)
        for alert in state.on_outcome(
            RULES, snap(0.9, joined), drifted=True, detector="det", now_ms=7
        )
    ]
    assert fired == [
        (DRIFT_DETECTED, 200, "det", 3),
        (DRIFT_DETECTED, 250, "det", 3),
        (DRIFT_DETECTED, 400, "det", 3),
    ]


def test_feature_alert_names_the_moved_features_and_cools_down() -> None:
    state = FeatureAlerts("m", 2)
    moved = [MovedFeature("x", 0.0, 0.6, 0.6, 8.5)]
    [alert] = state.on_moved(RULES, moved, seen=300, joined=10, now_ms=5)
    assert alert.alert == FEATURE_DRIFT
    assert alert.features == {
        "x": {"shift_sigma": 0.6, "train_mean": 0.0, "live_mean": 0.6, "z": 8.5}
    }
    assert state.on_moved(RULES, moved, seen=349, joined=10, now_ms=6) == []
    assert len(state.on_moved(RULES, moved, seen=350, joined=10, now_ms=7)) == 1
    assert state.on_moved(RULES, [], seen=1000, joined=10, now_ms=8) == []


def test_default_detector_finds_a_clear_rise_in_errors_and_not_a_steady_rate() -> None:
    rng = np.random.default_rng(0)
    steady = ConceptDrift()
    assert not any(steady.update(correct=bool(c)) for c in rng.random(5000) > 0.2)
    rising = ConceptDrift()
    flags = [rising.update(correct=bool(c)) for c in rng.random(2000) > 0.2]
    flags += [rising.update(correct=bool(c)) for c in rng.random(2000) > 0.5]
    assert not any(flags[:2000])
    assert any(flags[2000:2300])


def test_every_configurable_detector_runs() -> None:
    for name in DETECTORS:
        detector = ConceptDrift(name)
        for i in range(300):
            detector.update(correct=i % 3 != 0)


def test_feature_drift_flags_only_the_shifted_feature() -> None:
    rng = np.random.default_rng(1)
    monitor = FeatureDrift(["a", "b", "c"], [0, 10, -5], [1, 2, 3], window=200, z_threshold=5)
    for _ in range(2000):
        assert monitor.update(rng.normal([0, 10, -5], [1, 2, 3]).tolist()) == []
    found_at = None
    for i in range(400):
        moved = monitor.update(rng.normal([0, 11, -5], [1, 2, 3]).tolist())  # b: +0.5 sigma
        if moved:
            assert [m.name for m in moved] == ["b"]
            assert 0.3 < moved[0].shift_sigma < 0.8
            found_at = i
            break
    assert found_at is not None
    assert found_at < 200


def test_may_fire_is_false_only_when_on_outcome_would_raise_nothing() -> None:
    rng = np.random.default_rng(3)
    quick, full = VersionAlerts("m", 1), VersionAlerts("m", 1)
    for joined in range(1, 3000):
        size = min(joined, 1000)
        correct = int(size * rng.uniform(0.6, 1.0))
        drifted = bool(rng.random() < 0.01)
        snapshot = Snapshot(joined, size, correct / size, None, None, None, 0.9, {})
        expected = full.on_outcome(RULES, snapshot, drifted=drifted, detector="d", now_ms=0)
        if quick.may_fire(RULES, drifted=drifted, window_size=size, window_correct=correct):
            assert quick.on_outcome(RULES, snapshot, drifted=drifted, detector="d", now_ms=0) == (
                expected
            )
        else:
            assert expected == []


def test_a_redacted_feature_alert_quotes_no_feature_values() -> None:
    from workers.core.alerts import Alert, redacted  # noqa: PLC0415

    stats = {"shift_sigma": 6.1, "train_mean": 14.2, "live_mean": 30.9, "z": 8.7}
    alert = Alert("feature_drift", "warning", "m", 1, joined=0, at=1, features={"age": stats})
    hidden = redacted(alert)
    assert hidden.features == {"age": {"shift_sigma": 6.1, "z": 8.7}}
    assert "30.9" not in str(hidden.fields())
    plain = Alert("drift_detected", "warning", "m", 1, joined=5, at=1)
    assert redacted(plain) is plain


def test_a_constant_training_feature_is_compared_exactly() -> None:
    # Round-off left a std of 1e-16 on one constant and exactly 0 on the other.
    monitor = FeatureDrift(["a", "b", "c"], [3.0, 0.1, 5.0], [1e-16, 0.0, 1.0], window=50,
                           constant=[True, True, False])  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(500):  # unchanged constants: never drift, whatever the running sums hold
        assert monitor.update([3.0, 0.1, 5.0 + float(rng.normal())]) == []
    moved = monitor.update([3.0, 0.1000001, 5.0])
    assert [m.name for m in moved] == ["b"]
    assert moved[0].live_mean != 0.1
    for _ in range(49):  # the odd value leaves the window: silent again
        monitor.update([3.0, 0.1, 5.0])
    assert monitor.update([3.0, 0.1, 5.0]) == []


def test_calibrated_findings_name_method_statistic_threshold_and_rank_features() -> None:
    from workers.core.alerts import CALIBRATED, redacted  # noqa: PLC0415
    from workers.core.calibrated_drift import Finding  # noqa: PLC0415

    found = [
        Finding("country", "frequencies", "jensen_shannon", 0.31, 0.12,
                {"unseen_share": 0.1, "most_changed": {"(unseen)": 0.1, "FR": -0.06}}),
        Finding("age", "mean", "z_test", 7.0, 5.0,
                {"reference_mean": 41.5, "live_mean": 44.0, "shift_sigma": 0.2, "z": 7.0}),
        *[Finding(f"f{i}", "missing_rate", "binomial_z_test", 5.5, 5.0) for i in range(6)],
    ]  # fmt: skip
    [alert] = FeatureAlerts("m", 3).on_moved(RULES, found, seen=600, joined=0, now_ms=1)
    assert alert.detector == CALIBRATED
    assert (alert.method, alert.statistic, alert.threshold) == ("jensen_shannon", 0.31, 0.12)
    assert alert.features is not None
    assert list(alert.features)[:2] == ["country", "age"]
    assert len(alert.features) == 5  # the five furthest over their thresholds
    assert alert.features["age"]["check"] == "mean"
    assert alert.features["age"]["statistic"] == 7.0
    hidden = redacted(alert)
    assert hidden.features is not None
    # Category names and means quote the data; methods, statistics and shares do not.
    assert hidden.features["country"] == {"check": "frequencies", "method": "jensen_shannon",
                                          "statistic": 0.31, "threshold": 0.12,
                                          "unseen_share": 0.1}  # fmt: skip
    assert "44.0" not in str(hidden.fields())
    assert hidden.statistic == 0.31
