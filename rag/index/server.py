"""`ServerIndex`: a Qdrant server or cluster through qdrant-client (same schema as `EdgeIndex`).

`ServerIndex.local(...)` runs the same code on qdrant-client's local mode (in memory or in a
directory), which stands in for a server in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_edge import SparseVector

from rag.index import core, schema
from rag.index.base import IndexMismatchError, IndexUnavailableError, permanent_error
from rag.index.text import TEXT

_DATATYPES = {
    "float16": models.Datatype.FLOAT16,
    "turbo8": models.Datatype.TURBO8,
    "turbo4": models.Datatype.TURBO4,
}


def _quantization(kind: str | None) -> models.QuantizationConfig | None:
    """The codes kept beside the primary storage (schema.VectorStorage), as in edge.py."""
    if kind is None:
        return None
    if kind == "int8":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99)
        )
    if kind in ("binary", "binary2"):
        encoding = models.BinaryQuantizationEncoding
        return models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(
                encoding=encoding.TWO_BITS if kind == "binary2" else encoding.ONE_BIT,
                query_encoding=models.BinaryQuantizationQueryEncoding.SCALAR8BITS,
            )
        )
    if kind == "tq4":
        return models.TurboQuantization(
            turbo=models.TurboQuantQuantizationConfig(bits=models.TurboQuantBitSize.BITS4)
        )
    raise ValueError(f"unknown quantization {kind!r}")


def vectors_config(storage: str = schema.DEFAULT_STORAGE) -> dict[str, models.VectorParams]:
    """The dense vectors, kept as the schema.STORAGES choice `storage` says. qdrant-client's
    local mode ignores datatype and quantization (it keeps what it is sent: float16 values)."""
    kept = schema.vector_storages(storage)
    return {
        name: models.VectorParams(
            size=schema.DIM,
            distance=models.Distance.DOT,  # unit rows (schema.VECTOR_HNSW_M)
            multivector_config=models.MultiVectorConfig(
                comparator=models.MultiVectorComparator.MAX_SIM
            ),
            datatype=_DATATYPES[kept[name].datatype],
            quantization_config=_quantization(kept[name].quantization),
            hnsw_config=models.HnswConfigDiff(m=m, ef_construct=schema.HNSW_EF_CONSTRUCT),
        )
        for name, m in schema.VECTOR_HNSW_M.items()
    }


def sparse_vectors_config() -> dict[str, models.SparseVectorParams]:
    # BM25 over the page text (rag/index/text.py); Qdrant applies the IDF at query time.
    return {TEXT: models.SparseVectorParams(modifier=models.Modifier.IDF)}


class ServerIndex(core.QdrantIndex):
    """`PageIndex` on one collection of a Qdrant server (or of qdrant-client's local mode).

    The queries, filters and points come from `core.QdrantIndex`; this class adds the calls.

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
        storage: str | None = None,
    ):
        """Use `client` (closed by `close()`); create `collection` if it does not exist.

        Search as in `EdgeIndex` (`prefetch_limit`, `hnsw_ef`).
        `batch_size` pages per upsert request: a ~750-row page is ~1 MB of JSON, so 16 pages
        stay well below the server's default 32 MB request limit; `upload_workers` requests
        are in flight at once (a cluster spreads them over its shards). `local_path` is only
        used by `bytes_on_disk()`. `storage`: how a new collection keeps its vectors
        (schema.STORAGES); the index metadata records it (rag/service.py `index_meta`); None:
        the existing collection's own, schema.DEFAULT_STORAGE for a new one.
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
        if storage is not None:
            schema.storage(storage)  # a ValueError naming the choices
        self.storage = storage or schema.DEFAULT_STORAGE
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
            if storage is None:  # the collection's own (its metadata says; float16 before)
                meta = self.read_meta()
                if meta is not None:
                    self.storage = meta.get(schema.STORAGE_META_KEY, schema.LEGACY_STORAGE)
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
        try:
            self.client.create_collection(
                self.collection,
                vectors_config=vectors_config(self.storage),
                sparse_vectors_config=sparse_vectors_config(),
                shard_number=shard_number,
                replication_factor=replication_factor,
            )
        except Exception as exc:  # transports raise their own types
            if self.storage == "float16" or not permanent_error(exc):  # only a refusal
                raise
            raise IndexUnavailableError(
                f"The Qdrant server did not create collection {self.collection!r} with vector "
                f"storage {self.storage!r} ({type(exc).__name__}: {exc}). Storages other than "
                "float16 need a server that knows them (Qdrant 1.20, as docker/compose.yaml "
                "pins): upgrade it, or set PAGERAG_VECTOR_STORAGE=float16."
            ) from exc
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

    def flush(self) -> None:
        """Nothing to do: every write waits for the server's WAL (`wait=True`)."""

    def optimize(self) -> bool:
        """Nothing to do: the server's optimizers run in the background."""
        return False

    def bytes_on_disk(self) -> int:
        """Size of the local-mode directory; 0 in memory or on a remote server (unknown)."""
        return 0 if self._local_path is None else schema.dir_size(self._local_path)

    def close(self) -> None:
        self.client.close()

    def drop(self) -> None:
        """Delete the collection on the server (a deleted library's)."""
        self.client.delete_collection(self.collection)

    # -- the client calls (core.QdrantIndex) ----------------------------------------------

    def _run(self, stage: core.Stage) -> list[tuple[dict[str, Any], float]]:
        query, using = _query(stage)
        result = self.client.query_points(
            self.collection,
            query=query,
            using=using,
            prefetch=_prefetches(stage),
            query_filter=_filter(stage.where),
            search_params=_params(stage),
            limit=stage.limit,
            with_payload=models.PayloadSelectorExclude(exclude=core.HIDDEN),
        )
        return [(p.payload or {}, p.score) for p in result.points]

    def _count(self, at: core.Where | None) -> int:
        return self.client.count(self.collection, count_filter=_filter(at), exact=True).count

    def _scroll(self, at: core.Where, fields: list[str], offset: Any) -> core.ScrollPage:
        records, offset = self.client.scroll(
            self.collection,
            scroll_filter=_must(at),
            limit=core.SCROLL_PAGE,
            offset=offset,
            with_payload=fields,
            with_vectors=False,
        )
        return [r.payload or {} for r in records], offset

    def _retrieve(
        self, pid: str, *, payload: bool, vector: str | None
    ) -> tuple[dict[str, Any], Any] | None:
        vectors = [vector] if vector else False
        found = self.client.retrieve(
            self.collection, [pid], with_payload=payload, with_vectors=vectors
        )
        return (found[0].payload or {}, found[0].vector) if found else None

    def _write(self, points: list[core.PagePoint]) -> None:
        structs = [
            models.PointStruct(
                id=p.id, vector={k: _vector(v) for k, v in p.vectors.items()}, payload=p.payload
            )
            for p in points
        ]
        size = self.batch_size
        batches = [structs[i : i + size] for i in range(0, len(structs), size)]
        # qdrant-client's local mode is not thread-safe (and gains nothing from threads).
        workers = 1 if self._is_local() else self.upload_workers
        # No retries here: the ingestion runner retries the whole upsert (and reports it), one
        # layer, so an outage costs UPSERT_ATTEMPTS sends per batch, not attempts x retries.
        upload_batches(self._send, batches, workers, retries=0)

    def _send(self, batch: list[models.PointStruct]) -> None:
        self.client.upsert(self.collection, points=batch, wait=True)

    def _set_payload(self, payload: dict[str, Any], target: list[str] | core.Where) -> None:
        points: Any = _must(target) if isinstance(target, core.Where) else target  # ids or filter
        self.client.set_payload(self.collection, payload=payload, points=points, wait=True)

    def _delete(self, at: core.Where) -> None:
        selector = models.FilterSelector(filter=_must(at))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def _set_text_vector(self, pid: str, sparse: SparseVector | None) -> None:
        if sparse is None:
            self.client.delete_vectors(self.collection, vectors=[TEXT], points=[pid], wait=True)
        else:
            point = models.PointVectors(id=pid, vector={TEXT: _vector(sparse)})
            self.client.update_vectors(self.collection, points=[point], wait=True)


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


