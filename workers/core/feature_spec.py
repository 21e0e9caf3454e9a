"""What a model takes per feature: its kind, the JSON type of its values, whether null is legal.

A manifest written before kinds existed lists names only: every feature is then numeric and not
nullable, which is what such a model was served as.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"
KINDS: Final = (NUMERIC, CATEGORICAL)
# The JSON type a feature's values take on the wire.
JSON_TYPES: Final = ("number", "string", "integer", "boolean")


class FeatureSpecError(ValueError):
    """A manifest's feature kinds do not make sense; the message says which."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    kind: str = NUMERIC
    nullable: bool = False
    # "number" for a numeric feature; a categorical one takes what its training values were.
    json_type: str = "number"
    # The pandas dtype the model was fitted with ("float64", "str", "object", "category", ...),
    # for a model that is handed a DataFrame; None for one that takes a matrix.
    dtype: str | None = None
    # For a pandas "category" dtype: the categories, in order (they define the codes).
    categories: tuple[Any, ...] | None = None
    # How the training table wrote a gap in an object column: "nan" (what pandas reads from a
    # file) or "none" (a frame built from Python lists). A pipeline's imputer may treat only
    # one of them as missing, so the frame handed to it writes null the same way.
    missing_as: str = "nan"

    @property
    def numeric(self) -> bool:
        return self.kind == NUMERIC

    @property
    def null_value(self) -> Any:  # noqa: ANN401 - None or NaN
        """What a null becomes in the frame the model is handed."""
        return None if self.missing_as == "none" and self.dtype == "object" else float("nan")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "nullable": self.nullable}
        if self.kind == CATEGORICAL:
            out["json_type"] = self.json_type
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.missing_as != "nan":
            out["missing_as"] = self.missing_as
        return out

    @classmethod
    def from_json(cls, name: str, data: Any) -> FeatureSpec:  # noqa: ANN401 - parsed JSON
        if not isinstance(data, Mapping):
            raise FeatureSpecError(f"feature {name!r}: its kind must be an object")
        kind = data.get("kind", NUMERIC)
        if kind not in KINDS:
            raise FeatureSpecError(f"feature {name!r}: kind {kind!r} is not one of {KINDS}")
        json_type = data.get("json_type", "number" if kind == NUMERIC else "string")
        if json_type not in JSON_TYPES or (kind == NUMERIC) != (json_type == "number"):
            raise FeatureSpecError(
                f"feature {name!r}: json_type {json_type!r} does not fit kind {kind!r}"
            )
        nullable = data.get("nullable", False)
        if not isinstance(nullable, bool):
            raise FeatureSpecError(f"feature {name!r}: nullable must be true or false")
        dtype = data.get("dtype")
        categories = data.get("categories")
        missing_as = data.get("missing_as", "nan")
        if missing_as not in {"nan", "none"}:
            raise FeatureSpecError(f"feature {name!r}: missing_as must be 'nan' or 'none'")
        return cls(
            name=name,
            kind=kind,
            nullable=nullable,
            json_type=json_type,
            dtype=None if dtype is None else str(dtype),
            categories=None if categories is None else tuple(categories),
            missing_as=missing_as,
        )


def specs_from_manifest(features: Sequence[str], kinds: Any) -> tuple[FeatureSpec, ...]:  # noqa: ANN401
    """The manifest's `feature_kinds` (absent in old manifests: numeric, not nullable)."""
    if kinds is None:
        return tuple(FeatureSpec(name) for name in features)
    if not isinstance(kinds, Mapping):
        raise FeatureSpecError("feature_kinds must be an object keyed by feature name")
    unknown = sorted(set(kinds) - set(features))
    if unknown:
        raise FeatureSpecError(f"feature_kinds names features the model lacks: {unknown}")
    return tuple(
        FeatureSpec(name) if name not in kinds else FeatureSpec.from_json(name, kinds[name])
        for name in features
    )


def plain_numeric(specs: Sequence[FeatureSpec]) -> bool:
    """Every feature a non-nullable number: the fast path (one float matrix, no DataFrame)."""
    return all(spec.numeric and not spec.nullable for spec in specs)
