"""`ServerIndex`: a Qdrant server or cluster through qdrant-client (same schema as `EdgeIndex`).

`ServerIndex.local(...)` runs the same code on qdrant-client's local mode (in memory or in a
directory), which stands in for a server in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_edge import SparseVector

from rag.index import schema
from rag.index.base import IndexMismatchError, IndexUnavailableError, permanent_error
from rag.index.pooling import pool_clusters
from rag.index.text import RRF_K, TEXT, embed_page_text, embed_query_text
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
        schema.CLUSTERS: models.VectorParams(
            size=schema.DIM,
            distance=models.Distance.DOT,  # pool_clusters gives unit vectors
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
            datatype=models.Datatype.FLOAT16,
            # The prefetch's HNSW graph, built over MaxSim between cluster multivectors.
            hnsw_config=models.HnswConfigDiff(
                m=schema.HNSW_M, ef_construct=schema.HNSW_EF_CONSTRUCT
            ),
        ),
    }


def sparse_vectors_config() -> dict[str, models.SparseVectorParams]:
    # BM25 over the page text (rag/index/text.py); Qdrant applies the IDF at query time.
    return {TEXT: models.SparseVectorParams(modifier=models.Modifier.IDF)}


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
        prefetch_limit: int = schema.PREFETCH_LIMIT,
        hnsw_ef: int | None = schema.HNSW_EF,
        shard_number: int = 1,
        replication_factor: int = 1,
        batch_size: int = 16,
        upload_workers: int = 4,
        local_path: str | Path | None = None,
    ):
        """Use `client` (closed by `close()`); create `collection` if it does not exist.

        Search as in `EdgeIndex` (`prefetch_limit`, `hnsw_ef`).
        `batch_size` pages per upsert request: a ~750-row page is ~1 MB of JSON, so 16 pages
        stay well below the server's default 32 MB request limit; `upload_workers` requests
        are in flight at once (a cluster spreads them over its shards). `local_path` is only
        used by `bytes_on_disk()`.
        """
        if min(prefetch_limit, batch_size, upload_workers, 1 if hnsw_ef is None else hnsw_ef) < 1:
            raise ValueError(
                "prefetch_limit, hnsw_ef, batch_size and upload_workers must be at least 1"
            )
        self.client = client
        self.collection = collection
        self.prefetch_limit = prefetch_limit
        self.hnsw_ef = hnsw_ef
        self.batch_size = batch_size
        self.upload_workers = upload_workers
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
        cls,
        url: str,
        api_key: str | None = None,
        collection: str = "pagerag",
        *,
        prefer_grpc: bool = False,
        **kwargs: Any,
    ) -> ServerIndex:
        """A Qdrant server at `url`; `kwargs` go to `ServerIndex(...)`.

        `prefer_grpc`: talk gRPC (port 6334) instead of REST: a page's multivector travels as
        ~0.4 MB of protobuf instead of ~1 MB of JSON.
        """
        client = QdrantClient(url=url, api_key=api_key, timeout=60, prefer_grpc=prefer_grpc)
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
            sparse_vectors_config=sparse_vectors_config(),
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
        if schema.COLQWEN not in names:
            raise IndexUnavailableError(
                f"Qdrant collection {self.collection!r} exists but has no {schema.COLQWEN!r} "
                "vector: it was not made by PageRAG. Set PAGERAG_QDRANT_COLLECTION to another "
                "name."
            )
        if schema.CLUSTERS not in names:
            # Made by a PageRAG from before the cluster prefetch; a server cannot add one.
            raise IndexMismatchError(
                f"Qdrant collection {self.collection!r} was built by another PageRAG version "
                f"(it has no {schema.CLUSTERS!r} vector). Re-index: set PAGERAG_QDRANT_COLLECTION "
                "to a new name and run `pagerag ingest` again, or delete the collection first."
            )
        sparse = self.client.get_collection(self.collection).config.params.sparse_vectors or {}
        if TEXT not in sparse:
            # Made by a PageRAG from before the BM25 text vector; a server cannot add one.
            raise IndexMismatchError(
                f"Qdrant collection {self.collection!r} was built by another PageRAG version "
                f"(it has no {TEXT!r} text vector). Re-index: set PAGERAG_QDRANT_COLLECTION to "
                "a new name and run `pagerag ingest` again, or delete the collection first."
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
            vectors: dict[str, Any] = {
                schema.COLQWEN: schema.storage_rows(rows).tolist(),
                schema.CLUSTERS: pool_clusters(emb).tolist(),
            }
            text = _sparse(embed_page_text(record.text))
            if text is not None:  # a page without a text layer has no text vector
                vectors[TEXT] = text
            points.append(
                models.PointStruct(
                    id=schema.point_id(record.doc_id, record.page),
                    vector=vectors,
                    payload=schema.record_to_payload(record),
                )
            )
        batches = [points[i : i + self.batch_size] for i in range(0, len(points), self.batch_size)]
        # qdrant-client's local mode is not thread-safe (and gains nothing from threads).
        workers = 1 if self._is_local() else self.upload_workers
        # No retries here: the ingestion runner retries the whole upsert (and reports it), one
        # layer, so an outage costs UPSERT_ATTEMPTS sends per batch, not attempts x retries.
        upload_batches(self._send, batches, workers, retries=0)

    def _send(self, batch: list[models.PointStruct]) -> None:
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
        """Cluster-vector HNSW prefetch, then exact MaxSim (`_pooled_stages`); exact whenever no
        more than `prefetch_limit` pages match `flt`."""
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
            first = self._pooled_stages(q, flt, where, max(self.prefetch_limit, k))
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

    def _pooled_stages(
        self, q: np.ndarray, flt: SearchFilter | None, where: models.Filter | None, limit: int
    ) -> models.Prefetch | None:
        """The prefetch in front of the exact rerank, keeping `limit` pages; None for none.

        As `EdgeIndex._pooled_stages`: no prefetch (exact search) when no more than `limit`
        pages match `flt`, otherwise the cluster HNSW.
        """
        if self.count(flt) <= limit:
            return None
        return models.Prefetch(
            query=q.tolist(),
            using=schema.CLUSTERS,
            params=models.SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None,
            limit=limit,
            filter=where,
        )

    # -- text and hybrid search (BM25 channel: rag/index/text.py) ---------------------------

    def search_text(self, text: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        sparse = _sparse(embed_query_text(text))
        if sparse is None or k < 1:
            return []
        result = self.client.query_points(
            self.collection,
            query=sparse,
            using=TEXT,
            query_filter=_filter(flt),
            limit=k,
            with_payload=models.PayloadSelectorExclude(exclude=["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in result.points]

    def search_hybrid(
        self,
        query: np.ndarray,
        text: str,
        k: int,
        flt: SearchFilter | None = None,
        *,
        text_weight: float = 1.0,
    ) -> list[Hit]:
        q = schema.storage_rows(schema.check_rows(query, "query"))  # float16 as in `_query`
        if k < 1:
            return []
        where = _filter(flt)
        # Each channel hands the fusion its best `depth` pages. The visual channel scores every
        # pooled candidate with MaxSim anyway, so passing them all on costs nothing; the same
        # exactness rule as `search` applies (no pooled stage when few pages match).
        depth = max(self.prefetch_limit, k)
        pooled = self._pooled_stages(q, flt, where, depth)
        channels = [
            models.Prefetch(
                query=q.tolist(), using=schema.COLQWEN, prefetch=pooled, limit=depth, filter=where
            )
        ]
        sparse = _sparse(embed_query_text(text))
        if sparse is not None:  # a query of stop words only has no text channel
            channels.append(models.Prefetch(query=sparse, using=TEXT, limit=depth, filter=where))
        # Pages without text are absent from the text channel only: they still rank visually.
        # RRF with k needs Qdrant 1.16 (as does the collection metadata), weights 1.17: equal
        # weights send none.
        weights = [1.0, text_weight][: len(channels)] if text_weight != 1.0 else None
        result = self.client.query_points(
            self.collection,
            prefetch=channels,
            query=models.RrfQuery(rrf=models.Rrf(k=RRF_K, weights=weights)),
            query_filter=where,
            limit=k,
            with_payload=models.PayloadSelectorExclude(exclude=["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in result.points]

    def set_page_text(self, doc_id: str, page: int, text: str) -> None:
        """Replace a page's text and its BM25 vector (text from elsewhere, e.g. a dataset's OCR)."""
        pid = schema.point_id(doc_id, page)
        self.client.set_payload(self.collection, payload={"text": text}, points=[pid], wait=True)
        sparse = _sparse(embed_page_text(text))
        if sparse is None:
            self.client.delete_vectors(self.collection, vectors=[TEXT], points=[pid], wait=True)
        else:
            self.client.update_vectors(
                self.collection,
                points=[models.PointVectors(id=pid, vector={TEXT: sparse})],
                wait=True,
            )

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

    def page(self, doc_id: str, page: int) -> Hit | None:
        found = self.client.retrieve(
            self.collection, [schema.point_id(doc_id, page)], with_payload=True
        )
        return schema.payload_to_hit(found[0].payload or {}, 0.0) if found else None

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
    excluded = list(flt.exclude_doc_ids) if flt is not None else []
    if not conditions and not excluded:
        return None
    return models.Filter(
        must=[
            models.FieldCondition(key=key, match=models.MatchAny(any=values))
            for key, values in conditions
        ]
        or None,
        must_not=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=excluded))]
        if excluded
        else None,
    )


def upload_batches(
    send: Callable[[list[Any]], None],
    batches: Sequence[list[Any]],
    workers: int,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> None:
    """`send` every batch, `workers` at a time, retrying transient failures.

    Retrying is safe because point ids are deterministic: a batch sent twice is stored once.
    A failure that cannot go away by waiting (`permanent_error`) is raised at once; any other
    is retried `retries` times, with exponential backoff, before the first error is raised
    (batches not yet started are then dropped).
    """

    def attempt(batch: list[Any]) -> None:
        for n in range(retries + 1):
            try:
                send(batch)
                return
            except Exception as exc:
                if permanent_error(exc) or n == retries:
                    raise
                time.sleep(backoff_s * 2**n)

    if workers <= 1 or len(batches) <= 1:
        for batch in batches:
            attempt(batch)
        return
    with ThreadPoolExecutor(min(workers, len(batches)), thread_name_prefix="qdrant-up") as pool:
        futures = [pool.submit(attempt, batch) for batch in batches]
        try:
            for future in futures:
                future.result()  # the first error, in batch order
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _sparse(vector: SparseVector | None) -> models.SparseVector | None:
    if vector is None:
        return None
    return models.SparseVector(indices=list(vector.indices), values=list(vector.values))


def _doc_filter(doc_id: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))]
    )
