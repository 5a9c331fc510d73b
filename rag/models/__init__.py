"""Model wrappers, imported lazily: importing transformers takes seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.models.loading import ModelLoadError
    from rag.models.retriever import EmbeddingError, Retriever

__all__ = ["EmbeddingError", "ModelLoadError", "Retriever"]


def __getattr__(name: str) -> Any:
    if name == "ModelLoadError":
        from rag.models.loading import ModelLoadError

        return ModelLoadError
    if name in ("Retriever", "EmbeddingError"):
        from rag.models import retriever

        return getattr(retriever, name)
    raise AttributeError(f"module 'rag.models' has no attribute {name!r}")
