"""Process-wide settings both workers apply before their loop starts."""

from __future__ import annotations

import gc

from threadpoolctl import threadpool_limits


def tune_process() -> None:
    """Settings for a process that allocates a few objects per event, hundreds of thousands a
    second: one BLAS/OpenMP thread (more would fight librdkafka's threads for the cores), and
    a cycle collector that runs rarely (the per-event objects hold no cycles)."""
    threadpool_limits(1)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
