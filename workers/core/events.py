"""FeatureEvent decoding and validation against a model's feature list, and Prediction encoding.

Decoding is generated per model: the manifest's feature names become the fields of a msgspec
Struct, so one C-level decode both parses and validates an event and yields its features in
manifest order, ready to become a row of the scoring matrix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final

import msgspec

from workers.core.feature_spec import FeatureSpec, plain_numeric

MAX_EVENT_ID_CHARS: Final = 256
DEFAULT_MAX_VALUE_BYTES: Final = 1_048_576
# Keys in one event's `features` object (the model's plus ignored extras): bounds the work a
# single event can cause.
DEFAULT_MAX_FEATURES: Final = 4096

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_ID_CHARS)]
EpochMillis = Annotated[int, msgspec.Meta(ge=0)]

_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MALFORMED_AT = re.compile(r"^JSON is malformed: invalid character \(byte (?P<byte>\d+)\)$")
# How many missing features a dead letter's message names; the count says how many more.
MISSING_NAMED: Final = 10
NOT_JSON_NUMBER: Final = (
    "NaN and Infinity are not JSON (byte {byte}): send a finite number (Python's json.dumps "
    "writes NaN for a float nan unless told allow_nan=False, which refuses it before sending)"
)


def snake_case(name: str) -> str:
    """`mean radius` -> `mean_radius`: how `scorestream train` names a data set's columns."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


class ErrorType(StrEnum):
    """Why an event went to the dead-letter topic (the `error.type` header)."""

    DECODE = "decode"  # not JSON, not UTF-8, truncated, too large or too deeply nested
    SCHEMA = "schema"  # JSON, but not a FeatureEvent (top-level shape and types)
    FEATURES = "features"  # a FeatureEvent whose features do not fit the model
    MODEL = "model"  # the model failed on it


# (event_id, features in manifest order, event_time or None). The features are floats for a
# plain numeric model; numbers, strings, booleans and None by kind for any other.
DecodedEvent = tuple[str, tuple[Any, ...], int | None]

# The Python type msgspec decodes each JSON type of a feature into (and refuses others with).
_WIRE_TYPES: Final[dict[str, Any]] = {
    "number": float,
    "string": str,
    "integer": int,
    "boolean": bool,
}


def wire_type(spec: FeatureSpec) -> Any:  # noqa: ANN401 - a type expression
    base = _WIRE_TYPES[spec.json_type]
    return base | None if spec.nullable else base


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """An event that cannot be scored: a value, so the loop can dead-letter it and go on."""

    error_type: ErrorType
    message: str


# gc=False: these hold only strings and numbers, so the cycle collector need not track the
# hundreds of thousands made per second.
class Prediction(msgspec.Struct, omit_defaults=True, gc=False):
    event_id: str
    model_name: str
    model_version: int
    label: str | int | bool | float
    score: float
    event_time: int
    scored_at: int
    # {class: probability}: a dict or a Struct generated for the model's classes.
    probabilities: Any = None
    # `infer --emit-features`: the features the model was given, by name.
    features: dict[str, Any] | None = None


