"""Which libraries a saved model needs, and which versions of them are installed here.

A pickle is tied to the versions of the libraries whose classes it holds: a pipeline saved under
scikit-learn 1.9 may warn, misbehave or fail under another. Registration walks the fitted model's
objects and records the libraries their classes come from, so a worker can say which of them
differ where it runs.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions
from importlib.metadata import version as package_version

# Modules of the standard library and of the pickle machinery itself: no version to record.
_NOT_LIBRARIES = frozenset(
    {"builtins", "copyreg", "collections", "_codecs", "functools", "datetime", "copy_reg"}
)


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution named (and "python"); absent ones are left out."""
    versions = {}
    for name in names:
        if name == "python":
            versions[name] = platform.python_version()
            continue
        try:
            versions[name] = package_version(name)
        except PackageNotFoundError:
            continue
    return versions


@cache
def _distributions() -> dict[str, list[str]]:
    return dict(packages_distributions())


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides a top-level module (sklearn -> scikit-learn)."""
    top = module.split(".", 1)[0]
    if top in _NOT_LIBRARIES:
        return None
    names = _distributions().get(top)
    return names[0] if names else None


def object_modules(root: object, limit: int = 200_000) -> set[str]:
    """Top-level modules of the classes in an object graph (a fitted estimator and all it holds)."""
    modules: set[str] = set()
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        modules.add(type(obj).__module__.split(".", 1)[0])
        if isinstance(obj, str | bytes | int | float | bool | type(None)):
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif type(obj).__module__ == "numpy":
            if str(getattr(obj, "dtype", "")) == "object":
                stack.extend(obj.ravel().tolist())  # type: ignore[attr-defined]
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return modules


def model_versions(model: object, always: Iterable[str] = ("numpy", "joblib")) -> dict[str, str]:
    """Python's version and the installed versions of every library the model's classes need."""
    libraries = {d for d in map(distribution_of, object_modules(model)) if d is not None}
    libraries.update(always)
    return {"python": platform.python_version(), **installed_versions(sorted(libraries))}
