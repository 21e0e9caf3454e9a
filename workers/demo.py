"""The demo: what a newcomer sees first."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from workers.kafka_io.admin import create_topics
from workers.kafka_io.roundtrip import consume_exact, produce_all


def run_demo(bootstrap_servers: str, events: int, out_dir: Path) -> int:
    """Send keyed feature events through a fresh topic, read them back, report counts."""
    topic = f"demo-roundtrip-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap_servers, {topic: 4})
    records = (
        (
            f"evt-{i}".encode(),
            json.dumps({"event_id": f"evt-{i}", "features": {"x": i * 0.5}}).encode(),
        )
        for i in range(events)
    )
    started = time.monotonic()
    sent = produce_all(bootstrap_servers, topic, records)
    produced_s = time.monotonic() - started
    received = consume_exact(bootstrap_servers, topic, f"demo-{topic}", sent)
    total_s = time.monotonic() - started
    unique = len({r.key for r in received})
    summary = {
        "bootstrap_servers": bootstrap_servers,
        "topic": topic,
        "sent": sent,
        "received": len(received),
        "unique_keys": unique,
        "partitions": sorted({r.partition for r in received}),
        "produce_s": round(produced_s, 3),
        "round_trip_s": round(total_s, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"sent {sent} events to {topic} on {bootstrap_servers}; read back {len(received)} "
        f"({unique} unique) from partitions {summary['partitions']} in {total_s:.2f} s; "
        f"summary in {out_dir / 'summary.json'}"
    )
    return 0 if len(received) == sent == unique else 1
