"""A bug planted in a method, for the tests of what a worker does when one strikes."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException


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


class RefusingProducer:
    """A producer whose produce() raises at once, as librdkafka does for a record over its
    message.max.bytes or after a fatal error."""

    def __init__(self, code: int) -> None:
        self.code = code

    def produce(self, *_a: object, **_k: object) -> None:
        raise KafkaException(KafkaError(self.code))

    def poll(self, _timeout: float) -> int:
        return 0
