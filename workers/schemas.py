"""The JSON Schemas of the wire messages, shipped with the package (folder `schemas/`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from workers.core.feature_spec import FeatureSpec

NAMES = ("feature_event", "prediction", "label", "alert", "manifest", "outcome")
# The largest finite double: JSON numbers beyond it overflow to infinity when parsed.
MAX_FINITE = 1.7976931348623157e308


def load_schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r}; one of {', '.join(NAMES)}")
    text = resources.files("workers.schemas_data").joinpath(f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def feature_event_schema_for(features: Sequence[str] | Sequence[FeatureSpec]) -> dict[str, Any]:
    """The FeatureEvent schema for one model: its features required, each of its JSON type (a
    number finite, not boolean), null only where the manifest marks the feature nullable."""
    schema = copy.deepcopy(load_schema("feature_event"))
    specs = [f if isinstance(f, FeatureSpec) else FeatureSpec(f) for f in features]
    schema["properties"]["features"] = {
        "type": "object",
        "required": [spec.name for spec in specs],
        "properties": {spec.name: _feature_schema(spec) for spec in specs},
    }
    return schema


def _feature_schema(spec: FeatureSpec) -> dict[str, Any]:
    if spec.json_type == "number":
        value: dict[str, Any] = {"type": "number", "minimum": -MAX_FINITE, "maximum": MAX_FINITE}
    else:
        value = {"type": spec.json_type}
    if spec.nullable:
        return {"anyOf": [value, {"type": "null"}]}
    return value
