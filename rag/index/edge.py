"""`EdgeIndex`: the embedded default, Qdrant's engine in-process through `qdrant_edge.EdgeShard`.

Layout of the index directory:
    <index_dir>/shard/      the Edge shard (WAL, segments, edge_config.json)
    <index_dir>/meta.json   index metadata (model, dim, render settings, schema version)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    Fusion,
    HnswIndexConfig,
    IntegerIndexParams,
    KeywordIndexParams,
    MatchAny,
    Memory,
    Modifier,
    MultiVectorComparator,
    MultiVectorConfig,
    PayloadSelector,
    Point,
    PointVectors,
    Prefetch,
    Query,
    QueryRequest,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
    VectorStorageDatatype,
)

from rag.index import schema
from rag.index.base import IndexMismatchError, IndexUnavailableError
from rag.index.pooling import pool_clusters
from rag.index.text import RRF_K, TEXT, embed_page_text, embed_query_text
from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

log = logging.getLogger(__name__)

_SCROLL_PAGE = 1024
# Cold, like the vectors (see `edge_config`): with the default placement every open pre-reads
# each index's preallocated files (a 4 MB page file, a 1 MB tracker each), which on tmpfs
# allocates them all (measured: 26 MB for our 5 indexes) and on a full one is a SIGBUS.
_FIELD_TYPES: dict[str, Callable[[], Any]] = {
    "keyword": lambda: KeywordIndexParams(memory=Memory.Cold),
    "integer": lambda: IntegerIndexParams(memory=Memory.Cold),
}


def edge_config() -> EdgeConfig:
    # Memory.Cold everywhere: Edge then maps its files without `populate()`-ing them on open.
    # With the default (Cached vectors, Pinned sparse index) a shard's open reads every page
    # of each appendable segment's sparse, preallocated 32 MB chunk files; on tmpfs that read
    # allocates those pages (measured: opening a 20-page index grew it from 15 to 146 MB), and
    # on a full disk it dies of SIGBUS before any error can be raised. The kernel's page cache
    # still keeps what searches touch, so only the first queries after a start read from disk.
    # A shard created before this keeps Cached storage in its segments (the segment files say
    # so); its new segments follow this config.
    return EdgeConfig(
        vectors={
            schema.COLQWEN: EdgeVectorParams(
                size=schema.DIM,
                distance=Distance.Dot,  # ColQwen2 rows are unit vectors
                multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                datatype=VectorStorageDatatype.Float16,
                memory=Memory.Cold,
                # m=0: no graph; this vector is only scored exactly (rerank / exact search).
                hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            ),
            schema.CLUSTERS: EdgeVectorParams(
                size=schema.DIM,
                distance=Distance.Dot,  # pool_clusters gives unit vectors
                multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                datatype=VectorStorageDatatype.Float16,
                memory=Memory.Cold,
                # The prefetch's HNSW graph, built over MaxSim between cluster multivectors.
                hnsw_config=HnswIndexConfig(
                    m=schema.HNSW_M,
                    ef_construct=schema.HNSW_EF_CONSTRUCT,
                    full_scan_threshold=10_000,
                ),
            ),
        },
        # BM25 over the page text (rag/index/text.py); Qdrant applies the IDF at query time.
        sparse_vectors={TEXT: EdgeSparseVectorParams(modifier=Modifier.Idf, memory=Memory.Cold)},
        payload_memory=Memory.Cold,
    )


class EdgeIndex:
    """`PageIndex` on a Qdrant Edge shard in `path` (created on first use).

    Extra over the protocol: `optimize()` builds the HNSW graph of the pooled vectors (Edge runs
    no background optimizer); call it after a large ingest. Search is correct without it.
    One process at a time: a second open of the same directory fails with a clear error.
    """

    backend = "qdrant-edge"

    def __init__(
        self,
        path: str | Path,
        *,
        prefetch_limit: int = schema.PREFETCH_LIMIT,
        hnsw_ef: int | None = schema.HNSW_EF,
        batch_size: int = 64,
        disk_reserve_mb: int = 0,
    ):
        """`prefetch_limit` pages, found by the cluster HNSW (searched with `hnsw_ef`; None:
        Qdrant's default, never below the limit), get the exact MaxSim rerank. See `search`.
        `disk_reserve_mb`: free disk a new index needs before it is created (see `_open`)."""
        if min(prefetch_limit, batch_size, 1 if hnsw_ef is None else hnsw_ef) < 1:
            raise ValueError("prefetch_limit, hnsw_ef and batch_size must be at least 1")
        self.path = Path(path).expanduser()
        self.prefetch_limit = prefetch_limit
        self.hnsw_ef = hnsw_ef
        self.batch_size = batch_size
        self._meta_path = self.path / "meta.json"
        shard_dir = self.path / "shard"
        try:
            self._shard = self._open(shard_dir, disk_reserve_mb)
        except IndexUnavailableError:
            raise
        except Exception as exc:  # qdrant_edge raises bare Exception
            if "incompatible" in str(exc).lower():
                # Stored vectors differ from ours (an index from before the BM25 text vector):
                # the same error as a metadata mismatch, so the CLI and API say how to re-index.
                raise IndexMismatchError(
                    f"The Qdrant Edge index at {shard_dir} was built by another PageRAG version "
                    f"({exc}). Re-index: point PAGERAG_DATA_DIR at a new location and run "
                    "`pagerag ingest` again, or run `pagerag reset` to delete this index first."
                ) from exc
            if "WouldBlock" in str(exc):
                hint = (
                    "another PageRAG process (a running server?) has it open; stop it or use a "
                    "Qdrant server (PAGERAG_QDRANT_URL) for shared access"
                )
            elif "no space left" in str(exc).lower():
                hint = (
                    "the disk is full (Edge rewrites its config file on every open); free some "
                    "space or move PAGERAG_DATA_DIR to a larger disk; nothing stored is lost"
                )
            else:
                hint = (
                    "if it was built by another PageRAG version, re-index into a new "
                    "PAGERAG_DATA_DIR or run `pagerag reset`"
                )
            raise IndexUnavailableError(
                f"Cannot open the Qdrant Edge index at {shard_dir}: {exc}. Hint: {hint}."
            ) from exc
        self._closed = False
        _keep_ballast(self.path / _BALLAST, disk_reserve_mb)
        indexed = self._shard.info().payload_schema
        missing = [name for name in schema.PAYLOAD_INDEXES if name not in indexed]
        for name in missing:
            kind = schema.PAYLOAD_INDEXES[name]
            self._shard.update(UpdateOperation.create_field_index(name, _FIELD_TYPES[kind]()))
        if missing:
            self._materialise()

    def _materialise(self) -> None:
        """Close and load the shard again, now, while there is room (see `_open`): the first
        load of a new appendable segment reads its payload indexes' preallocated files whole
        whatever their placement, which on tmpfs allocates them (measured: 26 MB for our 5
        indexes). Done here, that load cannot be the one that meets a full disk later."""
        self._shard.close()
        self._shard = EdgeShard.load(str(self.path / "shard"), edge_config())

    def _open(self, shard_dir: Path, disk_reserve_mb: int) -> EdgeShard:
        """Load the shard, or create it; never let Edge die of SIGBUS on a full disk.

        Edge maps its files with holes in them (preallocated, sparse) and a write into a hole
        on a full disk is a SIGBUS, which no code can catch. Loading writes only where an
        interrupted run left WAL entries to replay, or (shards made before `edge_config` set
        Memory.Cold) where it pre-reads cached storage, which allocates the holes on tmpfs.
        It can never allocate more than the holes: with that much free it loads here at
        once. With less, a throw-away process loads it first; when that one is killed by a
        signal, the error says how much space to free instead of this process dying.
        """
        from ingest.diskspace import DiskFullError, free_bytes, require_free

        ballast = self.path / _BALLAST
        if ballast.exists() and free_bytes(self.path) < _BALLAST_BYTES:
            # The disk filled up behind our back: give back our own reserve so Edge can
            # rewrite its config file and the index opens (reads need nothing more).
            log.warning("the disk of %s is full; releasing its %s", self.path, ballast.name)
            ballast.unlink()
        exists = shard_dir.is_dir() and any(shard_dir.iterdir())
        if not exists:
            # Creating writes the first pages of every file: never on an (almost) full disk.
            require_free(self.path, disk_reserve_mb, what="creating the index")
            self.path.mkdir(parents=True, exist_ok=True)
            return EdgeShard.create(str(shard_dir), edge_config())
        holes = _sparse_bytes(shard_dir)
        free = free_bytes(shard_dir)
        if free < holes and (died := _probe_load(shard_dir)):
            raise DiskFullError(
                f"Cannot open the Qdrant Edge index at {shard_dir}: only {free >> 20} MB free "
                f"there, and loading it needs to allocate part of its {holes >> 20} MB of "
                f"preallocated files (a trial load died of {died}). Free some space, or move "
                "PAGERAG_DATA_DIR to a larger disk; nothing stored is lost."
            )
        # Loading with our config makes Edge check the stored vectors against it.
        return EdgeShard.load(str(shard_dir), edge_config())

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
            # Lists, not numpy arrays: Edge reads an array element by element, 2x slower
            # than converting it with .tolist() first (measured: 9 ms against 4.6 ms a page).
            vectors = {
                schema.COLQWEN: schema.storage_rows(rows).tolist(),
                schema.CLUSTERS: pool_clusters(emb).tolist(),
            }
            text = embed_page_text(record.text)
            if text is not None:  # a page without a text layer has no text vector
                vectors[TEXT] = text  # type: ignore[assignment]
            pid = schema.point_id(record.doc_id, record.page)
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
        """Merge segments and build the prefetch's HNSW graph; True if anything changed.

        Qdrant refuses to start when free disk is short of about twice the index (it writes the
        merged segments before deleting the old ones: 37 GiB for 100k pages). Nothing is lost
        then and search stays exact-correct, only slower, so that is a warning, not an error:
        the next optimize() (after the next ingest) tries again.
        """
        try:
            changed = self._shard.optimize()
            if changed:  # optimising starts a new appendable segment
                self._materialise()
            return changed
        except Exception as exc:  # qdrant_edge raises bare Exception
            if "not enough space" not in str(exc).lower():
                raise
            log.warning(
                "The index at %s was not optimised: %s. Searches work but are slower until "
                "there is free disk of about twice the index size and `pagerag ingest` runs "
                "again.",
                self.path,
                exc,
            )
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
        prefetches = None
        if prefetch:
            prefetches = self._pooled_stages(q, flt, where, max(self.prefetch_limit, k))
        request = QueryRequest(
            limit=k,
            query=Query.Nearest(q, using=schema.COLQWEN),  # type: ignore[arg-type]
            prefetches=prefetches,
            filter=where,
            with_payload=PayloadSelector.Exclude(["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in self._shard.query(request)]

    def _pooled_stages(
        self, q: np.ndarray, flt: SearchFilter | None, where: Filter | None, limit: int
    ) -> list[Prefetch] | None:
        """The prefetch in front of the exact rerank, keeping `limit` pages; None for none.

        Exactness guarantee: when no more than `limit` pages match, a prefetch could only lose
        pages (HNSW is approximate), so there is none and every page gets exact MaxSim. The
        count is one cheap call over the payload indexes.
        """
        if self.count(flt) <= limit:
            return None
        pooled = Query.Nearest(q, using=schema.CLUSTERS)  # type: ignore[arg-type]
        params = SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None
        return [Prefetch(limit, query=pooled, params=params, filter=where)]

    # -- text and hybrid search (BM25 channel: rag/index/text.py) ---------------------------

    def search_text(self, text: str, k: int, flt: SearchFilter | None = None) -> list[Hit]:
        sparse = embed_query_text(text)
        if sparse is None or k < 1:
            return []
        request = QueryRequest(
            limit=k,
            query=Query.Nearest(sparse, using=TEXT),
            filter=_filter(flt),
            with_payload=PayloadSelector.Exclude(["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in self._shard.query(request)]

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
        visual = Query.Nearest(q, using=schema.COLQWEN)  # type: ignore[arg-type]
        channels = [Prefetch(limit=depth, query=visual, prefetches=pooled, filter=where)]
        sparse = embed_query_text(text)
        if sparse is not None:  # a query of stop words only has no text channel
            bm25 = Query.Nearest(sparse, using=TEXT)
            channels.append(Prefetch(limit=depth, query=bm25, filter=where))
        # Pages without text are absent from the text channel only: they still rank visually.
        weights = [1.0, text_weight][: len(channels)] if text_weight != 1.0 else None
        request = QueryRequest(
            limit=k,
            query=Fusion.Rrf(k=RRF_K, weights=weights),  # type: ignore[arg-type]
            prefetches=channels,
            filter=where,
            with_payload=PayloadSelector.Exclude(["paths"]),
        )
        return [schema.payload_to_hit(p.payload or {}, p.score) for p in self._shard.query(request)]

    def set_page_text(self, doc_id: str, page: int, text: str) -> None:
        """Replace a page's text and its BM25 vector (text from elsewhere, e.g. a dataset's OCR)."""
        pid = schema.point_id(doc_id, page)
        self._shard.update(UpdateOperation.set_payload([pid], {"text": text}))
        sparse = embed_page_text(text)
        if sparse is None:
            self._shard.update(UpdateOperation.delete_vectors([pid], [TEXT]))
        else:
            point = PointVectors(pid, {TEXT: sparse})  # type: ignore[arg-type]
            self._shard.update(UpdateOperation.update_vectors([point]))

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

    def page(self, doc_id: str, page: int) -> Hit | None:
        found = self._shard.retrieve([schema.point_id(doc_id, page)], True, False)
        return schema.payload_to_hit(found[0].payload or {}, 0.0) if found else None

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


# Edge rewrites edge_config.json (atomically, one page) on every open, so on a disk that is
# 100% full (filled by something else) not even a read-only `pagerag info` could open the index.
# A small file of our own, fully allocated while there is room, is given back in that case.
_BALLAST = ".space-reserve"
_BALLAST_BYTES = 1 << 20


def _keep_ballast(path: Path, reserve_mb: int) -> None:
    """(Re)create the ballast file while the disk has room for it (it counts as part of the
    free-space reserve; none when the reserve is off)."""
    if path.exists() or not reserve_mb:
        return
    from ingest.diskspace import free_bytes

    if free_bytes(path.parent) < 4 * _BALLAST_BYTES:
        return
    try:
        with path.open("wb") as f:
            os.posix_fallocate(f.fileno(), 0, _BALLAST_BYTES)  # real blocks, not a hole
    except (OSError, AttributeError):  # no room after all, or no posix_fallocate here
        path.unlink(missing_ok=True)


def _sparse_bytes(path: Path) -> int:
    """Bytes of holes in the files below `path`: apparent size beyond the allocated blocks."""
    holes = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            holes += max(0, st.st_size - getattr(st, "st_blocks", st.st_size // 512) * 512)
    return holes


_PROBE = "import sys; from qdrant_edge import EdgeShard; EdgeShard.load(sys.argv[1]).close()"


def _probe_load(shard_dir: Path) -> str | None:
    """Load the shard in a child process: the signal that killed it ("SIGBUS"), or None when
    it loaded (or failed with an error, which loading here reports properly)."""
    import signal

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(shard_dir)], capture_output=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode >= 0:
        return None
    try:
        return signal.Signals(-proc.returncode).name
    except ValueError:
        return f"signal {-proc.returncode}"


def _filter(flt: SearchFilter | None) -> Filter | None:
    conditions = schema.filter_conditions(flt)
    excluded = list(flt.exclude_doc_ids) if flt is not None else []
    if not conditions and not excluded:
        return None
    return Filter(
        must=[FieldCondition(key, match=MatchAny(values)) for key, values in conditions] or None,
        must_not=[FieldCondition("doc_id", match=MatchAny(excluded))] if excluded else None,
    )


def _doc_filter(doc_id: str) -> Filter:
    return Filter(must=[FieldCondition("doc_id", match=MatchAny([doc_id]))])
