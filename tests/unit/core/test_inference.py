from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.corpus import BAD, FEATURES
from workers.commands.train import load_dataset
from workers.core.events import ErrorType, EventDecoder, InvalidEvent, redacted_message
from workers.core.inference import ServingModel, score_batch
from workers.core.scoring import Matrix, ScoredBatch
from workers.model_store import load_version
from workers.schemas import load_schema


class FailsOnThirteen:
    """A model that raises whenever a row holds 13.0, like a model with a poison input."""

    features: tuple[str, ...] = ("a", "b")

    def score(self, matrix: Matrix) -> ScoredBatch:
        if (matrix == 13.0).any():
            raise ValueError("cannot score 13")
        n = len(matrix)
        return ScoredBatch(["yes"] * n, [0.75] * n, None)


def _event(i: int, a: float) -> bytes:
    return json.dumps({"event_id": f"e{i}", "features": {"a": a, "b": 1}}).encode()


def test_good_and_bad_values_split_and_keep_their_positions() -> None:
    model = ServingModel("m", 3, EventDecoder(("a", "b")), FailsOnThirteen())
    values = [_event(0, 1), b"junk", _event(2, 2), None, _event(4, 3)]
    result = score_batch(values, [100, 101, 102, 103, 104], model, scored_at_ms=999)
    assert [i for i, _, _ in result.predictions] == [0, 2, 4]
    assert [(i, e.error_type) for i, e in result.invalid] == [
        (1, ErrorType.DECODE),
        (3, ErrorType.DECODE),
    ]
    first = json.loads(result.predictions[0][2])
    assert first == {
        "event_id": "e0",
        "model_name": "m",
        "model_version": 3,
        "label": "yes",
        "score": 0.75,
        "event_time": 100,  # the Kafka timestamp stands in for a missing event_time
        "scored_at": 999,
    }
    assert result.predictions[0][1] == b"e0"


def test_a_model_failure_dead_letters_only_the_rows_that_cause_it() -> None:
    model = ServingModel("m", 1, EventDecoder(("a", "b")), FailsOnThirteen())
    values = [_event(0, 1), _event(1, 13), _event(2, 2)]
    result = score_batch(values, [0, 0, 0], model, scored_at_ms=0)
    assert [i for i, _, _ in result.predictions] == [0, 2]
    [(index, invalid)] = result.invalid
    assert index == 1
    assert invalid.error_type == ErrorType.MODEL
    assert "cannot score 13" in invalid.message


def test_real_model_scores_validate_and_match_predict_proba(trained_registry: Path) -> None:
    loaded = load_version(trained_registry / "bc" / "1")
    features = loaded.manifest.features
    model = ServingModel("bc", 1, EventDecoder(features), loaded.scorer)
    x = load_dataset("breast_cancer").x[:200]
    values: list[bytes | None] = [
        json.dumps(
            {
                "event_id": f"e{i}",
                "features": dict(zip(features, row, strict=True)),
                "event_time": 7,
            }
        ).encode()
        for i, row in enumerate(x.tolist())
    ]
    values += [c.value for c in BAD]
    result = score_batch(values, [0] * len(values), model, scored_at_ms=1)
    assert len(result.predictions) == 200
    assert len(result.invalid) == len(BAD)
    proba = loaded.scorer.model.predict_proba(np.array(x))  # type: ignore[attr-defined]
    schema = load_schema("prediction")
    for (i, key, raw), row in zip(result.predictions, proba, strict=True):
        record = json.loads(raw)
        jsonschema.validate(record, schema)
        assert key == f"e{i}".encode()
        assert record["score"] == row.max()
        assert record["probabilities"] == {"0": row[0], "1": row[1]}
        assert record["event_time"] == 7


def test_an_overflowing_feature_is_dead_lettered_and_the_rest_scored() -> None:
    model = ServingModel("m", 1, EventDecoder(("a", "b")), FailsOnThirteen())
    values: list[bytes | None] = [
        _event(0, 1),
        b'{"event_id": "inf", "features": {"a": 1, "b": 1e400}}',
        _event(2, 2),
        b'{"event_id": "ninf", "features": {"a": -1e999, "b": 1}}',
    ]
    result = score_batch(values, [0] * 4, model, scored_at_ms=0)
    assert [i for i, _, _ in result.predictions] == [0, 2]
    assert [(i, e.error_type) for i, e in result.invalid] == [
        (1, ErrorType.FEATURES),
        (3, ErrorType.FEATURES),
    ]
    assert result.invalid[0][1].message == "feature 'b' is not a finite number"
    assert result.invalid[1][1].message == "feature 'a' is not a finite number"


