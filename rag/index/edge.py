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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdrant_edge import (
    BinaryQuantizationConfig,
    BinaryQuantizationEncoding,
    BinaryQuantizationQueryEncoding,
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
    QuantizationSearchParams,
    Query,
    QueryRequest,
    ScalarQuantizationConfig,
    ScalarType,
    ScrollRequest,
    SearchParams,
    SparseVector,
    TurboQuantBitSize,
    TurboQuantQuantizationConfig,
    UpdateOperation,
    VectorStorageDatatype,
)

from rag.index import core, schema
from rag.index.base import IndexMismatchError, IndexUnavailableError
from rag.index.text import TEXT

log = logging.getLogger(__name__)
# Cold, like the vectors (see `edge_config`): with the default placement every open pre-reads
# each index's preallocated files (a 4 MB page file, a 1 MB tracker each), which on tmpfs
# allocates them all (measured: 26 MB for our 5 indexes) and on a full one is a SIGBUS.
_FIELD_TYPES: dict[str, Callable[[], Any]] = {
    "keyword": lambda: KeywordIndexParams(memory=Memory.Cold),
    "integer": lambda: IntegerIndexParams(memory=Memory.Cold),
}


_DATATYPES = {
    "float16": VectorStorageDatatype.Float16,
    "turbo8": VectorStorageDatatype.Turbo8,
    "turbo4": VectorStorageDatatype.Turbo4,  # type: ignore[attr-defined]  # missing in the 0.9 stubs
}


def _quantization(kind: str | None) -> Any:
    """The quantized codes Qdrant keeps beside the primary storage (schema.VectorStorage)."""
    if kind is None:
        return None
    if kind == "int8":
        return ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99)
    if kind == "binary":
        return BinaryQuantizationConfig(
            encoding=BinaryQuantizationEncoding.OneBit,
            query_encoding=BinaryQuantizationQueryEncoding.Scalar8Bits,
        )
    if kind == "binary2":
        return BinaryQuantizationConfig(
            encoding=BinaryQuantizationEncoding.TwoBits,
            query_encoding=BinaryQuantizationQueryEncoding.Scalar8Bits,
        )
    if kind == "tq4":
        return TurboQuantQuantizationConfig(bits=TurboQuantBitSize.Bits4)
    raise ValueError(f"unknown quantization {kind!r}")


def _memory(kept: schema.VectorStorage, cached_codes: bool) -> Memory:
    """Cold (see `edge_config`), except TurboQuant codes where `cached_codes`: Edge reads
    those cold through its own reader on every search, not through the page cache (measured at
    10k pages, turbo8: p50 291 ms Cold, 81 ms Cached). Cached populates them at open (10k pages:
    1.1 s against 0.3); an index larger than RAM stays correct, its pages evicted and read
    again as any mapping's. Not on tmpfs (`_reads_allocate`): populating there allocates the
    files' holes, and a full one kills the process with SIGBUS (tests/ingest/test_disk_full)."""
    return Memory.Cached if cached_codes and kept.datatype.startswith("turbo") else Memory.Cold


def _reads_allocate(path: Path) -> bool:
    """Whether reading a file's holes under `path` allocates them (tmpfs, ramfs: memory)."""
    best, fstype = "", ""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype in ("tmpfs", "ramfs")


def edge_config(storage: str = schema.DEFAULT_STORAGE, cached_codes: bool = True) -> EdgeConfig:
    # Memory.Cold everywhere: Edge then maps its files without `populate()`-ing them on open.
    # With the default (Cached vectors, Pinned sparse index) a shard's open reads every page
    # of each appendable segment's sparse, preallocated 32 MB chunk files; on tmpfs that read
    # allocates those pages (measured: opening a 20-page index grew it from 15 to 146 MB), and
    # on a full disk it dies of SIGBUS before any error can be raised. The kernel's page cache
    # still keeps what searches touch, so only the first queries after a start read from disk
    # (TurboQuant codes are the exception, `_memory`). A shard created before this keeps
    # Cached storage in its segments (the segment files say so); new segments follow this.
    # `storage`: a schema.STORAGES name, how each multivector is kept; `cached_codes`: see
    # `_memory`.
    kept = schema.vector_storages(storage)
    return EdgeConfig(
        vectors={
            name: EdgeVectorParams(
                size=schema.DIM,
                distance=Distance.Dot,  # unit rows (schema.VECTOR_HNSW_M)
                multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
                datatype=_DATATYPES[kept[name].datatype],
                quantization_config=_quantization(kept[name].quantization),
                memory=_memory(kept[name], cached_codes),
                hnsw_config=HnswIndexConfig(
                    m=m, ef_construct=schema.HNSW_EF_CONSTRUCT, full_scan_threshold=10_000
                ),
            )
            for name, m in schema.VECTOR_HNSW_M.items()
        },
        # BM25 over the page text (rag/index/text.py); Qdrant applies the IDF at query time.
        sparse_vectors={TEXT: EdgeSparseVectorParams(modifier=Modifier.Idf, memory=Memory.Cold)},
        payload_memory=Memory.Cold,
    )


