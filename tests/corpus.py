"""Good and bad FeatureEvent values, shared by the decoder, schema and integration tests."""

from __future__ import annotations

import json
from dataclasses import dataclass

from workers.core.events import ErrorType
from workers.core.feature_spec import FeatureSpec

FEATURES = ("mean radius", "b", "c")
GOOD_FEATURES = {"mean radius": 1.5, "b": -2, "c": 0.0}


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes | None
    expected: ErrorType | None  # None: accepted


def event(**fields: object) -> bytes:
    body: dict[str, object] = {"event_id": "e-1", "features": dict(GOOD_FEATURES)}
    body.update(fields)
    return json.dumps(body).encode()


def with_feature(name: str, raw: str) -> bytes:
    """An event whose feature `name` is the raw JSON text `raw` (to write what json.dumps won't)."""
    parts = [f'"{k}": {raw if k == name else json.dumps(v)}' for k, v in GOOD_FEATURES.items()]
    return ('{"event_id": "e-1", "features": {' + ", ".join(parts) + "}}").encode()


GOOD = [
    Case("plain", event(), None),
    Case("ints", with_feature("b", "7"), None),
    Case("extra feature of any type", event(features={**GOOD_FEATURES, "x": "text"}), None),
    Case("unknown top-level field", event(source="app"), None),
    Case("event_time", event(event_time=1_700_000_000_000), None),
    Case("event_time null", event(event_time=None), None),
    Case(
        "keys in another order",
        b'{"features": {"c": 1, "b": 2, "mean radius": 3}, "event_id": "z"}',
        None,
    ),
    Case("whitespace around", b"  " + event() + b"\n", None),
    Case("event_id of 256 chars", event(event_id="x" * 256), None),
    Case("unicode event_id", event(event_id="caf\u00e9-\u2603"), None),
    Case("largest finite double", with_feature("c", "1.7976931348623157e308"), None),
    Case("exponent", with_feature("c", "-2.5e-3"), None),
    Case("colons in event_id", event(event_id="order:12:34"), None),
    Case("colons in an extra field", event(note="at 12:30", when="a:b"), None),
    Case(
        "space before colons",
        b'{"event_id" : "s", "features" : {"mean radius" : 1, "b" : 2, "c" : 3}}',
        None,
    ),
]