class EventDecoder:
    """Decode FeatureEvent bytes for one model's ordered feature list."""

    def __init__(
        self,
        features: Sequence[str] | Sequence[FeatureSpec],
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        *,
        max_event_id_chars: int = MAX_EVENT_ID_CHARS,
        max_features: int = DEFAULT_MAX_FEATURES,
    ) -> None:
        specs = tuple(f if isinstance(f, FeatureSpec) else FeatureSpec(f) for f in features)
        features = [spec.name for spec in specs]
        self.specs = specs
        # Per feature, whether it is a number (the others are categories).
        self.numeric = tuple(spec.numeric for spec in specs)
        # Every feature a non-nullable number: rows go straight into one float matrix.
        self.plain_numeric = plain_numeric(specs)
        if not features:
            raise ValueError("a model needs at least one feature")
        if len(set(features)) != len(features):
            raise ValueError("feature names must be unique")
        if max_features < len(features):
            raise ValueError(
                f"the model has {len(features)} features, more than max_features={max_features}"
            )
        self.features = tuple(features)
        self.max_value_bytes = max_value_bytes
        self.max_features = max_features
        event_id = Annotated[str, msgspec.Meta(min_length=1, max_length=max_event_id_chars)]
        fields = [f"f{i}" for i in range(len(self.features))]
        # Field names must be identifiers; the wire names ("mean radius") are the renames.
        features_struct = msgspec.defstruct(
            "Features",
            [(name, wire_type(spec)) for name, spec in zip(fields, specs, strict=True)],
            rename=dict(zip(fields, self.features, strict=True)),
            forbid_unknown_fields=False,
            gc=False,
        )
        self._event_type = msgspec.defstruct(
            "FeatureEvent",
            [
                ("event_id", event_id),
                ("features", features_struct),
                ("event_time", EpochMillis | None, None),
            ],
            forbid_unknown_fields=False,
            gc=False,
        )
        self._decoder = msgspec.json.Decoder(self._event_type)
        envelope = msgspec.defstruct(
            "Envelope",
            [("event_id", event_id), ("features", dict[str, Any]),
             ("event_time", EpochMillis | None, None)],
        )  # fmt: skip
        self._envelope = msgspec.json.Decoder(envelope)
        self.keys_without_extras = 2 + len(self.features)  # event_id, features, each feature
        self._astuple = msgspec.structs.astuple

    def decode(self, value: bytes | None) -> DecodedEvent | InvalidEvent:
        """Return (event_id, features in manifest order, event_time) or why it is invalid."""
        decoded = self.decode_unchecked(value)
        if type(decoded) is InvalidEvent:
            return decoded
        event_id, row, event_time = decoded  # type: ignore[misc]
        problem = self.key_problem(value, event_id, event_time)  # type: ignore[arg-type]
        if problem is not None:
            return problem
        for index, (x, spec) in enumerate(zip(row, self.specs, strict=True)):
            # JSON has no NaN/Infinity literals, but an overflowing number such as 1e400
            # must still never reach the model.
            if spec.numeric and x is not None and not math.isfinite(x):
                return self.not_finite(index)
        return decoded

    def not_finite(self, index: int) -> InvalidEvent:
        """An overflowing number (1e400 decodes to infinity) in the feature at `index`."""
        return InvalidEvent(
            ErrorType.FEATURES, f"feature {self.features[index]!r} is not a finite number"
        )

    def decode_unchecked(self, value: bytes | None) -> DecodedEvent | InvalidEvent:
        """Like `decode` without the finiteness and repeated-key checks: the caller does them
        for a whole batch at once."""
        if value is None:
            return InvalidEvent(ErrorType.DECODE, "empty message (null value / tombstone)")
        if len(value) > self.max_value_bytes:
            return InvalidEvent(
                ErrorType.DECODE,
                f"value of {len(value)} bytes exceeds the limit of {self.max_value_bytes}",
            )
        try:
            event: Any = self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            return self._classify(value, str(exc))
        except RecursionError:
            return InvalidEvent(ErrorType.DECODE, "JSON nested too deeply")
        except (msgspec.DecodeError, ValueError) as exc:  # malformed JSON, invalid UTF-8
            return _malformed(value, exc)
        return event.event_id, self._astuple(event.features), event.event_time

    def colons(self, event_id: str, event_time: int | None) -> int:
        """The colons a decoded event without extra or repeated keys holds: one per key, plus
        any inside its event_id. More means extra keys, a repeated key or colons in strings."""
        return self.keys_without_extras + (event_time is not None) + event_id.count(":")

    def key_problem(
        self, value: bytes, event_id: str, event_time: int | None
    ) -> InvalidEvent | None:
        """A key twice in one object (ambiguous: the decoder keeps the last), or more keys in
        `features` than --max-features. Walked only when its colons say it has more keys than
        the model needs: extra keys are allowed, so this is the rare path."""
        # Colons written as \u003a inside a string are colons to the decoder but not in the
        # raw bytes, so they could hide a repeated key from the count: any escape is walked.
        if b"\\u" not in value and value.count(b":") == self.colons(event_id, event_time):
            return None
        try:
            document = json.loads(value, object_pairs_hook=_no_duplicates)
        except _DuplicateKey:
            return DUPLICATE_KEY
        except RecursionError:  # msgspec's limit is deeper than the stdlib's
            return InvalidEvent(ErrorType.DECODE, "JSON nested too deeply")
        except ValueError:  # msgspec accepted it; stdlib json is stricter about nothing we need
            return None
        features = document.get("features") if isinstance(document, dict) else None
        if isinstance(features, dict) and len(features) > self.max_features:
            return InvalidEvent(
                ErrorType.FEATURES,
                f"{len(features)} keys in features, more than the limit of {self.max_features}",
            )
        return None

    def _classify(self, value: bytes, message: str) -> InvalidEvent:
        """Name the most basic thing wrong: unreadable JSON, then the envelope, then features.

        msgspec validates while it parses and stops at the first problem, which may be a
        missing feature in a document that is also truncated further on; this slower path
        runs only for invalid events.
        """
        try:
            envelope: Any = self._envelope.decode(value)
        except msgspec.ValidationError as exc:
            envelope_error = _classify(str(exc))
            if envelope_error.error_type == ErrorType.SCHEMA:
                return envelope_error
            # Inside `features` (a number out of range): the model's message says it better.
        except RecursionError:
            return InvalidEvent(ErrorType.DECODE, "JSON nested too deeply")
        except (msgspec.DecodeError, ValueError) as exc:
            return _malformed(value, exc)
        else:
            missing = [name for name in self.features if name not in envelope.features]
            if missing:
                return self._missing(missing, envelope.features)
        misfit = self._misfit(message)
        return misfit if misfit is not None else _classify(message)

    def _misfit(self, message: str) -> InvalidEvent | None:
        """A feature value of the wrong JSON type, said in the feature's own terms."""
        overflow = _OUT_OF_RANGE.match(message)
        if overflow is not None:
            name = overflow.group("path").removeprefix(".features.")
            if name in self.features:
                return self.not_finite(self.features.index(name))
        match = _MISFIT.match(message)
        if match is None:
            return None
        name = match.group("path").removeprefix(".features.")
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            return None
        got = match.group("got")
        expected = _JSON_TYPE_WORDS[spec.json_type]
        if got == "null":
            return InvalidEvent(
                ErrorType.FEATURES,
                f"feature {name!r} is null, which the model's manifest does not allow "
                f"(not nullable): send {expected}",
            )
        return InvalidEvent(
            ErrorType.FEATURES,
            f"feature {name!r} is {_GOT_WORDS.get(got, got)}; the model takes {expected} "
            f"({spec.kind}{', or null' if spec.nullable else ''})",
        )

    def _missing(self, missing: list[str], present: dict[str, Any]) -> InvalidEvent:
        """Name every missing feature (up to MISSING_NAMED), and say when the event has them
        under other spellings ("mean radius" for the manifest's "mean_radius")."""
        named = ", ".join(repr(name) for name in missing[:MISSING_NAMED])
        more = len(missing) - MISSING_NAMED
        message = (
            f"features missing: {named}{f' and {more} more' if more > 0 else ''} "
            f"({len(missing)} of the model's {len(self.features)})"
        )
        spelled = {snake_case(key) for key in present}
        respelled = [name for name in missing if snake_case(name) in spelled]
        if respelled:
            message += (
                f"; {len(respelled)} of them are in the event spelled differently: send the "
                f"names as the model's manifest lists them (e.g. {respelled[0]!r})"
            )
        return InvalidEvent(ErrorType.FEATURES, message)


