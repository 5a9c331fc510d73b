"""Model wrappers, imported lazily: importing transformers takes seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.models.loading import ModelLoadError
    from rag.models.protocols import AnswerWriter
    from rag.models.retriever import EmbeddingError, Retriever

__all__ = ["EmbeddingError", "ModelLoadError", "Retriever", "load_answerer"]


def load_answerer(settings: Settings) -> AnswerWriter:
    """The answerer the settings choose: an OpenAI-compatible server (PAGERAG_ANSWER_URL),
    which needs no torch here, or the local Qwen2-VL."""
    if settings.answer_url:
        from rag.models.remote import RemoteAnswerer

        return RemoteAnswerer.load(settings)
    from rag.models.generator import Generator

    return Generator.load(settings)


def __getattr__(name: str) -> Any:
    if name == "ModelLoadError":
        from rag.models.loading import ModelLoadError

        return ModelLoadError
    if name in ("Retriever", "EmbeddingError"):
        from rag.models import retriever

        return getattr(retriever, name)
    raise AttributeError(f"module 'rag.models' has no attribute {name!r}")
