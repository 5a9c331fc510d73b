"""Ingestion job records in SQLite, so they survive a restart (or a kill -9).

They live in a `jobs` table of the manifest's database (its own connection): the data
directory keeps one file of state, and what hides the manifest from the web UI hides them too.
Each record is the job as JSON plus the process that owns it: records owned by another process
at start-up belong to one that died (one server runs per data directory), so their unfinished
jobs are resumed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id     TEXT PRIMARY KEY,
    owner  TEXT NOT NULL,      -- the process running it (`JobStore.owner`)
    state  TEXT NOT NULL,
    record TEXT NOT NULL       -- the job as JSON (rag/server/jobs.py `Job.record`)
);
"""


class JobStore:
    def __init__(self, path: Path, owner: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self._lock = threading.Lock()  # request threads and the job worker share the connection
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def save(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, owner, state, record) VALUES (?, ?, ?, ?) ON CONFLICT(id)"
                " DO UPDATE SET owner = excluded.owner, state = excluded.state,"
                " record = excluded.record",
                (record["id"], self.owner, record["state"], json.dumps(record)),
            )

    def inherited(self, limit: int) -> list[dict[str, Any]]:
        """Records of other (earlier) processes, oldest first: the newest `limit` of them
        and every unfinished one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM jobs WHERE owner != ?1 AND (state IN ('queued', 'running')"
                " OR rowid IN (SELECT rowid FROM jobs WHERE owner != ?1 ORDER BY rowid DESC"
                " LIMIT ?2)) ORDER BY rowid",
                (self.owner, limit),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def claim(self, job_id: str) -> bool:
        """Take over an unfinished job of a process that died; False if another live
        process took it first."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET owner = ? WHERE id = ? AND owner != ?",
                (self.owner, job_id, self.owner),
            )
        return cursor.rowcount == 1

    def prune(self, keep: int) -> None:
        """Forget all but the newest `keep` finished jobs."""
        with self._lock:
            self._db.execute(
                "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND rowid NOT IN"
                " (SELECT rowid FROM jobs ORDER BY rowid DESC LIMIT ?)",
                (keep,),
            )

    def unfinished_folders(self) -> set[str]:
        """Staging folders that unfinished jobs still need."""
        with self._lock:
            rows = self._db.execute(
                "SELECT json_extract(record, '$.folder') FROM jobs"
                " WHERE state IN ('queued', 'running')"
            ).fetchall()
        return {r[0] for r in rows if r[0]}

    def close(self) -> None:
        with self._lock:
            self._db.close()
