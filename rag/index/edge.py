"""`EdgeIndex`: the embedded default, Qdrant's engine in-process through `qdrant_edge.EdgeShard`.

Layout of the index directory:
    <index_dir>/shard/      the Edge shard (WAL, segments, edge_config.json)
    <index_dir>/meta.json   index metadata (model, dim, render settings, schema version)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HnswIndexConfig,
    MatchAny,
    MultiVectorComparator,
    MultiVectorConfig,
    PayloadSchemaType,
    PayloadSelector,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    ScrollRequest,
    UpdateOperation,
    VectorStorageDatatype,
)

from rag.index import schema
from rag.index.base import IndexUnavailableError
from rag.index.pooling import pool_mean, pool_query
from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

_SCROLL_PAGE = 1024
_FIELD_TYPES = {"keyword": PayloadSchemaType.Keyword, "integer": PayloadSchemaType.Integer}


def edge_config() -> EdgeConfig:
    return EdgeConfig(
        vectors={
            schema.COLQWEN: EdgeVectorParams(
                size=schema.DIM,
                distance=Distance.Dot,  # ColQwen2 rows are unit vectors
                multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                datatype=VectorStorageDatatype.Float16,
                # m=0: no graph; this vector is only scored exactly (rerank / exact search).
                hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            ),
            schema.MEAN: EdgeVectorParams(
                size=schema.DIM,
                distance=Distance.Cosine,
                hnsw_config=HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
            ),
        }
    )


class EdgeIndex:
    """`PageIndex` on a Qdrant Edge shard in `path` (created on first use).

    Extra over the protocol: `optimize()` builds the HNSW graph of the pooled vectors (Edge runs
    no background optimizer); call it after a large ingest. Search is correct without it.
    One process at a time: a second open of the same directory fails with a clear error.
    """

    backend = "qdrant-edge"

    def __init__(self, path: str | Path, *, prefetch_limit: int = 200, batch_size: int = 64):
        if prefetch_limit < 1 or batch_size < 1:
            raise ValueError("prefetch_limit and batch_size must be at least 1")
        self.path = Path(path).expanduser()
        self.prefetch_limit = prefetch_limit
        self.batch_size = batch_size
        self._meta_path = self.path / "meta.json"
        shard_dir = self.path / "shard"
        exists = shard_dir.is_dir() and any(shard_dir.iterdir())
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            # Loading with our config makes Edge check the stored vectors against it.
            if exists:
                self._shard = EdgeShard.load(str(shard_dir), edge_config())
            else:
                self._shard = EdgeShard.create(str(shard_dir), edge_config())
        except Exception as exc:  # qdrant_edge raises bare Exception
            hint = (
                "another PageRAG process (a running server?) has it open; stop it or use a "
                "Qdrant server (PAGERAG_QDRANT_URL) for shared access"
                if "WouldBlock" in str(exc)
                else "if it was built by another PageRAG version, re-index into a new "
                "PAGERAG_DATA_DIR or run `pagerag reset`"
            )
            raise IndexUnavailableError(
                f"Cannot open the Qdrant Edge index at {shard_dir}: {exc}. Hint: {hint}."
            ) from exc
        self._closed = False
        indexed = self._shard.info().payload_schema
        for name, kind in schema.PAYLOAD_INDEXES.items():
            if name not in indexed:
                self._shard.update(UpdateOperation.create_field_index(name, _FIELD_TYPES[kind]))

    # -- metadata -------------------------------------------------------------------------

    def read_meta(self) -> dict[str, Any] | None:
        if not self._meta_path.exists():
            return None
        try:
            return json.loads(self._meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise IndexUnavailableError(
                f"{self._meta_path} is not valid JSON ({exc}); restore it or "
                "re-index (`pagerag reset`)"
            ) from exc

    def write_meta(self, meta: dict[str, Any]) -> None:
        # Temp file + os.replace: a crash leaves the old file or the new one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".meta.", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._meta_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, records: Sequence[PageRecord], embeddings: Sequence[PageEmbedding]) -> None:
        schema.check_batch(records, embeddings)
        points = []
        for record, emb in zip(records, embeddings, strict=True):
            rows = schema.check_rows(emb.vectors, f"{record.source} page {record.page}")
            vectors = {schema.COLQWEN: schema.storage_rows(rows), schema.MEAN: pool_mean(emb)}
            pid = schema.point_id(record.doc_id, record.page)
            # Edge takes numpy arrays as vectors (the stubs say lists): no .tolist() copies.
            point = Point(pid, vectors, schema.record_to_payload(record))  # type: ignore[arg-type]
            points.append(point)
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            self._shard.update(UpdateOperation.upsert_points(batch))

    def set_sources(self, doc_id: str, source: str, sources: Sequence[str]) -> None:
        payload = schema.source_payload(source, sources)
        self._shard.update(UpdateOperation.set_payload_by_filter(_doc_filter(doc_id), payload))

    def delete_document(self, doc_id: str) -> None:
        self._shard.update(UpdateOperation.delete_points_by_filter(_doc_filter(doc_id)))

    def flush(self) -> None:
        self._shard.flush()

    def optimize(self) -> bool:
        """Merge segments and build the prefetch's HNSW graph; True if anything changed."""
        return self._shard.optimize()

    # -- reads ----------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        # Exactness guarantee: when no more pages match than the prefetch would keep, a
        # prefetch could only lose pages (HNSW is approximate), so skip it and score all of
        # them with exact MaxSim. The count is one cheap call over payload indexes.
        if self.count(flt) <= self.prefetch_limit:
            return self.search_exact(query, k, flt)
        return self._query(query, k, flt, prefetch=True)

    def search_exact(self, query: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        return self._query(query, k, flt, prefetch=False)

    def _query(
        self, query: np.ndarray, k: int, flt: SearchFilter | None, prefetch: bool
    ) -> list[Hit]:
        q = schema.check_rows(query, "query")
        if k < 1:
            return []
        # Qdrant scores a float16 multivector with the query rounded to float16 too (Edge does;
        # qdrant-client's local mode does not): rounding here makes every backend agree.
        q = schema.storage_rows(q)
        where = _filter(flt)
        prefetches = None
        if prefetch:
            first = Query.Nearest(pool_query(q), using=schema.MEAN)  # type: ignore[arg-type]
            limit = max(self.prefetch_limit, k)
            prefetches = [Prefetch(limit=limit, query=first, filter=where)]
        request = QueryRequest(
            limit=k,
            query=Query.Nearest(q, using=schema.COLQWEN),  # type: ignore[arg-type]
            prefetches=prefetches,
            filter=where,
            with_payload=PayloadSelector.Exclude(["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in self._shard.query(request)]

    def count(self, flt: SearchFilter | None = None) -> int:
        return self._shard.count(CountRequest(exact=True, filter=_filter(flt)))

    def page_ids(self, doc_id: str) -> list[int]:
        pages: list[int] = []
        offset = None
        while True:
            request = ScrollRequest(
                offset=offset,
                limit=_SCROLL_PAGE,
                filter=_doc_filter(doc_id),
                with_payload=PayloadSelector.Include(["page"]),
                with_vector=False,
            )
            records, offset = self._shard.scroll(request)
            pages.extend(int((r.payload or {})["page"]) for r in records)
            if offset is None:
                return sorted(pages)

    def page_vectors(self, doc_id: str, page: int) -> np.ndarray | None:
        # retrieve() needs with_payload although the stubs mark it optional (qdrant-edge 0.9).
        found = self._shard.retrieve([schema.point_id(doc_id, page)], False, [schema.COLQWEN])
        if not found or not isinstance(found[0].vector, dict):
            return None
        return np.asarray(found[0].vector[schema.COLQWEN], dtype=np.float32)

    def bytes_on_disk(self) -> int:
        return schema.dir_size(self.path)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shard.close()

    def __enter__(self) -> EdgeIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _filter(flt: SearchFilter | None) -> Filter | None:
    conditions = schema.filter_conditions(flt)
    if not conditions:
        return None
    return Filter(must=[FieldCondition(key, match=MatchAny(values)) for key, values in conditions])


def _doc_filter(doc_id: str) -> Filter:
    return Filter(must=[FieldCondition("doc_id", match=MatchAny([doc_id]))])