_MISFIT: Final = re.compile(
    r"^Expected `[^`]*`, got `(?P<got>\w+)` - at `\$(?P<path>\.features\..*)`$"
)
_OUT_OF_RANGE: Final = re.compile(r"^Number out of range - at `\$(?P<path>\.features\..*)`$")
_JSON_TYPE_WORDS: Final = {
    "number": "a number",
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
}
_GOT_WORDS: Final = {
    "int": "a number",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
}


def _malformed(value: bytes, exc: Exception) -> InvalidEvent:
    """Not JSON. NaN and Infinity, which Python's json module writes by default, get a message
    that says what to send instead."""
    message = str(exc) or type(exc).__name__
    at = _MALFORMED_AT.match(message)
    if at is not None:
        byte = int(at.group("byte"))
        if value[byte : byte + 3] == b"NaN" or value[byte : byte + 8] == b"Infinity":
            return InvalidEvent(ErrorType.DECODE, NOT_JSON_NUMBER.format(byte=byte))
    return InvalidEvent(ErrorType.DECODE, message)


DUPLICATE_KEY: Final = InvalidEvent(ErrorType.SCHEMA, "a key appears twice in one JSON object")


class _DuplicateKey(Exception):  # noqa: N818 - internal signal
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey
    return result


# Messages made only of our own words, type names and JSON paths: they quote no input value.
_SAFE_MESSAGES: Final = re.compile(
    r"(Expected `[^`]*`(, got `\w+`)?( of length [<>=]+ \d+| [<>=]+ \d+)?( - at `\$[^`]*`)?"
    r"|Number out of range( - at `\$[^`]*`)?"
    r"|Object missing required field `[^`]*`( - at `\$[^`]*`)?"
    r"|JSON is malformed: [\w\- ]+ \(byte \d+\)|Input data was truncated"
    r"|value of \d+ bytes exceeds the limit of \d+|empty message \(null value / tombstone\)"
    r"|JSON nested too deeply|a key appears twice in one JSON object"
    r"|\d+ keys in features, more than the limit of \d+"
    r"|feature `[^`]*` is not a finite number"
    r"|feature `[^`]*` is null, which the model`s manifest does not allow \(not nullable\): "
    r"send [a-z ]+"
    r"|feature `[^`]*` is an? \w+; the model takes [a-z ]+ \(\w+(, or null)?\)"
    r"|features missing: `[^`]*`(, `[^`]*`)*( and \d+ more)? \(\d+ of the model`s \d+\)"
    r"(; \d+ of them are in the event spelled differently: send the names as the model`s "
    r"manifest lists them \(e\.g\. `[^`]*`\))?"
    r"|" + re.escape(NOT_JSON_NUMBER.replace("'", "`")).replace(r"\{byte\}", r"\d+") + ")"
)


