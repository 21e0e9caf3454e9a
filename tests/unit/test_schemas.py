"""The shipped JSON Schemas and the decoder agree, and what the code emits validates."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.corpus import BAD, FEATURES, GOOD, MIXED_BAD, MIXED_GOOD, MIXED_SPECS, Case
from workers.core.events import EventDecoder, InvalidEvent, Prediction
from workers.schemas import NAMES, feature_event_schema_for, load_schema


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_strings(value: Any) -> None:
    """RFC 8259 text is UTF-8: a lone surrogate escape is no character at all."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def schema_accepts(value: bytes | None, schema: dict[str, Any]) -> bool:
    if value is None:
        return False
    try:
        text = value.decode("utf-8")
        # Unique keys are a rule of the parse, not of the schema (RFC 8259 leaves duplicates
        # undefined; scorestream refuses them), so the reference parser checks them too.
        document = json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
        _check_strings(document)
    except (ValueError, RecursionError, UnicodeError):
        return False
    try:
        jsonschema.validate(document, schema)
    except jsonschema.ValidationError:
        return False
    return True


SCHEMA = feature_event_schema_for(FEATURES)
DECODER = EventDecoder(FEATURES)


@pytest.mark.parametrize("case", GOOD + BAD, ids=lambda c: c.name)
def test_decoder_and_schema_accept_and_reject_the_same_events(case: Case) -> None:
    decoder_accepts = not isinstance(DECODER.decode(case.value), InvalidEvent)
    assert decoder_accepts == (case.expected is None)
    assert schema_accepts(case.value, SCHEMA) == decoder_accepts


MIXED_SCHEMA = feature_event_schema_for(MIXED_SPECS)
MIXED_DECODER = EventDecoder(MIXED_SPECS)


@pytest.mark.parametrize("case", MIXED_GOOD + MIXED_BAD, ids=lambda c: c.name)
def test_categories_and_gaps_decoder_and_schema_agree(case: Case) -> None:
    decoded = MIXED_DECODER.decode(case.value)
    if case.expected is None:
        assert not isinstance(decoded, InvalidEvent), decoded
    else:
        assert isinstance(decoded, InvalidEvent)
        assert decoded.error_type == case.expected
    assert schema_accepts(case.value, MIXED_SCHEMA) == (case.expected is None)


@pytest.mark.parametrize("case", MIXED_BAD, ids=lambda c: c.name)
def test_a_misfit_feature_is_named_in_the_dead_letter_message(case: Case) -> None:
    decoded = MIXED_DECODER.decode(case.value)
    assert isinstance(decoded, InvalidEvent)
    named = [spec.name for spec in MIXED_SPECS if repr(spec.name) in decoded.message]
    assert len(named) == 1, decoded.message


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema(name))


def test_emitted_predictions_validate() -> None:
    from workers.core.events import encode_predictions  # noqa: PLC0415

    predictions = [
        Prediction("e", "m", 1, 1, 0.9, 5, 6, {"0": 0.1, "1": 0.9}),
        Prediction("e", "m", 2, "spam", 0.5, 5, 6, None),
        Prediction("e", "m", 3, label=True, score=0.7, event_time=5, scored_at=6),
    ]
    for raw in encode_predictions(predictions):
        jsonschema.validate(json.loads(raw), load_schema("prediction"))


def test_a_prediction_without_probabilities_omits_the_field() -> None:
    from workers.core.events import encode_predictions  # noqa: PLC0415

    [raw] = encode_predictions([Prediction("e", "m", 2, "spam", 0.5, 5, 6)])
    assert "probabilities" not in json.loads(raw)


README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- schema: (?P<name>\w+) -->\n```json\n(?P<body>.*?)\n```", re.DOTALL)


def test_every_message_example_in_the_readme_validates_against_its_schema() -> None:
    examples = {m["name"]: json.loads(m["body"]) for m in EXAMPLE.finditer(README.read_text())}
    assert set(examples) == {"feature_event", "prediction", "label", "alert", "outcome"}
    for name, example in examples.items():
        jsonschema.validate(example, load_schema(name))


def test_the_readme_feature_event_example_decodes_for_the_model_it_names() -> None:
    body = next(
        m["body"] for m in EXAMPLE.finditer(README.read_text()) if m["name"] == "feature_event"
    )
    features = list(json.loads(body)["features"])
    decoded = EventDecoder(features).decode(body.encode())
    assert not isinstance(decoded, InvalidEvent), decoded
