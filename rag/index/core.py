"""The Qdrant logic both adapters share: query plans, filters, points and payload lookups.

`QdrantIndex` implements the `PageIndex` protocol once. It describes what to ask Qdrant in
backend-neutral terms (`Where`, `Stage`, `PagePoint`: plain Python and numpy), and `EdgeIndex`
(qdrant-edge-py) and `ServerIndex` (qdrant-client) only turn those into their own library's
objects and calls, in the few abstract methods at the end of the class. So a search, a filter or
a payload is built in one place and the two backends cannot drift apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import numpy as np
from qdrant_edge import SparseVector

from rag.index import schema
from rag.index.pooling import pool_clusters
from rag.index.text import RRF_K, TEXT, embed_page_text, embed_query_text
from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

SCROLL_PAGE = 1024  # points per scroll request
# Payload fields a search leaves out of its hits: the path prefixes exist only to filter on.
HIDDEN = ["paths"]

# What one scroll request gives: payloads, and the offset to go on from (None: the end).
ScrollPage = tuple[list[dict[str, Any]], Any]


@dataclass(frozen=True)
class Where:
    """A filter: every `must` condition holds and no `must_not` one does (schema.Condition:
    the key holds any of the values)."""

    must: tuple[schema.Condition, ...] = ()
    must_not: tuple[schema.Condition, ...] = ()


@dataclass(frozen=True)
class Nearest:
    """Score by the vector named `using`: MaxSim for a multivector, dot product for BM25."""

    using: str
    vector: list[list[float]] | SparseVector


@dataclass(frozen=True)
class Rrf:
    """Fuse the prefetches' rankings by reciprocal rank fusion (`weights`: one a prefetch)."""

    k: int
    weights: list[float] | None = None


@dataclass(frozen=True)
class Rescore:
    """Score the vector's quantized codes (schema.VectorStorage.quantization), then rescore
    `oversampling` times the stage's limit with the primary values (None: Qdrant's default)."""

    oversampling: float | None = None


@dataclass(frozen=True)
class Stage:
    """One stage of a Qdrant query: score what the `prefetch` stages hand on (without any,
    every point matching `where`) by `query`, keep the best `limit`."""

    query: Nearest | Rrf
    limit: int
    where: Where | None = None
    prefetch: tuple[Stage, ...] = ()
    hnsw_ef: int | None = None  # HNSW search breadth; None: Qdrant's default
    rescore: Rescore | None = None  # only for a vector with quantized codes


@dataclass(frozen=True)
class PagePoint:
    """One page as a point: id, named vectors (dense rows as lists, BM25 as a SparseVector)."""

    id: str
    vectors: dict[str, list[list[float]] | SparseVector]
    payload: dict[str, Any]


def where(filters: SearchFilter | None) -> Where | None:
    """SearchFilter -> Where (None: no restriction)."""
    must = schema.filter_conditions(filters)
    must_not: list[schema.Condition] = []
    if filters is not None and filters.exclude_doc_ids:
        must_not.append(("doc_id", list(filters.exclude_doc_ids)))
    return Where(tuple(must), tuple(must_not)) if must or must_not else None


def doc_where(doc_id: str) -> Where:
    return Where(must=(("doc_id", [doc_id]),))


def page_point(record: PageRecord, emb: PageEmbedding | None) -> PagePoint:
    """The page's point; without `emb` (no retriever yet) only its text vector and payload,
    which visual search skips (Qdrant scores only the points that have the vector asked)."""
    vectors: dict[str, list[list[float]] | SparseVector] = {}
    if emb is not None:
        rows = schema.check_rows(emb.vectors, f"{record.source} page {record.page}")
        # Lists, not numpy arrays: Edge reads an array element by element, 2x slower than
        # converting it with .tolist() first (measured: 9 ms against 4.6 ms a page).
        vectors[schema.COLQWEN] = schema.storage_rows(rows).tolist()
        vectors[schema.CLUSTERS] = pool_clusters(emb).tolist()
    text = embed_page_text(record.text)
    if text is not None:  # a page without a text layer has no text vector
        vectors[TEXT] = text
    pid = schema.point_id(record.doc_id, record.page)
    return PagePoint(pid, vectors, schema.record_to_payload(record))


