from __future__ import annotations

import pytest

from tests.corpus import BAD, FEATURES, GOOD, Case, event
from workers.core.events import ErrorType, EventDecoder, InvalidEvent

DECODER = EventDecoder(FEATURES)


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.name)
def test_good_events_decode(case: Case) -> None:
    decoded = DECODER.decode(case.value)
    assert not isinstance(decoded, InvalidEvent), decoded
    event_id, row, _ = decoded
    assert event_id
    assert len(row) == len(FEATURES)
    assert all(isinstance(x, float) for x in row)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.name)
def test_bad_events_are_invalid_with_their_reason(case: Case) -> None:
    decoded = DECODER.decode(case.value)
    assert isinstance(decoded, InvalidEvent)
    assert decoded.error_type == case.expected, decoded.message
    assert decoded.message


def test_features_come_out_in_manifest_order_whatever_the_json_order() -> None:
    decoded = DECODER.decode(b'{"features": {"c": 3, "b": 2, "mean radius": 1}, "event_id": "z"}')
    assert decoded == ("z", (1.0, 2.0, 3.0), None)


def test_event_time_is_kept() -> None:
    assert DECODER.decode(event(event_time=5)) == ("e-1", (1.5, -2.0, 0.0), 5)


def test_oversize_values_are_refused_before_parsing() -> None:
    small = EventDecoder(FEATURES, max_value_bytes=64)
    decoded = small.decode(event(padding="x" * 100))
    assert isinstance(decoded, InvalidEvent)
    assert decoded.error_type == ErrorType.DECODE
    assert "exceeds the limit of 64" in decoded.message


def test_missing_feature_message_names_it() -> None:
    decoded = DECODER.decode(event(features={"b": 1, "c": 2}))
    assert isinstance(decoded, InvalidEvent)
    assert "mean radius" in decoded.message


@pytest.mark.parametrize("features", [(), ("a", "a")])
def test_impossible_feature_lists_are_refused(features: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="feature"):
        EventDecoder(features)


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 30
    assert {c.expected for c in BAD} == {ErrorType.DECODE, ErrorType.SCHEMA, ErrorType.FEATURES}
