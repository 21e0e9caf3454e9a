"""The JSON Schemas of the wire messages, shipped with the package (folder `schemas/`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

NAMES = ("feature_event", "prediction", "label", "alert")
# The largest finite double: JSON numbers beyond it overflow to infinity when parsed.
MAX_FINITE = 1.7976931348623157e308


def load_schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise ValueError(f"unknown schema {name!r}; one of {', '.join(NAMES)}")
    text = resources.files("workers.schemas_data").joinpath(f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def feature_event_schema_for(features: Sequence[str]) -> dict[str, Any]:
    """The FeatureEvent schema for one model: its features required, finite, not boolean."""
    schema = copy.deepcopy(load_schema("feature_event"))
    number = {"type": "number", "minimum": -MAX_FINITE, "maximum": MAX_FINITE}
    schema["properties"]["features"] = {
        "type": "object",
        "required": list(features),
        "properties": dict.fromkeys(features, number),
    }
    return schema