BAD = [
    # decode: not a JSON document we can read
    Case("not json", b"{not json", ErrorType.DECODE),
    Case("empty bytes", b"", ErrorType.DECODE),
    Case("tombstone", None, ErrorType.DECODE),
    Case("truncated", event()[:-5], ErrorType.DECODE),
    Case("invalid utf-8", b'{"event_id": "\xff\xfe", "features": {}}', ErrorType.DECODE),
    Case("utf-8 bom", b"\xef\xbb\xbf" + event(), ErrorType.DECODE),
    Case("NaN literal", with_feature("b", "NaN"), ErrorType.DECODE),
    Case("Infinity literal", with_feature("b", "Infinity"), ErrorType.DECODE),
    Case("trailing garbage", event() + b" x", ErrorType.DECODE),
    Case("two documents", event() + event(), ErrorType.DECODE),
    Case("nul byte", b"\x00" + event(), ErrorType.DECODE),
    Case("lone surrogate", b'{"event_id": "\\ud800", "features": {}}', ErrorType.DECODE),
    Case("deep nesting", b'{"x": {"y": ' + b"[" * 5000 + b"]" * 5000 + b"}}", ErrorType.DECODE),
    Case("single quotes", b"{'event_id': 'a'}", ErrorType.DECODE),
    # schema: JSON, but not a FeatureEvent
    Case("array", b"[1, 2]", ErrorType.SCHEMA),
    Case("null", b"null", ErrorType.SCHEMA),
    Case("string", b'"hello"', ErrorType.SCHEMA),
    Case("number", b"42", ErrorType.SCHEMA),
    Case("true", b"true", ErrorType.SCHEMA),
    Case("empty object", b"{}", ErrorType.SCHEMA),
    Case("no event_id", json.dumps({"features": GOOD_FEATURES}).encode(), ErrorType.SCHEMA),
    Case("event_id number", event(event_id=12), ErrorType.SCHEMA),
    Case("event_id null", event(event_id=None), ErrorType.SCHEMA),
    Case("event_id empty", event(event_id=""), ErrorType.SCHEMA),
    Case("event_id too long", event(event_id="x" * 257), ErrorType.SCHEMA),
    Case("no features", json.dumps({"event_id": "a"}).encode(), ErrorType.SCHEMA),
    Case("features list", event(features=[1, 2, 3]), ErrorType.SCHEMA),
    Case("features string", event(features="1,2,3"), ErrorType.SCHEMA),
    Case("features null", event(features=None), ErrorType.SCHEMA),
    Case("event_time string", event(event_time="2024-01-01"), ErrorType.SCHEMA),
    Case("event_time negative", event(event_time=-1), ErrorType.SCHEMA),
    Case("event_time fraction", event(event_time=1.5), ErrorType.SCHEMA),
    Case("event_time bool", event(event_time=True), ErrorType.SCHEMA),
    # features: a FeatureEvent that does not fit the model
    Case("features empty", event(features={}), ErrorType.FEATURES),
    Case("feature missing", event(features={"b": 1, "c": 2}), ErrorType.FEATURES),
    Case("feature null", with_feature("b", "null"), ErrorType.FEATURES),
    Case("feature string", with_feature("b", '"1.5"'), ErrorType.FEATURES),
    Case("feature bool", with_feature("b", "true"), ErrorType.FEATURES),
    Case("feature overflow", with_feature("b", "1e400"), ErrorType.FEATURES),
    Case("feature negative overflow", with_feature("b", "-1e400"), ErrorType.FEATURES),
    Case("feature object", with_feature("b", '{"v": 1}'), ErrorType.FEATURES),
    Case("feature list", with_feature("b", "[1]"), ErrorType.FEATURES),
    # schema: a key twice in one object (which value was meant?)
    Case(
        "duplicate event_id",
        b'{"event_id": "a", "event_id": "b", "features": {"mean radius": 1, "b": 2, "c": 3}}',
        ErrorType.SCHEMA,
    ),
    Case(
        "duplicate feature",
        b'{"event_id": "a", "features": {"mean radius": 1, "b": 2, "b": 5, "c": 3}}',
        ErrorType.SCHEMA,
    ),
    Case(
        "duplicate features object",
        b'{"event_id": "a", "features": {"mean radius": 1, '
        b'"b": 2, "c": 3}, "features": {"mean radius": 1, "b": 2, "c": 4}}',
        ErrorType.SCHEMA,
    ),
    Case(
        # The colon in the event_id is escaped: a count of raw colons misses it and would let
        # the repeated feature through, scored with its last value.
        "duplicate key beside an escaped colon",
        b'{"event_id": "a\\u003ab", "features": {"mean radius": 1, "b": 2, "b": 5, "c": 3}}',
        ErrorType.SCHEMA,
    ),
    Case(
        "duplicate key with spaces",
        b'{"event_id" : "a", "features" : {"mean radius" : 1, "b" : 2, "b" : 2, "c" : 3}}',
        ErrorType.SCHEMA,
    ),
]


# A model with categories and gaps: what `register` makes of a notebook's pipeline.
MIXED_SPECS = (
    FeatureSpec("amount", "numeric", nullable=True),
    FeatureSpec("country", "categorical", json_type="string"),
    FeatureSpec("device", "categorical", nullable=True, json_type="string"),
    FeatureSpec("weekday", "categorical", json_type="integer"),
    FeatureSpec("vip", "categorical", json_type="boolean"),
)
MIXED_FEATURES = {"amount": 12.5, "country": "FR", "device": "ios", "weekday": 3, "vip": False}


def mixed(**changes: object) -> bytes:
    return json.dumps({"event_id": "m-1", "features": {**MIXED_FEATURES, **changes}}).encode()


MIXED_GOOD = [
    Case("all kinds", mixed(), None),
    Case("null numeric where nullable", mixed(amount=None), None),
    Case("null category where nullable", mixed(device=None), None),
    Case("integer for a numeric", mixed(amount=12), None),
    Case("unseen category (the model's business)", mixed(country="Atlantis"), None),
    Case("empty string category", mixed(country=""), None),
]

MIXED_BAD = [
    Case("category as number", mixed(country=44), ErrorType.FEATURES),
    Case("number as string", mixed(amount="12.5"), ErrorType.FEATURES),
    Case("null where not nullable", mixed(country=None), ErrorType.FEATURES),
    Case("nested object for a category", mixed(country={"code": "FR"}), ErrorType.FEATURES),
    Case("list for a number", mixed(amount=[1]), ErrorType.FEATURES),
    Case("fraction for an integer category", mixed(weekday=3.5), ErrorType.FEATURES),
    Case("boolean for an integer category", mixed(weekday=True), ErrorType.FEATURES),
    Case("string for a boolean category", mixed(vip="yes"), ErrorType.FEATURES),
    Case("number for a boolean category", mixed(vip=1), ErrorType.FEATURES),
    Case(
        "overflowing number",
        b'{"event_id": "m", "features": {"amount": 1e400, "country": "FR",'
        b' "device": "a", "weekday": 1, "vip": true}}',
        ErrorType.FEATURES,
    ),
]