class EdgeIndex(core.QdrantIndex):
    """`PageIndex` on a Qdrant Edge shard in `path` (created on first use).

    The queries, filters and points come from `core.QdrantIndex`; this class adds the shard's
    calls, its disk-space care and `optimize()`, which builds the HNSW graph of the pooled
    vectors (Edge runs no background optimizer). One process at a time: a second open of the
    same directory fails with a clear error.
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
        storage: str | None = None,
    ):
        """`prefetch_limit` pages, found by the cluster HNSW (searched with `hnsw_ef`; None:
        Qdrant's default, never below the limit), get the exact MaxSim rerank. See `search`.
        `disk_reserve_mb`: free disk a new index needs before it is created (see `_open`).
        `storage`: how the vectors are kept (schema.STORAGES), fixed when the index is made;
        opening an index made with another storage is an `IndexMismatchError`; None: the
        existing index's own, schema.DEFAULT_STORAGE for a new one."""
        if min(prefetch_limit, batch_size, 1 if hnsw_ef is None else hnsw_ef) < 1:
            raise ValueError("prefetch_limit, hnsw_ef and batch_size must be at least 1")
        if storage is not None:
            schema.storage(storage)  # a ValueError naming the choices
        self.path = Path(path).expanduser()
        self.prefetch_limit = prefetch_limit
        self.hnsw_ef = hnsw_ef
        self.batch_size = batch_size
        self.storage = storage or schema.DEFAULT_STORAGE
        self._cached_codes = not _reads_allocate(self.path)
        self._meta_path = self.path / "meta.json"
        shard_dir = self.path / "shard"
        self._check_storage(shard_dir, chosen=storage is not None)
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

    def _check_storage(self, shard_dir: Path, chosen: bool) -> None:
        """Take the storage of an existing shard unless one was `chosen`; refuse, before Edge
        loads it, a shard whose vectors are kept another way than the chosen (Edge would load
        it anyway, and new segments would mix two layouts)."""
        built = _stored_storage(shard_dir)
        if built is None or built == self.storage:
            return
        if not chosen and built in schema.STORAGES:
            self.storage = built
            return
        raise IndexMismatchError(
            f"The index at {self.path} keeps its page vectors as {built!r}, but "
            f"PAGERAG_VECTOR_STORAGE is {self.storage!r}. Set PAGERAG_VECTOR_STORAGE="
            f"{built} (or unset it) to use it, or re-index: point PAGERAG_DATA_DIR at a new "
            "location and run `pagerag ingest` again, or run `pagerag reset` to delete this "
            "index first."
        )

    def _config(self) -> EdgeConfig:
        return edge_config(self.storage, self._cached_codes)

    def _materialise(self) -> None:
        """Close and load the shard again, now, while there is room (see `_open`): the first
        load of a new appendable segment reads its payload indexes' preallocated files whole
        whatever their placement, which on tmpfs allocates them (measured: 26 MB for our 5
        indexes). Done here, that load cannot be the one that meets a full disk later."""
        self._shard.close()
        self._shard = EdgeShard.load(str(self.path / "shard"), self._config())

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
            return EdgeShard.create(str(shard_dir), self._config())
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
        return EdgeShard.load(str(shard_dir), self._config())

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

    def bytes_on_disk(self) -> int:
        return schema.dir_size(self.path)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shard.close()

    # -- the client calls (core.QdrantIndex) ----------------------------------------------

    def _run(self, stage: core.Stage) -> list[tuple[dict[str, Any], float]]:
        request = QueryRequest(
            limit=stage.limit,
            query=_query(stage),
            prefetches=_prefetches(stage),
            filter=_filter(stage.where),
            params=_params(stage),
            with_payload=PayloadSelector.Exclude(core.HIDDEN),
        )
        return [(p.payload or {}, p.score) for p in self._shard.query(request)]

    def _count(self, at: core.Where | None) -> int:
        return self._shard.count(CountRequest(exact=True, filter=_filter(at)))

    def _scroll(self, at: core.Where, fields: list[str], offset: Any) -> core.ScrollPage:
        request = ScrollRequest(
            offset=offset,
            limit=core.SCROLL_PAGE,
            filter=_must(at),
            with_payload=PayloadSelector.Include(fields),
            with_vector=False,
        )
        records, offset = self._shard.scroll(request)
        return [r.payload or {} for r in records], offset

    def _retrieve(
        self, pid: str, *, payload: bool, vector: str | None
    ) -> tuple[dict[str, Any], Any] | None:
        # retrieve() needs with_payload although the stubs mark it optional (qdrant-edge 0.9).
        found = self._shard.retrieve([pid], payload, [vector] if vector else False)
        return (found[0].payload or {}, found[0].vector) if found else None

    def _write(self, points: list[core.PagePoint]) -> None:
        # The stub's Vector union does not list a dict mixing dense rows and a SparseVector,
        # which Point accepts (the contract suite stores exactly that).
        batch = [Point(p.id, p.vectors, p.payload) for p in points]  # type: ignore[arg-type]
        for start in range(0, len(batch), self.batch_size):
            self._shard.update(
                UpdateOperation.upsert_points(batch[start : start + self.batch_size])
            )

    def _set_payload(self, payload: dict[str, Any], target: list[str] | core.Where) -> None:
        if isinstance(target, core.Where):
            self._shard.update(UpdateOperation.set_payload_by_filter(_must(target), payload))
        else:
            # List[PointId] is invariant, so list[str] does not match although each id is one.
            self._shard.update(UpdateOperation.set_payload(target, payload))  # type: ignore[arg-type]

    def _delete(self, at: core.Where) -> None:
        self._shard.update(UpdateOperation.delete_points_by_filter(_must(at)))

    def _set_text_vector(self, pid: str, sparse: SparseVector | None) -> None:
        if sparse is None:
            self._shard.update(UpdateOperation.delete_vectors([pid], [TEXT]))
        else:
            point = PointVectors(pid, {TEXT: sparse})
            self._shard.update(UpdateOperation.update_vectors([point]))


def _stored_storage(shard_dir: Path) -> str | None:
    """The schema.STORAGES name the shard's own config (edge_config.json) describes, a
    description of an unknown layout, or None without a readable config (Edge's load says
    what is wrong then). An index from before the choice existed reads as "float16"."""
    try:
        vectors = json.loads((shard_dir / "edge_config.json").read_text("utf-8"))["vectors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

    def kind(codes: dict[str, Any] | None) -> str | None:
        if not codes:
            return None
        if "scalar" in codes:
            return "int8"
        if "binary" in codes:
            return "binary2" if codes["binary"].get("encoding") == "two_bits" else "binary"
        return "tq4" if "turbo" in codes else next(iter(codes))

    found = {
        name: (params.get("datatype", "float32"), kind(params.get("quantization_config")))
        for name, params in vectors.items()
    }
    for name in schema.STORAGES:
        wanted = schema.vector_storages(name)
        if all(found.get(v) == (k.datatype, k.quantization) for v, k in wanted.items()):
            return name
    return ", ".join(f"{v}: {d}" + (f"+{q}" if q else "") for v, (d, q) in sorted(found.items()))


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


# -- core.Stage / core.Where -> qdrant_edge objects ---------------------------------------


def _query(stage: core.Stage) -> Any:
    if isinstance(stage.query, core.Nearest):
        return Query.Nearest(stage.query.vector, using=stage.query.using)
    return Fusion.Rrf(k=stage.query.k, weights=stage.query.weights)


def _prefetches(stage: core.Stage) -> list[Prefetch] | None:
    stages = [
        Prefetch(
            s.limit,
            query=_query(s),
            prefetches=_prefetches(s),
            params=_params(s),
            filter=_filter(s.where),
        )
        for s in stage.prefetch
    ]
    return stages or None


def _params(stage: core.Stage) -> SearchParams | None:
    if not stage.hnsw_ef and stage.rescore is None:
        return None
    quantization = None
    if stage.rescore is not None:
        quantization = QuantizationSearchParams(
            rescore=True, oversampling=stage.rescore.oversampling
        )
    return SearchParams(hnsw_ef=stage.hnsw_ef, quantization=quantization)


def _must(at: core.Where) -> Filter:
    def match(conditions: tuple[schema.Condition, ...]) -> list[Any] | None:
        return [FieldCondition(key, match=MatchAny(values)) for key, values in conditions] or None

    return Filter(must=match(at.must), must_not=match(at.must_not))


def _filter(at: core.Where | None) -> Filter | None:
    return None if at is None else _must(at)
