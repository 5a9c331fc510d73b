"""A stand-in for the generator that writes a fixed answer, for tests of what the UI and the
API do with a given answer text (the tiny random model writes noise)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rag.models.generator import Generated


class ScriptedGenerator:
    """Answers every question with `chunks`, streamed one by one."""

    def __init__(self, chunks: Sequence[str]) -> None:
        self.chunks = list(chunks)

    def stream(self, question: str, pages: Sequence[Any], history: Sequence[Any] = ()) -> Any:
        return ScriptedStream(self.chunks)


class ScriptedStream:
    def __init__(self, chunks: list[str]) -> None:
        self.result: Generated | None = None
        self._chunks = self._iterate(chunks)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    def _iterate(self, chunks: list[str]) -> Iterator[str]:
        yield from chunks
        self.result = Generated(
            text="".join(chunks),
            prompt_tokens=10,
            completion_tokens=len(chunks),
            image_tokens=4,
            prepare_seconds=0.0,
            first_token_seconds=0.0,
            seconds=0.0,
        )
