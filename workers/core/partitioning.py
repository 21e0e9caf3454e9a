"""Where a Java producer puts a key: the Java clients' murmur2 hash, modulo the partitions.

scorestream's own producers use it (librdkafka's `murmur2_random`), so an event's prediction
and its re-keyed label share a partition number. Records written with another partitioner
(librdkafka's default CRC32, explicit partitions, no key) are found by comparing the partition
they were read from with `partition_of` their event_id. `workers._murmur2` computes the same
in C; this module's Python is the fallback and the reference it is tested against.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

_M = 0x5BD1E995


def murmur2_py(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, as an unsigned 32-bit number."""
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_of_py(key: bytes | str, partitions: int) -> int:
    """The partition of `partitions` a Java producer picks for `key` (a str as its UTF-8)."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    data = key.encode() if isinstance(key, str) else key
    return (murmur2_py(data) & 0x7FFFFFFF) % partitions


murmur2: Callable[[bytes], int] = murmur2_py
partition_of: Callable[[bytes | str, int], int] = partition_of_py
try:
    _fast = importlib.import_module("workers._murmur2")
    murmur2, partition_of = _fast.murmur2, _fast.partition
except ImportError:  # built without a C compiler
    pass
