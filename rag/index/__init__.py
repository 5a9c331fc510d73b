"""Page index: the `PageIndex` protocol, its Qdrant Edge and Qdrant server adapters, a factory.

`ServerIndex` (qdrant-client, about a second to import) loads on first use, so commands on the
embedded engine never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.index.base import SCHEMA_VERSION, IndexMismatchError, PageIndex, check_meta
from rag.index.edge import EdgeIndex
from rag.index.schema import point_id

if TYPE_CHECKING:
    from rag.index.server import ServerIndex

__all__ = [
    "SCHEMA_VERSION",
    "EdgeIndex",
    "IndexMismatchError",
    "PageIndex",
    "ServerIndex",
    "check_meta",
    "open_index",
    "point_id",
]


def __getattr__(name: str) -> Any:
    # `from rag.index import ServerIndex` still works; it imports qdrant-client only then.
    if name == "ServerIndex":
        from rag.index.server import ServerIndex

        return ServerIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_index(settings: Settings) -> PageIndex:
    """Qdrant Edge in `settings.index_dir`, or the Qdrant server at `settings.qdrant_url`."""
    stages: dict[str, Any] = {
        "prefetch_limit": settings.prefetch_limit,
        "hnsw_ef": settings.hnsw_ef,
        "storage": settings.vector_storage,
    }
    if settings.qdrant_url:
        from rag.index.server import ServerIndex

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerIndex.connect(
            settings.qdrant_url,
            api_key=api_key,
            collection=settings.qdrant_collection,
            prefer_grpc=settings.qdrant_prefer_grpc,
            shard_number=settings.qdrant_shards,
            replication_factor=settings.qdrant_replicas,
            upload_workers=settings.qdrant_upload_workers,
            **stages,
        )
    return EdgeIndex(settings.index_dir, disk_reserve_mb=settings.disk_reserve_mb, **stages)
