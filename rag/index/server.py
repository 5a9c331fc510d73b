"""`ServerIndex`: a Qdrant server or cluster through qdrant-client (same schema as `EdgeIndex`).

`ServerIndex.local(...)` runs the same code on qdrant-client's local mode (in memory or in a
directory), which stands in for a server in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from rag.index import schema
from rag.index.base import IndexUnavailableError
from rag.index.pooling import pool_mean, pool_query
from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

_SCROLL_PAGE = 1024


def vectors_config() -> dict[str, models.VectorParams]:
    return {
        schema.COLQWEN: models.VectorParams(
            size=schema.DIM,
            distance=models.Distance.DOT,  # ColQwen2 rows are unit vectors
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
            datatype=models.Datatype.FLOAT16,
            # m=0: no graph; this vector is only scored exactly (rerank / exact search).
            hnsw_config=models.HnswConfigDiff(m=0),
        ),
        schema.MEAN: models.VectorParams(size=schema.DIM, distance=models.Distance.COSINE),
    }


class ServerIndex:
    """`PageIndex` on one collection of a Qdrant server (or of qdrant-client's local mode).

    Index metadata lives in the collection's own `metadata` (Qdrant server 1.16 or newer),
    so it travels with snapshots and cannot be separated from the vectors it describes.
    """

    backend = "qdrant-server"

    def __init__(
        self,
        client: QdrantClient,
        collection: str = "pagerag",
        *,
        prefetch_limit: int = 200,
        shard_number: int = 1,
        replication_factor: int = 1,
        batch_size: int = 16,
        local_path: str | Path | None = None,
    ):
        """Use `client` (closed by `close()`); create `collection` if it does not exist.

        `batch_size` pages per upsert request: a ~750-row page is ~1 MB of JSON, so 16 pages
        stay well below the server's default 32 MB request limit. `local_path` is only used
        by `bytes_on_disk()`.
        """
        if prefetch_limit < 1 or batch_size < 1:
            raise ValueError("prefetch_limit and batch_size must be at least 1")
        self.client = client
        self.collection = collection
        self.prefetch_limit = prefetch_limit
        self.batch_size = batch_size
        self._local_path = Path(local_path) if local_path is not None else None
        try:
            exists = client.collection_exists(collection)
        except Exception as exc:  # httpx/grpc errors differ by transport; all mean "unreachable"
            raise IndexUnavailableError(
                f"Cannot reach the Qdrant server ({type(exc).__name__}: {exc}). Check "
                "PAGERAG_QDRANT_URL and PAGERAG_QDRANT_API_KEY, or unset PAGERAG_QDRANT_URL to "
                "use the embedded Qdrant Edge index."
            ) from exc
        if exists:
            self._check_vectors()
        else:
            self._create(shard_number, replication_factor)

    @classmethod
    def connect(
        cls, url: str, api_key: str | None = None, collection: str = "pagerag", **kwargs: Any
    ) -> ServerIndex:
        """A Qdrant server at `url`; `kwargs` go to `ServerIndex(...)`."""
        client = QdrantClient(url=url, api_key=api_key, timeout=60)
        return cls(client, collection, **kwargs)

    @classmethod
    def local(
        cls, path: str | Path | None = None, collection: str = "pagerag", **kwargs: Any
    ) -> ServerIndex:
        """qdrant-client's local mode: in memory when `path` is None, else in that directory."""
        if path is None:
            return cls(QdrantClient(location=":memory:"), collection, **kwargs)
        client = QdrantClient(path=str(path))
        return cls(client, collection, local_path=path, **kwargs)

    def _create(self, shard_number: int, replication_factor: int) -> None:
        self.client.create_collection(
            self.collection,
            vectors_config=vectors_config(),
            shard_number=shard_number,
            replication_factor=replication_factor,
        )
        # Local mode ignores payload indexes (it warns); servers need them for fast filters.
        if self._is_local():
            return
        field_type = {
            "keyword": models.PayloadSchemaType.KEYWORD,
            "integer": models.PayloadSchemaType.INTEGER,
        }
        for name, kind in schema.PAYLOAD_INDEXES.items():
            self.client.create_payload_index(self.collection, name, field_type[kind], wait=True)

    def _check_vectors(self) -> None:
        params = self.client.get_collection(self.collection).config.params.vectors
        names = set(params) if isinstance(params, dict) else set()
        missing = {schema.COLQWEN, schema.MEAN} - names
        if missing:
            raise IndexUnavailableError(
                f"Qdrant collection {self.collection!r} exists but has no vector(s) "
                f"{sorted(missing)}: it was not made by PageRAG. Set PAGERAG_QDRANT_COLLECTION "
                "to another name."
            )

    def _is_local(self) -> bool:
        # qdrant-client keeps its local-mode engine in `_client`; no public flag exists.
        return type(self.client._client).__name__ == "QdrantLocal"

    # -- metadata -------------------------------------------------------------------------

    def read_meta(self) -> dict[str, Any] | None:
        stored = self.client.get_collection(self.collection).config.metadata
        # Keys set to None are deleted ones (see write_meta).
        meta = {k: v for k, v in (stored or {}).items() if v is not None}
        return meta or None

    def write_meta(self, meta: dict[str, Any]) -> None:
        # Qdrant merges new metadata into the old; nulling the keys that are gone makes this a
        # replacement, as in EdgeIndex.
        gone = dict.fromkeys(self.read_meta() or {})
        self.client.update_collection(self.collection, metadata={**gone, **meta})
        if meta and not self.read_meta():
            raise IndexUnavailableError(
                "This Qdrant server does not keep collection metadata; PageRAG needs Qdrant "
                "1.16 or newer."
            )

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, records: Sequence[PageRecord], embeddings: Sequence[PageEmbedding]) -> None:
        schema.check_batch(records, embeddings)
        points = []
        for record, emb in zip(records, embeddings, strict=True):
            rows = schema.check_rows(emb.vectors, f"{record.source} page {record.page}")
            vectors = {
                schema.COLQWEN: schema.storage_rows(rows).tolist(),
                schema.MEAN: pool_mean(emb).tolist(),
            }
            points.append(
                models.PointStruct(
                    id=schema.point_id(record.doc_id, record.page),
                    vector=vectors,
                    payload=schema.record_to_payload(record),
                )
            )
        for start in range(0, len(points), self.batch_size):
            batch = points[start : start + self.batch_size]
            self.client.upsert(self.collection, points=batch, wait=True)

    def set_sources(self, doc_id: str, source: str, sources: Sequence[str]) -> None:
        self.client.set_payload(
            self.collection,
            payload=schema.source_payload(source, sources),
            points=_doc_filter(doc_id),
            wait=True,
        )

    def delete_document(self, doc_id: str) -> None:
        self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=_doc_filter(doc_id)),
            wait=True,
        )

    def flush(self) -> None:
        """Nothing to do: every write waits for the server's WAL (`wait=True`)."""

    def optimize(self) -> bool:
        """Nothing to do: the server's optimizers run in the background."""
        return False

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
        first = None
        if prefetch:
            first = models.Prefetch(
                query=pool_query(q).tolist(),
                using=schema.MEAN,
                limit=max(self.prefetch_limit, k),
                filter=where,
            )
        result = self.client.query_points(
            self.collection,
            query=q.tolist(),
            using=schema.COLQWEN,
            prefetch=first,
            query_filter=where,
            limit=k,
            with_payload=models.PayloadSelectorExclude(exclude=["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in result.points]

    def count(self, flt: SearchFilter | None = None) -> int:
        return self.client.count(self.collection, count_filter=_filter(flt), exact=True).count

    def page_ids(self, doc_id: str) -> list[int]:
        pages: list[int] = []
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=_doc_filter(doc_id),
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=["page"],
                with_vectors=False,
            )
            pages.extend(int((r.payload or {})["page"]) for r in records)
            if offset is None:
                return sorted(pages)

    def page_vectors(self, doc_id: str, page: int) -> np.ndarray | None:
        found = self.client.retrieve(
            self.collection, [schema.point_id(doc_id, page)], with_vectors=[schema.COLQWEN]
        )
        if not found or not isinstance(found[0].vector, dict):
            return None
        return np.asarray(found[0].vector[schema.COLQWEN], dtype=np.float32)

    def bytes_on_disk(self) -> int:
        """Size of the local-mode directory; 0 in memory or on a remote server (unknown)."""
        return 0 if self._local_path is None else schema.dir_size(self._local_path)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ServerIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _filter(flt: SearchFilter | None) -> models.Filter | None:
    conditions = schema.filter_conditions(flt)
    if not conditions:
        return None
    return models.Filter(
        must=[
            models.FieldCondition(key=key, match=models.MatchAny(any=values))
            for key, values in conditions
        ]
    )


def _doc_filter(doc_id: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))]
    )