def _query_rows(query: np.ndarray) -> list[list[float]]:
    # Qdrant scores a float16 multivector with the query rounded to float16 too (Edge does;
    # qdrant-client's local mode does not): rounding here makes every backend agree.
    return schema.storage_rows(schema.check_rows(query, "query")).tolist()


class QdrantIndex(ABC):
    """`PageIndex` over one Qdrant collection (or Edge shard), minus the client calls.

    Subclasses set `prefetch_limit`, `hnsw_ef` (see `search`) and `storage` (a schema.STORAGES
    name, fixed when the index is created) and implement the abstract methods below, each one
    call (or a batch of calls) into their client library.
    """

    backend: str
    prefetch_limit: int
    hnsw_ef: int | None
    storage: str = schema.DEFAULT_STORAGE

    def _rescore(self, vector: str) -> Rescore | None:
        """Search parameters for `vector` under this index's storage (None: no codes)."""
        if schema.vector_storages(self.storage)[vector].quantization is None:
            return None
        return Rescore(schema.storage(self.storage).oversampling)

    # -- writes ---------------------------------------------------------------------------

    def upsert(
        self, records: Sequence[PageRecord], embeddings: Sequence[PageEmbedding | None]
    ) -> None:
        schema.check_batch(records, embeddings)
        self._write([page_point(r, e) for r, e in zip(records, embeddings, strict=True)])

    def add_visual(self, doc_id: str, page: int, emb: PageEmbedding) -> bool:
        """Give a page stored without visual vectors its vectors (and their grid); False when
        the page is gone (deleted meanwhile). The point is written whole again, from its
        stored payload: one call on both backends, and idempotent."""
        found = self._retrieve(schema.point_id(doc_id, page), payload=True, vector=None)
        if found is None:
            return False
        record = replace(
            schema.payload_to_record(found[0]),
            grid=emb.grid,
            image_offset=emb.image_offset,
            patch_map=emb.patch_map,
        )
        self._write([page_point(record, emb)])
        return True

    def set_sources(self, doc_id: str, source: str, sources: Sequence[str]) -> None:
        self._set_payload(schema.source_payload(source, sources), doc_where(doc_id))

    def set_document_fields(self, doc_id: str, fields: dict[str, Any]) -> None:
        self._set_payload(fields, doc_where(doc_id))

    def delete_document(self, doc_id: str) -> None:
        self._delete(doc_where(doc_id))

    def set_page_text(self, doc_id: str, page: int, text: str, origin: str = "pdf") -> None:
        """Replace a page's text and its BM25 vector (OCR, or a dataset's own text)."""
        pid = schema.point_id(doc_id, page)
        self._set_payload({"text": text, "text_origin": origin}, [pid])
        self._set_text_vector(pid, embed_page_text(text))

    # -- reads ----------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[Hit]:
        """Cluster-vector HNSW prefetch, then exact MaxSim (`_pooled_stages`); exact whenever no
        more than `prefetch_limit` pages match `filters`."""
        return self._visual(query, k, filters, prefetch=True)

    def search_exact(
        self, query: np.ndarray, k: int, filters: SearchFilter | None = None
    ) -> list[Hit]:
        return self._visual(query, k, filters, prefetch=False)

    def _visual(
        self, query: np.ndarray, k: int, filters: SearchFilter | None, prefetch: bool
    ) -> list[Hit]:
        q = _query_rows(query)
        if k < 1:
            return []
        at = where(filters)
        first = self._pooled_stages(q, filters, at, max(self.prefetch_limit, k)) if prefetch else ()
        rescore = self._rescore(schema.COLQWEN)
        return self._hits(Stage(Nearest(schema.COLQWEN, q), k, at, first, rescore=rescore))

    def _pooled_stages(
        self, q: list[list[float]], filters: SearchFilter | None, at: Where | None, limit: int
    ) -> tuple[Stage, ...]:
        """The prefetch in front of the exact rerank, keeping `limit` pages; () for none.

        Exactness guarantee: when no more than `limit` pages match, a prefetch could only lose
        pages (HNSW is approximate), so there is none and every page gets exact MaxSim. The
        count is one cheap call over the payload indexes.
        """
        if self.count(filters) <= limit:
            return ()
        rescore = self._rescore(schema.CLUSTERS)
        return (
            Stage(Nearest(schema.CLUSTERS, q), limit, at, hnsw_ef=self.hnsw_ef, rescore=rescore),
        )

    # -- text and hybrid search (BM25 channel: rag/index/text.py) -------------------------

    def search_text(self, text: str, k: int, filters: SearchFilter | None = None) -> list[Hit]:
        sparse = embed_query_text(text)
        if sparse is None or k < 1:
            return []
        return self._hits(Stage(Nearest(TEXT, sparse), k, where(filters)))

    def search_hybrid(
        self,
        query: np.ndarray,
        text: str,
        k: int,
        filters: SearchFilter | None = None,
        *,
        text_weight: float = 1.0,
    ) -> list[Hit]:
        q = _query_rows(query)
        if k < 1:
            return []
        at = where(filters)
        # Each channel hands the fusion its best `depth` pages. The visual channel scores every
        # pooled candidate with MaxSim anyway, so passing them all on costs nothing; the same
        # exactness rule as `search` applies (no pooled stage when few pages match).
        depth = max(self.prefetch_limit, k)
        pooled = self._pooled_stages(q, filters, at, depth)
        rescore = self._rescore(schema.COLQWEN)
        channels = [Stage(Nearest(schema.COLQWEN, q), depth, at, pooled, rescore=rescore)]
        sparse = embed_query_text(text)
        if sparse is not None:  # a query of stop words only has no text channel
            channels.append(Stage(Nearest(TEXT, sparse), depth, at))
        # Pages without text are absent from the text channel only: they still rank visually.
        # RRF with k needs Qdrant server 1.16 (as does the collection metadata), weights 1.17:
        # equal weights send none.
        weights = [1.0, text_weight][: len(channels)] if text_weight != 1.0 else None
        return self._hits(Stage(Rrf(RRF_K, weights), k, at, tuple(channels)))

    def _hits(self, stage: Stage) -> list[Hit]:
        return [schema.payload_to_hit(payload, score) for payload, score in self._run(stage)]

    def count(self, filters: SearchFilter | None = None) -> int:
        return self._count(where(filters))

    def page_ids(self, doc_id: str) -> list[int]:
        pages: list[int] = []
        offset = None
        while True:
            payloads, offset = self._scroll(doc_where(doc_id), ["page"], offset)
            pages.extend(int(p["page"]) for p in payloads)
            if offset is None:
                return sorted(pages)

    def page(self, doc_id: str, page: int) -> Hit | None:
        found = self._retrieve(schema.point_id(doc_id, page), payload=True, vector=None)
        return None if found is None else schema.payload_to_hit(found[0], 0.0)

    def page_vectors(self, doc_id: str, page: int) -> np.ndarray | None:
        found = self._retrieve(schema.point_id(doc_id, page), payload=False, vector=schema.COLQWEN)
        if found is None or not isinstance(found[1], dict) or schema.COLQWEN not in found[1]:
            return None  # no such page, or one stored without visual vectors (yet)
        return np.asarray(found[1][schema.COLQWEN], dtype=np.float32)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the client calls, one backend each -----------------------------------------------

    @abstractmethod
    def _run(self, stage: Stage) -> list[tuple[dict[str, Any], float]]:
        """Run the query `stage` (payloads without `HIDDEN`): (payload, score), best first."""

    @abstractmethod
    def _count(self, at: Where | None) -> int:
        """Exact count of the points matching `at`."""

    @abstractmethod
    def _scroll(
        self, at: Where, fields: list[str], offset: Any
    ) -> tuple[list[dict[str, Any]], Any]:
        """Up to SCROLL_PAGE payloads (only `fields`) from `offset` on; the next offset or None."""

    @abstractmethod
    def _retrieve(
        self, pid: str, *, payload: bool, vector: str | None
    ) -> tuple[dict[str, Any], Any] | None:
        """One point's payload ({} unless `payload`) and vectors (the one named `vector`)."""

    @abstractmethod
    def _write(self, points: list[PagePoint]) -> None:
        """Insert or replace `points`."""

    @abstractmethod
    def _set_payload(self, payload: dict[str, Any], target: list[str] | Where) -> None:
        """Set `payload`'s fields on the points with these ids, or on those matching a Where."""

    @abstractmethod
    def _delete(self, at: Where) -> None:
        """Delete the points matching `at`."""

    @abstractmethod
    def _set_text_vector(self, pid: str, sparse: SparseVector | None) -> None:
        """Replace the BM25 vector of one point; None deletes it."""
