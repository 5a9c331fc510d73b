"""What the service needs of its models, as small protocols: `Retriever` and `Generator` are
the real ones; tests pass in stand-ins (tests/scripted.py). Importing this loads no model code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ingest.runner import PageEmbedder

if TYPE_CHECKING:
    import numpy as np

    from rag.answer import TextStream
    from rag.prompt import Turn
    from rag.types import Hit


class QueryEmbedder(Protocol):
    def embed_query(self, text: str) -> np.ndarray: ...


class PageRetriever(PageEmbedder, QueryEmbedder, Protocol):
    """Embeds pages when they are ingested and questions when they are searched."""


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int  # text and image tokens
    completion_tokens: int  # as generated, the end-of-turn token included
    image_tokens: int  # visual tokens over all pages (bounded by the budget)
    prepare_seconds: float  # opening images, the chat template and the processor
    first_token_seconds: float  # from the call to the first new token (prefill included)
    seconds: float  # the whole call


class AnswerWriter(Protocol):
    def stream(
        self, question: str, pages: Sequence[Hit], history: Sequence[Turn] = ()
    ) -> TextStream[Generated]:
        """Start writing the answer from the pages; iterate the result for the text."""
        ...
