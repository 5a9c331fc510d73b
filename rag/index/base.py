"""The `PageIndex` protocol both Qdrant adapters implement, and the index metadata check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rag.errors import UserError
from rag.index.schema import LEGACY_STORAGE, STORAGE_META_KEY
from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

# 2: a sparse BM25 text vector per page (rag/index/text.py) beside the visual vectors.
# 3: the prefetch searches a small multivector per page (`clusters`, pooling.pool_clusters)
#    instead of one mean vector.
SCHEMA_VERSION = 3


class IndexMismatchError(UserError):
    """The index on disk was built with other settings than the ones in force."""

    http_status = 503  # the server is not set up right; the message names the setting


class IndexUnavailableError(UserError):
    """The index cannot be opened or reached (locked, unreachable server, foreign data)."""

    http_status = 503


class PageIndex(Protocol):
    """One point per page: full multivector for exact MaxSim, pooled vectors for the prefetch."""

    backend: str  # "qdrant-edge" or "qdrant-server"

    def read_meta(self) -> dict[str, Any] | None: ...

    def write_meta(self, meta: dict[str, Any]) -> None: ...

    def upsert(
        self, records: Sequence[PageRecord], embeddings: Sequence[PageEmbedding | None]
    ) -> None:
        """Insert or replace pages (ids are deterministic, so repeating this is harmless). A
        page without an embedding is stored with its text vector only: text search finds it,
        visual search skips it until `add_visual`."""
        ...

    def add_visual(self, doc_id: str, page: int, emb: PageEmbedding) -> bool:
        """Give a stored page its visual vectors; False when no such page is stored."""
        ...

    def search(self, query: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[Hit]:
        """Two-stage: pooled prefetch, exact MaxSim rerank (both under `filters`).

        Equal to `search_exact` whenever no more pages match `filters` than the prefetch limit.
        """
        ...

    def search_exact(
        self, query: np.ndarray, k: int, filters: SearchFilter | None = None
    ) -> list[Hit]:
        """Exact MaxSim over every page matching `filters` (the baseline of tests and benches)."""
        ...

    def search_text(self, text: str, k: int, filters: SearchFilter | None = None) -> list[Hit]:
        """BM25 over the pages' text layers (no model needed); pages without text never match."""
        ...

    def search_hybrid(
        self,
        query: np.ndarray,
        text: str,
        k: int,
        filters: SearchFilter | None = None,
        *,
        text_weight: float = 1.0,
    ) -> list[Hit]:
        """One Qdrant query: the visual two-stage search and BM25 on `text` as prefetches,
        fused by reciprocal rank fusion (scores are RRF scores). The visual channel weighs 1,
        the text channel `text_weight`; pages without text still rank by the visual channel."""
        ...

    def set_page_text(self, doc_id: str, page: int, text: str, origin: str = "pdf") -> None:
        """Replace one page's text and its BM25 vector; `origin` is "pdf" or "ocr"."""
        ...

    def set_document_fields(self, doc_id: str, fields: dict[str, Any]) -> None:
        """Set payload fields (title, tags) on every page of a document."""
        ...

    def set_sources(self, doc_id: str, source: str, sources: Sequence[str]) -> None:
        """Update the paths a document is known under (same content seen under another name)."""
        ...

    def delete_document(self, doc_id: str) -> None: ...

    def count(self, filters: SearchFilter | None = None) -> int: ...

    def page_ids(self, doc_id: str) -> list[int]:
        """Page numbers stored for a document (used to check completeness)."""
        ...

    def page_vectors(self, doc_id: str, page: int) -> np.ndarray | None:
        """The stored multivector of one page (float32), for similarity maps."""
        ...

    def page(self, doc_id: str, page: int) -> Hit | None:
        """One stored page's payload (source, image, patch grid ...) as a `Hit` with score 0,
        or None if it is not stored."""
        ...

    def optimize(self) -> bool:
        """Make search fast after a large ingest (Qdrant Edge merges segments and builds the
        prefetch's HNSW graph; a server optimises by itself). True if anything changed;
        search is correct either way."""
        ...

    def bytes_on_disk(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def permanent_error(exc: BaseException) -> bool:
    """Whether a store error cannot go away by waiting: our bug (bad vectors: ValueError,
    TypeError) or a 4xx answer other than 429 (a wrong API key, a refused request)."""
    status = getattr(exc, "status_code", None)
    client_error = isinstance(status, int) and 400 <= status < 500 and status != 429
    return client_error or isinstance(exc, ValueError | TypeError)


# Metadata keys added after indexes existed, and what an index without the key was built with.
ADDED_META = {STORAGE_META_KEY: LEGACY_STORAGE, "pool_factor": 1}


def check_meta(index: PageIndex, expected: dict[str, Any]) -> None:
    """Write `expected` into a new index; refuse to open one built with other settings."""
    found = index.read_meta()
    if found is None:
        index.write_meta(expected)
        return
    found = {**ADDED_META, **found}
    diffs = {
        key: (found.get(key), value) for key, value in expected.items() if found.get(key) != value
    }
    if diffs:
        lines = ", ".join(
            f"{k}: index has {a!r}, settings say {b!r}" for k, (a, b) in diffs.items()
        )
        raise IndexMismatchError(
            f"The index was built with other settings ({lines}). Either restore the settings "
            "it was built with, or re-index: point PAGERAG_DATA_DIR (or PAGERAG_QDRANT_COLLECTION"
            " for a Qdrant server) at a new location and run `pagerag ingest` again, or run "
            "`pagerag reset` to delete this index first."
        )


def check_retriever(index: PageIndex, family: str, dim: int) -> None:
    """Refuse to fill `index` with another retriever family's vectors, or rows of another
    width; record the family the first time a retriever loads (`retriever_model` alone
    misses a local directory whose contents were replaced)."""
    from rag.index.schema import DIM

    found = index.read_meta() or {}
    stored_dim = int(found.get("dim", DIM))
    if dim != stored_dim:
        raise IndexMismatchError(
            f"The retriever ({family}) makes {dim}-d vectors, but this index stores "
            f"{stored_dim}-d ones. Choose a {stored_dim}-d retriever for "
            "PAGERAG_RETRIEVER_MODEL (`pagerag models` lists them)."
        )
    stored = found.get("retriever_family")
    if stored is None:
        if found:  # a new index gets its metadata from `check_meta` first
            index.write_meta({**found, "retriever_family": family})
    elif stored != family:
        raise IndexMismatchError(
            f"The index was built with a {stored} retriever, but PAGERAG_RETRIEVER_MODEL now "
            f"loads a {family} one, whose vectors cannot be compared with the stored ones. "
            f"Either point PAGERAG_RETRIEVER_MODEL back at the {stored} checkpoint, or "
            "re-index: point PAGERAG_DATA_DIR (or PAGERAG_QDRANT_COLLECTION for a Qdrant "
            "server) at a new location and run `pagerag ingest` again, or run `pagerag reset` "
            "to delete this index first."
        )
