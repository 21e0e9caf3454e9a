from __future__ import annotations

import pytest

from tests.corpus import BAD, FEATURES, GOOD, Case, event
from workers.core.events import (
    MISSING_NAMED,
    ErrorType,
    EventDecoder,
    InvalidEvent,
    redacted_message,
)

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


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_say_they_are_not_json_and_what_to_send(token: bytes) -> None:
    # What Python's json.dumps writes for float("nan") and float("inf").
    value = b'{"event_id": "e", "features": {"mean radius": ' + token + b', "b": 1, "c": 2}}'
    decoded = DECODER.decode(value)
    assert isinstance(decoded, InvalidEvent)
    assert decoded.error_type == ErrorType.DECODE
    assert "NaN and Infinity are not JSON" in decoded.message
    assert "send a finite number" in decoded.message
    assert "allow_nan=False" in decoded.message


def test_other_malformed_json_keeps_the_parsers_words() -> None:
    decoded = DECODER.decode(b'{"event_id": "e", "features": {"b": nope}}')
    assert isinstance(decoded, InvalidEvent)
    assert decoded.message.startswith("JSON is malformed: invalid character")


def test_every_missing_feature_is_named_up_to_a_bound() -> None:
    names = [f"feature_{i:02d}" for i in range(30)]
    decoder = EventDecoder(names)
    decoded = decoder.decode(b'{"event_id": "e", "features": {"feature_07": 1}}')
    assert isinstance(decoded, InvalidEvent)
    assert decoded.error_type == ErrorType.FEATURES
    missing = [n for n in names if n != "feature_07"]
    for name in missing[:MISSING_NAMED]:
        assert repr(name) in decoded.message
    assert repr(missing[MISSING_NAMED]) not in decoded.message
    assert f"and {29 - MISSING_NAMED} more (29 of the model's 30)" in decoded.message


def test_features_spelled_as_in_the_data_set_are_pointed_at_the_manifests_names() -> None:
    decoder = EventDecoder(["mean_radius", "mean_texture"])
    value = b'{"event_id": "e", "features": {"mean radius": 1, "Mean Texture": 2}}'
    decoded = decoder.decode(value)
    assert isinstance(decoded, InvalidEvent)
    assert "2 of them are in the event spelled differently" in decoded.message
    assert "as the model's manifest lists them (e.g. 'mean_radius')" in decoded.message


def test_the_new_messages_quote_nothing_of_the_event_so_redaction_keeps_them() -> None:
    values = [
        b'{"event_id": "e", "features": {"mean radius": NaN, "b": 1, "c": 2}}',
        b'{"event_id": "e", "features": {"b": 1}}',
    ]
    for value in values:
        decoded = DECODER.decode(value)
        assert isinstance(decoded, InvalidEvent)
        assert redacted_message(decoded) == decoded.message


def test_an_extra_key_nested_deeper_than_the_stdlib_parses_is_a_dead_letter_not_a_crash() -> None:
    """msgspec parses deeper than the stdlib parser that walks events with extra keys; between
    the two limits (they depend on the stack) the walk used to raise RecursionError."""
    import json  # noqa: PLC0415

    import msgspec  # noqa: PLC0415

    def stdlib_fails(depth: int) -> bool:
        try:
            json.loads(b"[" * depth + b"]" * depth)
        except RecursionError:
            return True
        return False

    depth = next(n for n in range(500, 5000) if stdlib_fails(n))
    value = (
        b'{"event_id": "a", "features": {"mean radius": 1, "b": 2, "c": 3}, "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    msgspec.json.decode(value)  # the fast decoder takes it: only the walk was in danger
    decoded = DECODER.decode(value)
    assert isinstance(decoded, InvalidEvent)
    assert decoded.error_type == ErrorType.DECODE
    assert decoded.message == "JSON nested too deeply"
