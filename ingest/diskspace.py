"""Free-space checks: stop writing while the data directory can still take what is in flight.

Qdrant Edge keeps its WAL and vectors in memory-mapped, sparsely preallocated files (a fresh
shard: 140 MB apparent, 0.1 MB allocated; two 32 MB WAL segments, 32 MB chunks per vector).
A write into a hole of such a file needs a new block, and on a full disk the kernel answers
with SIGBUS: the process dies with no message. So nothing may write to the index unless the
disk has room for it; the checks here run first and raise an error that says what to do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rag.index.base import IndexUnavailableError

MB = 1 << 20

# PAGERAG_DISK_RESERVE_MB's default. Measured with Qdrant Edge 0.9 (tests/ingest/
# test_disk_full.py): opening a shard allocates nothing (with Memory.Cold, rag/index/edge.py);
# what a batch may touch is one WAL segment (32 MB, filled as updates arrive) plus the batch
# itself (at the default 144 dpi and 768 visual tokens about 1.5 MB a page: 0.2 MB of float16
# vectors, their WAL copy, the page image) with the pages rendered ahead of it (2 batches) and
# SQLite's WAL. 32 MB + 32 MB of headroom covers that with a wide margin. Optimising needs
# about twice the index on top (see `optimize_needs`).
DEFAULT_RESERVE_MB = 64


class DiskFullError(IndexUnavailableError):
    """Too little free disk to write safely; nothing stored so far is lost."""

    http_status = 507  # Insufficient Storage: the message names the data directory and the need


def free_bytes(path: Path) -> int:
    """Free bytes (for unprivileged users) on the filesystem holding `path` or its nearest
    existing parent."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


RESUME = (
    "what is already stored is kept, and the next `pagerag ingest` completes the documents "
    "that were stopped"
)


def require_free(
    path: Path,
    reserve_mb: int,
    *,
    what: str = "ingestion",
    extra_bytes: int = 0,
    then: str = RESUME,
) -> None:
    """Raise `DiskFullError` unless `path`'s filesystem has `reserve_mb` MB (plus
    `extra_bytes`) free; `then` ends the message (what happens to the work)."""
    free = free_bytes(path)
    needed = reserve_mb * MB + extra_bytes
    if free >= needed:
        return
    raise DiskFullError(
        f"only {free // MB} MB free in {path}; {what} needs at least "
        f"{-(-needed // MB)} MB free (PAGERAG_DISK_RESERVE_MB={reserve_mb}). Free some space, "
        f"or move PAGERAG_DATA_DIR to a larger disk; {then}"
    )


def optimize_needs(index_bytes: int) -> int:
    """Free bytes an optimisation may allocate before it releases the old segments: measured
    1.42x the allocated index (119 MB grew to a 288 MB peak), and Qdrant's own check asks for
    only 1.2x, so with 150 MB free that index died of SIGBUS mid-optimise. Twice the index."""
    return 2 * index_bytes