class InfiniteDecoder(EventDecoder):
    """A decoder that lets infinity through, to exercise the matrix-level guard."""

    def decode_unchecked(self, value: bytes | None) -> tuple[str, tuple[float, ...], None]:
        assert value is not None
        return value.decode(), (1.0, float("inf") if value == b"bad" else 2.0), None


def test_the_matrix_guard_keeps_infinity_from_the_model() -> None:
    model = ServingModel("m", 1, InfiniteDecoder(("a", "b")), FailsOnThirteen())
    result = score_batch([b"ok", b"bad", b"ok2"], [0, 0, 0], model, scored_at_ms=0)
    assert [i for i, _, _ in result.predictions] == [0, 2]
    [(index, invalid)] = result.invalid
    assert index == 1
    assert invalid.message == "feature 'b' is not a finite number"


def test_input_limits_dead_letter_long_ids_and_crowded_features_in_a_batch() -> None:
    decoder = EventDecoder(("a", "b"), max_event_id_chars=8, max_features=3)
    model = ServingModel("m", 1, decoder, FailsOnThirteen())
    values = [
        json.dumps({"event_id": "short", "features": {"a": 1, "b": 2, "x": 0}}).encode(),
        json.dumps({"event_id": "much-too-long", "features": {"a": 1, "b": 2}}).encode(),
        json.dumps({"event_id": "crowd", "features": {"a": 1, "b": 2, "x": 0, "y": 0}}).encode(),
    ]
    result = score_batch(values, [0, 0, 0], model, scored_at_ms=0)
    assert [i for i, _, _ in result.predictions] == [0]  # an extra key within the limit is fine
    reasons = {i: (e.error_type, e.message) for i, e in result.invalid}
    assert reasons[1][0] == ErrorType.SCHEMA
    assert "<= 8" in reasons[1][1]
    assert reasons[2] == (ErrorType.FEATURES, "4 keys in features, more than the limit of 3")
    # The one-event path agrees with the batch path.
    for value, (_kind, message) in zip(values[1:], (reasons[1], reasons[2]), strict=True):
        single = decoder.decode(value)
        assert isinstance(single, InvalidEvent)
        assert single.message == message


def test_a_decoder_refuses_a_feature_limit_below_the_model_s_own_count() -> None:
    with pytest.raises(ValueError, match="more than max_features=1"):
        EventDecoder(("a", "b"), max_features=1)


def test_redaction_keeps_structural_messages_and_withholds_what_quotes_the_event() -> None:
    model = ServingModel("m", 1, EventDecoder(("a", "b")), QuotesItsInput())
    result = score_batch([_event(0, 4242.25)], [0], model, scored_at_ms=0)
    [(_, invalid)] = result.invalid
    assert "4242.25" in invalid.message  # the model's own words quote the row
    assert "4242.25" not in redacted_message(invalid)
    assert redacted_message(invalid) == "model: details withheld (--redact-features)"
    for case in BAD:
        decoded = EventDecoder(FEATURES).decode(case.value)
        assert isinstance(decoded, InvalidEvent)
        kept = redacted_message(decoded)
        withheld = f"{decoded.error_type.value}: details withheld (--redact-features)"
        assert kept in {decoded.message, withheld}
        if b"\xff" in (case.value or b""):
            assert "0xff" not in kept


class QuotesItsInput:
    features: tuple[str, ...] = ("a", "b")

    def score(self, matrix: Matrix) -> ScoredBatch:
        raise ValueError(f"cannot score row {matrix[0].tolist()}")


def test_a_record_without_a_timestamp_is_timed_when_scored() -> None:
    """librdkafka reports -1 for a record with no timestamp: never a negative event_time."""
    model = ServingModel("m", 3, EventDecoder(("a", "b")), FailsOnThirteen())
    timed = json.dumps({"event_id": "t", "features": {"a": 1, "b": 1}, "event_time": 5})
    result = score_batch([_event(0, 1), timed.encode()], [-1, -1], model, scored_at_ms=999)
    times = [json.loads(p)["event_time"] for _, _, p in result.predictions]
    assert times == [999, 5]