# -- core.Stage / core.Where -> qdrant-client objects -------------------------------------


def _query(stage: core.Stage) -> tuple[Any, str | None]:
    """The query and the name of the vector it uses."""
    if isinstance(stage.query, core.Nearest):
        return _vector(stage.query.vector), stage.query.using
    return models.RrfQuery(rrf=models.Rrf(k=stage.query.k, weights=stage.query.weights)), None


def _prefetches(stage: core.Stage) -> list[models.Prefetch] | None:
    stages = []
    for s in stage.prefetch:
        query, using = _query(s)
        stages.append(
            models.Prefetch(
                query=query,
                using=using,
                prefetch=_prefetches(s),
                params=_params(s),
                limit=s.limit,
                filter=_filter(s.where),
            )
        )
    return stages or None


def _params(stage: core.Stage) -> models.SearchParams | None:
    if not stage.hnsw_ef and stage.rescore is None:
        return None
    quantization = None
    if stage.rescore is not None:
        quantization = models.QuantizationSearchParams(
            rescore=True, oversampling=stage.rescore.oversampling
        )
    return models.SearchParams(hnsw_ef=stage.hnsw_ef, quantization=quantization)


def _vector(vector: list[list[float]] | SparseVector) -> Any:
    if isinstance(vector, SparseVector):  # qdrant-edge's BM25 vector (rag/index/text.py)
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return vector


def _must(at: core.Where) -> models.Filter:
    def match(conditions: tuple[schema.Condition, ...]) -> list[Any] | None:
        return [
            models.FieldCondition(key=key, match=models.MatchAny(any=values))
            for key, values in conditions
        ] or None

    return models.Filter(must=match(at.must), must_not=match(at.must_not))


def _filter(at: core.Where | None) -> models.Filter | None:
    return None if at is None else _must(at)
