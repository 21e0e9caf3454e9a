"""The monitor's checkpoints in SQLite: state and consumed offsets, written in one transaction.

A restart or a new owner of a partition resumes from the stored offsets with the stored state,
so nothing is lost and nothing is counted twice. State blobs are pickles of the monitor's own
objects (join buffers, rolling windows, river detectors): the state folder must be as trusted
as the model folder.
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instance_state (instance TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS partition_state (partition INTEGER PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL, created_at INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS owners (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, instance TEXT NOT NULL,
    generation INTEGER NOT NULL, PRIMARY KEY (topic, partition)
);
"""

TopicPartitionKey = tuple[str, int]


class CheckpointError(Exception):
    """The state folder belongs to another configuration; the message names the fix."""


class CheckpointStore:
    """One SQLite file per monitor group; several monitors on one machine may share it.

    Partition state (join buffers) belongs to whoever holds the partition and moves with it;
    instance state (rolling windows, detectors, alerts) belongs to one named monitor instance.
    """

    def __init__(self, path: Path, identity: Mapping[str, str], instance: str = "main") -> None:
        self.instance = instance
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: transactions are explicit BEGIN/COMMIT below.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._check_identity(identity)

    def _check_identity(self, identity: Mapping[str, str]) -> None:
        stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not stored:
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(identity.items()))
            return
        differs = {k: (stored.get(k), v) for k, v in identity.items() if stored.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differs.items())
            raise CheckpointError(
                f"{self.path} holds the state of another monitor ({detail}); "
                "pass another --state-dir, or delete it to start over"
            )

    def claim(self, partitions: Sequence[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Take these partitions for this instance: each gets a new generation, so a save by
        an instance that held them before (stalled, then woken) can tell they are not its."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            claims = {}
            for topic, partition in partitions:
                row = db.execute(
                    "SELECT generation FROM owners WHERE topic = ? AND partition = ?",
                    (topic, partition),
                ).fetchone()
                generation = 1 if row is None else int(row[0]) + 1
                db.execute(
                    "INSERT OR REPLACE INTO owners VALUES (?, ?, ?, ?)",
                    (topic, partition, self.instance, generation),
                )
                claims[(topic, partition)] = generation
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return claims

    def save(
        self,
        global_state: Any,  # noqa: ANN401 - pickled as it is
        partitions: Mapping[int, Any],
        offsets: Mapping[tuple[str, int], int],
        outbox: Sequence[tuple[bytes | None, bytes, int]] = (),
        owned: Mapping[TopicPartitionKey, int] | None = None,
    ) -> bool:
        """Write everything in one transaction: all of it is stored, or none of it.

        `outbox`: alerts (key, value, created_at ms) raised by the state being saved, kept
        until they are published (exactly-once: the state that fired them and the duty to
        publish them are stored together). `owned`: the partitions this instance claimed,
        with their generations; when another instance has claimed one since, nothing is
        written and False is returned (the caller's state is stale)."""
        blob = pickle.dumps(global_state, protocol=pickle.HIGHEST_PROTOCOL)
        rows = [
            (p, pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for p, s in partitions.items()
        ]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if owned is not None and not self._still_owned(owned):
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO instance_state VALUES (?, ?)", (self.instance, blob))
            db.executemany("INSERT OR REPLACE INTO partition_state VALUES (?, ?)", rows)
            db.executemany(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                [(t, p, o) for (t, p), o in offsets.items()],
            )
            db.executemany(
                "INSERT INTO outbox (instance, created_at, key, value) VALUES (?, ?, ?, ?)",
                [(self.instance, at, key, value) for key, value, at in outbox],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def _still_owned(self, owned: Mapping[TopicPartitionKey, int]) -> bool:
        for (topic, partition), generation in owned.items():
            row = self._db.execute(
                "SELECT instance, generation FROM owners WHERE topic = ? AND partition = ?",
                (topic, partition),
            ).fetchone()
            if row is None or (row[0], int(row[1])) != (self.instance, generation):
                return False
        return True

    def load_global(self) -> Any:  # noqa: ANN401
        row = self._db.execute(
            "SELECT state FROM instance_state WHERE instance = ?", (self.instance,)
        ).fetchone()
        return None if row is None else pickle.loads(row[0])  # noqa: S301 - our own state file

    def load_partition(self, partition: int) -> Any:  # noqa: ANN401
        row = self._db.execute(
            "SELECT state FROM partition_state WHERE partition = ?", (partition,)
        ).fetchone()
        return None if row is None else pickle.loads(row[0])  # noqa: S301

    def offset(self, topic: str, partition: int) -> int | None:
        row = self._db.execute(
            "SELECT next_offset FROM offsets WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        return None if row is None else int(row[0])

    def outbox(self) -> list[tuple[int, int, bytes | None, bytes]]:
        """This instance's unpublished alerts: (seq, created_at, key, value), oldest first."""
        rows = self._db.execute(
            "SELECT seq, created_at, key, value FROM outbox WHERE instance = ? ORDER BY seq",
            (self.instance,),
        ).fetchall()
        return [(int(a), int(b), c, d) for a, b, c, d in rows]

    def published(self, seqs: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def close(self) -> None:
        self._db.close()
