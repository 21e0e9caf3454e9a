"""Where the Java clients put a key, in Python and in C, against Kafka's own known answers."""

from __future__ import annotations

import importlib
import random

import pytest

from workers.core import partitioning
from workers.core.partitioning import murmur2_py, partition_of_py

pytestmark = pytest.mark.unit

# org.apache.kafka.common.utils.Utils.murmur2, from Kafka's UtilsTest.
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_gives_the_java_clients_answers() -> None:
    for key, signed in JAVA.items():
        assert murmur2_py(key) == signed & 0xFFFFFFFF, key
        assert partitioning.murmur2(key) == signed & 0xFFFFFFFF, key


def test_the_c_extension_is_built_and_agrees_with_python_on_any_key() -> None:
    # `make venv` builds it; the Python fallback is only for a machine without a compiler.
    fast = importlib.import_module("workers._murmur2")
    assert partitioning.partition_of is fast.partition
    rng = random.Random(3)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(0, 70))
        n = rng.randrange(1, 300)
        assert fast.murmur2(key) == murmur2_py(key)
        assert fast.partition(key, n) == partition_of_py(key, n)
    assert fast.partition("é-1".encode(), 7) == partition_of_py("é-1".encode(), 7)


def test_a_str_key_is_hashed_as_its_utf8() -> None:
    for key in ("abc", "é-1", "", "ü" * 40):
        assert partitioning.partition_of(key, 5) == partition_of_py(key.encode(), 5)
        assert partition_of_py(key, 5) == partition_of_py(key.encode(), 5)
    with pytest.raises(ValueError, match="positive"):
        partitioning.partition_of("a", 0)
