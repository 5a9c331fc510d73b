"""What both Qdrant adapters store: point ids, vector names, payload fields and filters.

Everything here is backend-neutral (plain Python and numpy); `core.py` builds the queries,
filters and points of both backends from it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag.types import Hit, PageEmbedding, PageRecord, SearchFilter

# Fixed forever: changing it would give every page a new id and break idempotent re-ingestion.
NAMESPACE = uuid.UUID("944471db-b43b-4c30-a808-6809f0deb56c")

DIM = 128  # ColQwen2's projection size
COLQWEN = "colqwen"  # full multivector: MaxSim, no HNSW (exact rerank only)
CLUSTERS = "clusters"  # ~12 token-cluster centroids (pooling.pool_clusters): MaxSim,
# with HNSW: the prefetch that picks the pages for the exact rerank

# Search parameters, chosen in docs/BENCHMARKS.md: pages the prefetch hands to the exact MaxSim
# rerank (Settings.prefetch_limit), and the HNSW graph of the clusters (fixed at creation).
PREFETCH_LIMIT = 200
# HNSW search breadth. Greedy search stops early in the graph of the pooled multivectors
# (probably because pages share blank-paper clusters, so neighbours score alike): a breadth above
# the limit buys back most of the recall the graph loses, for ~10 ms at 10k pages and ~50 ms
# at 100k (recall@10 0.950 -> 0.974 and 0.920 -> 0.966 with 200 pages reranked).
HNSW_EF = 1024
# The graph's degree and build breadth. 32 / 200 rather than Qdrant's 16 / 100: at 100k pages
# the 16 / 100 graph's 200 candidates held 0.962 of the exact top 10 where the clusters, scored
# without a graph, hold 0.990; 32 / 200 holds 0.970 at a like p50, for ~25% more optimise time
# (docs/BENCHMARKS.md "Denser graphs"). Edge adopts a changed graph when it loads an index and
# builds it on the next optimise, so an existing index needs no rebuild.
HNSW_M = 32
HNSW_EF_CONSTRUCT = 200

# The dense vectors, each a MaxSim multivector of DIM-wide unit rows (dot product) stored as
# `VectorStorage` says: name -> degree of its HNSW graph (m=0: no graph, the vector is only
# scored exactly, in the rerank and exact search; the clusters' graph serves the prefetch).
VECTOR_HNSW_M = {COLQWEN: 0, CLUSTERS: HNSW_M}


@dataclass(frozen=True)
class VectorStorage:
    """How Qdrant keeps one multivector. `datatype` is the primary storage: float16, or
    TurboQuant codes of 8 or 4 bits a value *instead of* the floats ("turbo8", "turbo4": only
    the codes are stored; Qdrant scores the float query against the decoded codes).
    `quantization` adds compressed codes *beside* the primary storage (more disk, less RAM
    to search them): "int8" (scalar), "binary" (1 bit, query in 8 bits), "binary2" (2 bits),
    "tq4" (TurboQuant 4 bits); searches score the codes and rescore the best with the
    primary values (`Storage.oversampling`)."""

    datatype: Literal["float16", "turbo8", "turbo4"] = "float16"
    quantization: Literal["int8", "binary", "binary2", "tq4"] | None = None


@dataclass(frozen=True)
class Storage:
    """A `PAGERAG_VECTOR_STORAGE` choice: the full multivector's and the pooled vectors'."""

    full: VectorStorage
    pooled: VectorStorage = VectorStorage()
    # With quantization: candidates scored on the codes per result rescored with the primary
    # values (Qdrant's QuantizationSearchParams.oversampling; None: Qdrant's default, 1).
    oversampling: float | None = None


# Measured in docs/BENCHMARKS.md ("Vector storage"); the names are PAGERAG_VECTOR_STORAGE values
# and enter the index metadata (an index is searched with the storage it was built with).
STORAGES: dict[str, Storage] = {
    "float16": Storage(VectorStorage("float16")),
    "turbo8": Storage(VectorStorage("turbo8")),
    "turbo8-pooled8": Storage(VectorStorage("turbo8"), VectorStorage("turbo8")),
    "turbo8-pooled4": Storage(VectorStorage("turbo8"), VectorStorage("turbo4")),
    "turbo8-pooled-int8": Storage(VectorStorage("turbo8"), VectorStorage("float16", "int8")),
    "turbo4": Storage(VectorStorage("turbo4")),
    "int8": Storage(VectorStorage("float16", "int8"), oversampling=2.0),
    "binary": Storage(VectorStorage("float16", "binary"), oversampling=4.0),
    "binary2": Storage(VectorStorage("float16", "binary2"), oversampling=4.0),
    "tq4": Storage(VectorStorage("float16", "tq4"), oversampling=2.0),
}
DEFAULT_STORAGE = "turbo8"
# The index metadata key that records the storage (rag/service.py `index_meta`); an index
# made before the choice existed has none and stores float16.
STORAGE_META_KEY = "vector_storage"
LEGACY_STORAGE = "float16"


def storage(name: str) -> Storage:
    try:
        return STORAGES[name]
    except KeyError:
        raise ValueError(
            f"unknown vector storage {name!r}; choose one of {', '.join(STORAGES)} "
            "(PAGERAG_VECTOR_STORAGE)"
        ) from None


def vector_storages(name: str) -> dict[str, VectorStorage]:
    """Dense vector name -> its `VectorStorage` under the storage choice `name`."""
    chosen = storage(name)
    return {COLQWEN: chosen.full, CLUSTERS: chosen.pooled}


# Payload indexes: field -> "keyword" | "integer".
PAYLOAD_INDEXES = {
    "doc_id": "keyword",
    "source": "keyword",
    "paths": "keyword",
    "tags": "keyword",
    "page": "integer",
}

# (payload key, values): a point matches when the key holds any of the values. A filter is a
# list of these, all of which must hold; each adapter builds its own condition objects from it.
Condition = tuple[str, list[str]]


def point_id(doc_id: str, page: int) -> str:
    """Deterministic id of one page, so re-ingesting the same file overwrites its points."""
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}:{page}"))


def normalize_path(path: str) -> str:
    """Whole path components joined by "/": "./a//b/" -> "a/b", "a\\b" -> "a/b"."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(part for part in parts if part not in ("", "."))


