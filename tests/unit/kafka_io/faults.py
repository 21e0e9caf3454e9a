"""A bug planted in a method, for the tests of what a worker does when one strikes."""

from __future__ import annotations

from typing import Any

import pytest


def bug_on_call(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, n: int) -> None:
    """Make `cls.name` raise RuntimeError("a bug") on its `n`th call (the others run)."""
    real = getattr(cls, name)
    calls = 0

    def planted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, name, planted)
