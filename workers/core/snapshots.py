"""A stage's per-partition state as bytes for its changelog topic, read back as data only.

Anyone who may write a changelog topic may write anything to it, so a snapshot read back must
never run code, and a record that is no snapshot of this group (a foreign record, one of
another group, a crafted one) is refused, not a crash. A snapshot is a tag naming what it
holds, then the state pickled; it is unpickled with an allow-list: the state's own classes
(workers.core, which does no I/O), river's detectors, numpy arrays, a few containers, and the
bound methods of those objects. Nothing else can be named, so no record can call a function
(os.system, eval, a getattr of a module) or construct anything with side effects, and what
comes out must be of the expected type.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, TypeVar

T = TypeVar("T")

MAGIC = b"scorestream-snapshot/1\n"
_LEGACY = b"\x80\x05"  # how the untagged snapshots of earlier releases began (pickle 5)
_BUILTINS = "set frozenset complex bytearray list dict tuple int float str bytes bool slice range"
_SAFE = {("builtins", name) for name in _BUILTINS.split()} | {
    ("collections", "OrderedDict"),
    ("collections", "deque"),
    ("collections", "defaultdict"),
    ("random", "Random"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}
# Classes whose construction is pure: the state's own, and river's (detectors, statistics).
_CLASS_PACKAGES = ("workers.core.", "river.")


class SnapshotRefused(Exception):  # noqa: N818 - a refusal, not a failure of ours
    """These bytes are no snapshot of what was asked for; the message says why."""


def dump(state: object, tag: str) -> bytes:
    """`state` as a snapshot tagged `tag` (say, the changelog it belongs to)."""
    return MAGIC + _tag(tag) + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def load(blob: bytes, tag: str, expected: type[T]) -> T:
    """The state in `blob`, a snapshot tagged `tag` of an `expected`; SnapshotRefused
    otherwise."""
    head = MAGIC + _tag(tag)
    if blob.startswith(head):
        body = blob[len(head) :]
    elif blob.startswith(MAGIC):
        raise SnapshotRefused("a snapshot of another group or stage")
    elif blob.startswith(_LEGACY):
        body = blob  # written before snapshots were tagged: read under the same allow-list
    else:
        raise SnapshotRefused("not a scorestream snapshot")
    try:
        state = _DataOnly(io.BytesIO(body)).load()
    except SnapshotRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever truncated or crafted bytes raise
        raise SnapshotRefused(f"unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, expected):
        raise SnapshotRefused(f"holds a {type(state).__name__}, not a {expected.__name__}")
    return state


def _tag(tag: str) -> bytes:
    encoded = tag.encode()
    return len(encoded).to_bytes(2, "big") + encoded


def _method_of(obj: object, name: str) -> Any:  # noqa: ANN401 - a bound method
    """What pickle names `getattr` for: a bound method kept as an attribute (river's
    PageHinkley keeps its test so), of an object of an allowed class, and nothing else."""
    cls = type(obj)
    if (
        isinstance(obj, type)
        or not cls.__module__.startswith(_CLASS_PACKAGES)
        or name.startswith("__")
        or not callable(getattr(cls, name, None))
    ):
        raise SnapshotRefused(f"asks for {cls.__name__}.{name}, which no snapshot holds")
    return getattr(obj, name)


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - any allowed class
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr"):
            return _method_of
        if module.startswith(_CLASS_PACKAGES) and "." not in name:
            found = super().find_class(module, name)
            # A class, and defined there: no function, and nothing imported into the module.
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise SnapshotRefused(f"names {module}.{name}, which no snapshot holds")
