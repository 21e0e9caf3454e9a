"""A labelled prediction stream shaped like production's, and what an offline join of it gives.

Three versions (string classes with features carried, integer classes, a regressor); labels
arrive before or after their predictions (shuffled within 200 s of event time), 5% never
arrive and 5% belong to predictions that never come; a tail two hours later on every partition
expires everything left unjoined, so the final counts are exact.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HOUR = 3_600_000
Record = tuple[str, str, dict[str, Any]]  # (predictions | labels, event_id, value)
CITIES = ["Oslo", "Lima", "Pune", None]


@dataclass
class Stream:
    records: list[Record] = field(default_factory=list)
    joined: Counter[str] = field(default_factory=Counter)  # per model/vN
    correct: Counter[str] = field(default_factory=Counter)
    abs_error: dict[str, float] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    joined_ids: set[str] = field(default_factory=set)
    with_features: set[str] = field(default_factory=set)

    def counters(self) -> dict[str, int]:
        return {"joined": sum(self.joined.values()), "expired_without_label": len(self.expired),
                "orphan_labels": len(self.orphans)}  # fmt: skip


def _prediction(rng: random.Random, i: int, event_id: str, t: int) -> tuple[dict[str, Any], Any]:
    """A prediction of one of the three versions, and the true label."""
    kind = i % 3
    probabilities: dict[str, float] | None
    if kind == 0:  # m v1: right 95% of the time, string classes, features carried
        actual: Any = rng.choice(["churn", "stay"])
        right = rng.random() < 0.95
        predicted: Any = actual if right else ("stay" if actual == "churn" else "churn")
        name, version, score = "m", 1, 0.9
        probabilities = {"churn": 0.9 if predicted == "churn" else 0.1}
        probabilities["stay"] = 1 - probabilities["churn"]
    elif kind == 1:  # m v2: right half of the time, integer classes
        actual = rng.choice([0, 1])
        predicted = actual if rng.random() < 0.5 else 1 - actual
        name, version, score = "m", 2, 0.6
        probabilities = {"0": 0.4, "1": 0.6} if predicted == 1 else {"0": 0.6, "1": 0.4}
    else:  # a regressor
        actual = round(rng.gauss(100, 20), 3)
        predicted = float(actual + rng.choice([-4.0, 2.0, 6.0]))
        name, version, score, probabilities = "r", 1, predicted, None
    prediction: dict[str, Any] = {
        "event_id": event_id, "model_name": name, "model_version": version,
        "label": predicted, "score": score, "event_time": t, "scored_at": t + 5,
    }  # fmt: skip
    if probabilities is not None:
        prediction["probabilities"] = probabilities
    if kind == 0:
        prediction["features"] = {"city": rng.choice(CITIES), "hour": (i // 60) % 24,
                                  "amount": None if i % 7 == 0 else rng.random()}  # fmt: skip
    return prediction, actual


def make_stream(events: int, seed: int) -> Stream:
    rng = random.Random(seed)
    s = Stream()
    base = time.time_ns() // 1_000_000 - 10 * HOUR
    block: list[Record] = []
    for i in range(events):
        event_id = f"ev-{seed}-{i:06d}"
        t = base + i * 1000
        prediction, actual = _prediction(rng, i, event_id, t)
        label = {"event_id": event_id, "label": actual, "label_time": t + rng.randint(0, 30_000)}
        if "features" in prediction:
            s.with_features.add(event_id)
        fate = rng.random()
        if fate < 0.05:  # no label ever
            block.append(("predictions", event_id, prediction))
            s.expired.add(event_id)
        elif fate < 0.10:  # a label whose prediction never comes
            block.append(("labels", event_id, label))
            s.orphans.add(event_id)
        else:
            block += [("predictions", event_id, prediction), ("labels", event_id, label)]
            _joined(s, event_id, prediction, actual)
        if len(block) >= 200:  # shuffled within 200 s of event time (TTLs are 600 s)
            rng.shuffle(block)
            s.records += block
            block = []
    s.records += block
    # A tail two hours on, on every partition: everything left unjoined before it expires.
    for j in range(300):
        event_id = f"tail-{seed}-{j}"
        t = base + events * 1000 + 2 * HOUR + j
        prediction = {"event_id": event_id, "model_name": "tail", "model_version": 1,
                      "label": 1, "score": 1.0, "event_time": t, "scored_at": t,
                      "probabilities": {"0": 0.0, "1": 1.0}}  # fmt: skip
        s.records += [
            ("predictions", event_id, prediction),
            ("labels", event_id, {"event_id": event_id, "label": 1, "label_time": t}),
        ]
        _joined(s, event_id, prediction, 1)
    return s


def _joined(s: Stream, event_id: str, prediction: dict[str, Any], actual: Any) -> None:
    key = f"{prediction['model_name']}/v{prediction['model_version']}"
    s.joined[key] += 1
    s.joined_ids.add(event_id)
    if "probabilities" not in prediction:
        s.abs_error[key] = s.abs_error.get(key, 0.0) + abs(actual - prediction["label"])
    else:
        s.correct[key] += prediction["label"] == actual and type(prediction["label"]) is type(
            actual
        )