def path_prefixes(sources: Iterable[str]) -> list[str]:
    """Every ancestor of every source, as whole components: "a/b/c.pdf" -> a, a/b, a/b/c.pdf.

    Stored as the `paths` keyword list, so a plain keyword match implements a source-prefix
    filter ("rep" never matches "reports/x.pdf", "reports" does) with a payload index.
    """
    out: list[str] = []
    for source in sources:
        parts = normalize_path(source).split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix and prefix not in out:
                out.append(prefix)
    return out


def all_sources(source: str, sources: Iterable[str]) -> list[str]:
    """`sources` with `source` first and no duplicates (a record may leave `sources` empty)."""
    return list(dict.fromkeys([source, *sources]))


def source_payload(source: str, sources: Iterable[str]) -> dict[str, Any]:
    """The payload fields that change when a document is seen under other paths."""
    every = all_sources(source, sources)
    return {"source": source, "sources": every, "paths": path_prefixes(every)}


def record_to_payload(record: PageRecord) -> dict[str, Any]:
    return {
        "doc_id": record.doc_id,
        "page": record.page,
        "pages": record.pages,
        "title": record.title,
        "image": record.image,
        "width": record.width,
        "height": record.height,
        "grid": list(record.grid),
        "image_offset": record.image_offset,
        "text": record.text,
        "text_origin": record.text_origin,
        "tags": list(record.tags),
        "ingested_at": record.ingested_at,
        **source_payload(record.source, record.sources),
        # Only on token-pooled pages (PAGERAG_POOL_FACTOR > 1), so other payloads stay as they were.
        **({"patch_map": record.patch_map} if record.patch_map else {}),
    }


def payload_to_record(payload: dict[str, Any]) -> PageRecord:
    return PageRecord(
        doc_id=payload["doc_id"],
        page=int(payload["page"]),
        pages=int(payload["pages"]),
        source=payload["source"],
        title=payload.get("title", ""),
        image=payload.get("image", ""),
        width=int(payload.get("width", 0)),
        height=int(payload.get("height", 0)),
        grid=_grid(payload),
        image_offset=int(payload.get("image_offset", 0)),
        text=payload.get("text", ""),
        tags=tuple(payload.get("tags", ())),
        sources=tuple(payload.get("sources", ())),
        ingested_at=payload.get("ingested_at", ""),
        text_origin=payload.get("text_origin", "pdf"),
        patch_map=payload.get("patch_map", ""),
    )


def payload_to_hit(payload: dict[str, Any], score: float) -> Hit:
    return Hit(
        doc_id=payload["doc_id"],
        source=payload["source"],
        page=int(payload["page"]),
        score=float(score),
        image=payload.get("image", ""),
        title=payload.get("title", ""),
        text=payload.get("text", ""),
        grid=_grid(payload),
        image_offset=int(payload.get("image_offset", 0)),
        text_origin=payload.get("text_origin", "pdf"),
        patch_map=payload.get("patch_map", ""),
    )


def _grid(payload: dict[str, Any]) -> tuple[int, int]:
    rows, cols = payload.get("grid") or (0, 0)
    return int(rows), int(cols)


def filter_conditions(filters: SearchFilter | None) -> list[Condition]:
    """SearchFilter -> conditions that must all hold (empty list: no restriction)."""
    if filters is None:
        return []
    conditions: list[Condition] = []
    if filters.doc_ids:
        conditions.append(("doc_id", list(filters.doc_ids)))
    prefix = normalize_path(filters.source_prefix or "")
    if prefix:
        conditions.append(("paths", [prefix]))
    if filters.tags:
        conditions.append(("tags", list(filters.tags)))
    return conditions


def storage_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows holding exactly the float16 values Qdrant stores.

    Both backends get the rounded values, so qdrant-client's local mode (which ignores the
    float16 datatype) scores the same numbers as Qdrant Edge and a real server.
    """
    return np.ascontiguousarray(vectors, dtype=np.float16).astype(np.float32)


def check_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """The multivector as float32 (n, DIM), or a ValueError that says what is wrong."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] != DIM:
        raise ValueError(f"{what}: expected a (n_tokens, {DIM}) multivector, got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: the multivector holds NaN or infinite values")
    return vectors


def check_batch(records: Sequence[PageRecord], embeddings: Sequence[PageEmbedding | None]) -> None:
    if len(records) != len(embeddings):
        raise ValueError(f"{len(records)} records but {len(embeddings)} embeddings")
    ids = [(r.doc_id, r.page) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("the same (doc_id, page) appears twice in one upsert")


def dir_size(path: Path) -> int:
    """Bytes allocated on disk to every file below `path` (files that vanish meanwhile, as
    segments do, count 0). Allocated, not apparent, size: Qdrant preallocates its mmapped files
    sparsely, and their apparent size overstates a small index several times (seen: 4x)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, name))
                # st_blocks counts 512-byte units where the platform has it (not on Windows).
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total
