"""SQLite manifest: which documents are stored, under which paths, and what failed.

A document is 'pending' from its first upserted page until every page is stored and the index
flushed; only then is it 'done'. A run that was killed finds it 'pending' and completes it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rag.types import DocumentInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id      TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    title       TEXT NOT NULL,
    pages       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    ingested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    path   TEXT PRIMARY KEY,          -- absolute path (or upload:<name>)
    source TEXT NOT NULL,             -- what users see
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS sources_doc ON sources(doc_id);
-- Pages stored with their text and image but no visual vectors yet (the retriever could not
-- load): text search finds them; they get their vectors when the retriever is available.
CREATE TABLE IF NOT EXISTS waiting (
    doc_id TEXT NOT NULL,
    page   INTEGER NOT NULL,
    PRIMARY KEY (doc_id, page)
);
CREATE TABLE IF NOT EXISTS failures (
    path   TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    error  TEXT NOT NULL,
    at     TEXT NOT NULL
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DocRow:
    doc_id: str
    state: str
    title: str
    pages: int
    tags: tuple[str, ...]


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per manifest; the ingest pipeline touches it from one thread only.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- documents ------------------------------------------------------------------------
    def document(self, doc_id: str) -> DocRow | None:
        row = self._db.execute(
            "SELECT doc_id, state, title, pages, tags FROM documents WHERE doc_id = ?", (doc_id,)
        ).fetchone()
        return (
            None
            if row is None
            else DocRow(row[0], row[1], row[2], row[3], tuple(json.loads(row[4])))
        )

    def begin(
        self, doc_id: str, *, title: str, pages: int, size: int, kind: str, tags: tuple[str, ...]
    ) -> None:
        """Record a document as pending before its first page is stored."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO documents"
                " (doc_id, state, title, pages, bytes, kind, tags, ingested_at)"
                " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?) ON CONFLICT(doc_id) DO UPDATE SET"
                " title = excluded.title, pages = excluded.pages, tags = excluded.tags",
                (doc_id, title, pages, size, kind, json.dumps(sorted(tags)), now()),
            )

    def update(
        self, doc_id: str, *, title: str | None = None, tags: tuple[str, ...] | None = None
    ) -> None:
        """Change a document's title and/or tags (None leaves one as it is)."""
        with self._tx() as db:
            db.execute(
                "UPDATE documents SET title = COALESCE(?, title), tags = COALESCE(?, tags)"
                " WHERE doc_id = ?",
                (title, None if tags is None else json.dumps(sorted(tags)), doc_id),
            )

    def finish(self, doc_id: str, pages: int | None = None) -> None:
        """Mark the document done; `pages`: the count actually stored (pages skipped or past
        a budget are not), which the listing shows."""
        with self._tx() as db:
            db.execute(
                "UPDATE documents SET state = 'done', ingested_at = ?,"
                " pages = COALESCE(?, pages) WHERE doc_id = ?",
                (now(), pages, doc_id),
            )

    def remove_document(self, doc_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sources WHERE doc_id = ?", (doc_id,))
            db.execute("DELETE FROM waiting WHERE doc_id = ?", (doc_id,))
            db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))

    def pending(self) -> list[str]:
        return [
            r[0] for r in self._db.execute("SELECT doc_id FROM documents WHERE state = 'pending'")
        ]

    def documents(self) -> list[DocumentInfo]:
        rows = self._db.execute(
            "SELECT doc_id, title, pages, bytes, tags, ingested_at FROM documents"
            " WHERE state = 'done' ORDER BY ingested_at, doc_id"
        ).fetchall()
        return [self._info(*row) for row in rows]

    def info(self, doc_id: str) -> DocumentInfo | None:
        row = self._db.execute(
            "SELECT doc_id, title, pages, bytes, tags, ingested_at FROM documents"
            " WHERE doc_id = ? AND state = 'done'",
            (doc_id,),
        ).fetchone()
        return None if row is None else self._info(*row)

    def _info(
        self, doc_id: str, title: str, pages: int, size: int, tags: str, at: str
    ) -> DocumentInfo:
        sources = self.sources(doc_id)
        return DocumentInfo(
            doc_id=doc_id,
            source=sources[0] if sources else "",
            title=title,
            pages=pages,
            sources=tuple(sources),
            tags=tuple(json.loads(tags)),
            ingested_at=at,
            bytes=size,
        )

    def resolve(self, prefix: str) -> list[str]:
        """Document ids starting with `prefix` (users type short ids, like git), in order.

        Compared as plain text at the start of the id: with LIKE, `%` and `_` in a typed id
        were wildcards and matched other documents (`rag.ids` also refuses them earlier)."""
        rows = self._db.execute(
            "SELECT doc_id FROM documents WHERE substr(doc_id, 1, ?) = ? ORDER BY doc_id",
            (len(prefix), prefix),
        )
        return [r[0] for r in rows]

    # -- sources --------------------------------------------------------------------------
    def doc_for_path(self, path: str) -> str | None:
        row = self._db.execute("SELECT doc_id FROM sources WHERE path = ?", (path,)).fetchone()
        return None if row is None else row[0]

    def sources(self, doc_id: str) -> list[str]:
        rows = self._db.execute(
            "SELECT source FROM sources WHERE doc_id = ? ORDER BY rowid", (doc_id,)
        )
        return list(dict.fromkeys(r[0] for r in rows))

    def link(self, path: str, source: str, doc_id: str) -> str | None:
        """Point `path` at `doc_id`; returns the document it pointed at before, if another."""
        with self._tx() as db:
            row = db.execute("SELECT doc_id FROM sources WHERE path = ?", (path,)).fetchone()
            db.execute(
                "INSERT INTO sources (path, source, doc_id) VALUES (?, ?, ?) ON CONFLICT(path)"
                " DO UPDATE SET source = excluded.source, doc_id = excluded.doc_id",
                (path, source, doc_id),
            )
            db.execute("DELETE FROM failures WHERE path = ?", (path,))
        previous = None if row is None else row[0]
        return previous if previous != doc_id else None

    def is_orphan(self, doc_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM sources WHERE doc_id = ? LIMIT 1", (doc_id,))
        return row.fetchone() is None

    # -- pages waiting for their visual vectors ---------------------------------------------
    def add_waiting(self, pages: list[tuple[str, int]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO waiting (doc_id, page) VALUES (?, ?)", pages)

    def waiting(self, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (doc_id, page) pairs waiting for visual vectors, oldest first."""
        rows = self._db.execute("SELECT doc_id, page FROM waiting ORDER BY rowid LIMIT ?", (limit,))
        return [(d, int(p)) for d, p in rows]

    def waiting_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM waiting").fetchone()[0])

    def done_waiting(self, pages: list[tuple[str, int]]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM waiting WHERE doc_id = ? AND page = ?", pages)

    # -- failures -------------------------------------------------------------------------
    def record_failure(self, path: str, source: str, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO failures (path, source, error, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(path) DO UPDATE SET error = excluded.error, at = excluded.at",
                (path, source, error, now()),
            )

    def failures(self) -> list[dict[str, str]]:
        rows = self._db.execute("SELECT source, error, at FROM failures ORDER BY at")
        return [{"source": s, "error": e, "at": a} for s, e, a in rows]