def redacted_message(invalid: InvalidEvent) -> str:
    """The message with nothing of the event's values in it (--redact-features): ours and the
    decoder's structural messages as they are, anything else (a model's exception, which may
    quote the row) replaced by the reason alone."""
    # The decoder's quotes become ' in our messages; either kind is read as a quote here.
    if _SAFE_MESSAGES.fullmatch(invalid.message.replace("'", "`")):
        return invalid.message
    return f"{invalid.error_type.value}: details withheld (--redact-features)"


def _classify(message: str) -> InvalidEvent:
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    # `features` itself of the wrong type is a malformed event; inside it, a misfit feature.
    wrong_container = path == ".features" and message.startswith("Expected")
    if path.startswith(".features") and not wrong_container:
        return InvalidEvent(ErrorType.FEATURES, message.replace("`", "'"))
    return InvalidEvent(ErrorType.SCHEMA, message.replace("`", "'"))


def encode_predictions(predictions: Sequence[Prediction]) -> list[bytes]:
    return [_ENCODER.encode(p) for p in predictions]


_ENCODER: Final = msgspec.json.Encoder()


def json_value(value: Any) -> Any:  # noqa: ANN401 - numpy scalars in, JSON-native out
    """Turn a numpy scalar (a model's class label) into the Python value JSON carries."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


class ClassLabelError(ValueError):
    """A model's class cannot be written as a Prediction's label; the message names the fix."""


def class_label(value: Any) -> str | int | bool:  # noqa: ANN401 - whatever classes_ holds
    """A model's class as a Prediction's label: a string, an integer or a boolean. A model fitted
    on a float target has classes like 1.0; whole numbers become integers (1.0 -> 1)."""
    plain = json_value(value)
    if isinstance(plain, str | bool | int):
        return plain
    if isinstance(plain, float) and plain.is_integer():
        return int(plain)
    raise ClassLabelError(
        f"class {plain!r} is not a string, an integer or a boolean: fit the model on labels of "
        "one of those types (e.g. y.astype(int) or y.astype(str))"
    )
