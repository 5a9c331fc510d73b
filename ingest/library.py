"""What is stored of each document, kept consistent: manifest rows, index points, page images.

`Library` owns the three stores and a document's life in them: `begin` (pending, invisible to
search), `complete` (durable, then 'done'), `link` (the paths it was seen under) and `remove`.
The ingestion runner writes through it; the service lists and deletes through it, so deleting
a document needs no renderer or model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ingest.manifest import Manifest
from ingest.worker import image_path
from rag.index.base import PageIndex
from rag.types import DocumentInfo, PageEmbedding


class PageImages:
    """The rendered page images: `<root>/<id[:2]>/<id>/p0001.png` (two-character fan-out keeps
    folders small at 100k documents)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, doc_id: str) -> Path:
        return self.root / doc_id[:2] / doc_id

    def path(self, doc_id: str, page: int) -> Path:
        return image_path(self.folder(doc_id), page)

    def remove(self, doc_id: str) -> None:
        shutil.rmtree(self.folder(doc_id), ignore_errors=True)

    def bytes(self) -> int:
        if not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())


class Library:
    def __init__(self, manifest: Manifest, index: PageIndex, images: PageImages) -> None:
        self.manifest = manifest
        self.index = index
        self.images = images

    # -- a document's life ----------------------------------------------------------------
    def is_complete(self, doc_id: str) -> bool:
        row = self.manifest.document(doc_id)
        return row is not None and row.state == "done"

    def begin(
        self, doc_id: str, *, title: str, pages: int, size: int, kind: str, tags: tuple[str, ...]
    ) -> frozenset[int]:
        """Record a document as pending (never searched until `complete`); returns the pages
        an interrupted run already stored, which need not be stored again."""
        self.manifest.begin(doc_id, title=title, pages=pages, size=size, kind=kind, tags=tags)
        return frozenset(self.index.page_ids(doc_id))

    def stored_pages(self, doc_id: str) -> set[int]:
        return set(self.index.page_ids(doc_id))

    def complete(self, doc_id: str, pages: int) -> None:
        """The document's `pages` stored pages are durable in the index, then it is 'done'
        (listed and searchable); a crash in between leaves it pending, never half-visible."""
        self.index.flush()
        self.manifest.finish(doc_id, pages=pages)

    def link(self, path: str, source: str, doc_id: str) -> None:
        """Record `path` (shown as `source`) as a path of `doc_id`; a changed file's old
        version goes away, or keeps its other paths."""
        before = self.manifest.sources(doc_id)
        previous = self.manifest.link(path, source, doc_id)
        after = self.manifest.sources(doc_id)
        if after != before:
            self.index.set_sources(doc_id, after[0], after)
        if previous is not None:
            if self.manifest.is_orphan(previous):
                self.remove(previous)
            else:
                remaining = self.manifest.sources(previous)
                self.index.set_sources(previous, remaining[0], remaining)

    def update(
        self, doc_id: str, *, title: str | None = None, tags: tuple[str, ...] | None = None
    ) -> None:
        """A new title and/or tags: on every page's payload (search filters by the tags at
        once), then in the manifest (the listing)."""
        fields: dict[str, object] = {}
        if title is not None:
            fields["title"] = title
        if tags is not None:
            fields["tags"] = sorted(tags)
        if fields:
            self.index.set_document_fields(doc_id, fields)
            self.index.flush()
            self.manifest.update(doc_id, title=title, tags=tags)

    def remove(self, doc_id: str) -> None:
        """Delete a document's points, page images and manifest rows (index first: a crash
        midway leaves manifest rows that a later delete or ingest cleans up)."""
        self.index.delete_document(doc_id)
        self.index.flush()
        self.images.remove(doc_id)
        self.manifest.remove_document(doc_id)

    # -- pages waiting for their visual vectors (stored while the retriever could not load) --
    def expect_visual(self, pages: list[tuple[str, int]]) -> None:
        self.manifest.add_waiting(pages)

    def waiting(self, limit: int) -> list[tuple[str, int]]:
        return self.manifest.waiting(limit)

    def waiting_count(self) -> int:
        return self.manifest.waiting_count()

    def add_visual(self, pages: list[tuple[str, int]], embeddings: list[PageEmbedding]) -> int:
        """Store the visual vectors of waiting pages; how many were still there to get them."""
        added = sum(
            self.index.add_visual(doc_id, page, emb)
            for (doc_id, page), emb in zip(pages, embeddings, strict=True)
        )
        self.index.flush()
        self.drop_waiting(pages)
        return added

    def drop_waiting(self, pages: list[tuple[str, int]]) -> None:
        self.manifest.done_waiting(pages)

    def record_failure(self, path: str, source: str, error: str) -> None:
        self.manifest.record_failure(path, source, error)

    # -- listing --------------------------------------------------------------------------
    def documents(self) -> list[DocumentInfo]:
        return self.manifest.documents()

    def pending(self) -> tuple[str, ...]:
        """Documents not complete yet (being ingested, or interrupted): never searchable."""
        return tuple(self.manifest.pending())
