"""Which exceptions are a user's to fix (their message says how), for the API and the UI."""

from __future__ import annotations


def user_error_status(exc: BaseException) -> int | None:
    """The HTTP status for an error a user or operator can fix; None for a bug."""
    from ingest.diskspace import DiskFullError
    from rag.heatmap import HeatmapError
    from rag.index.base import IndexMismatchError, IndexUnavailableError
    from rag.models.generator import GenerationError
    from rag.models.loading import ModelLoadError
    from rag.service import PageRAGError

    if isinstance(exc, PageRAGError | HeatmapError):
        return 400
    if isinstance(exc, GenerationError):
        return 422  # these pages cannot be shown to the model (or it ran out of memory)
    if isinstance(exc, DiskFullError):
        return 507  # Insufficient Storage: the message names the data directory and the need
    if isinstance(exc, ModelLoadError | IndexMismatchError | IndexUnavailableError):
        return 503  # the server is not set up right; the message names the setting
    return None
