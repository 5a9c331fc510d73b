"""Streams of text that end in a result: iterate for the chunks as they are written, then read
the result (simonw/llm's `Response`). The generator's `Stream` (the model's text, then
`Generated`) and the service's `AnswerStream` (the answer's text, then the `Answer`) are both
one, so the CLI, the API and the UI read an answer the same way, without type checks.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Generic, TypeVar

from rag.types import Answer

R = TypeVar("R")


class TextStream(Generic[R]):
    """Text chunks from `chunks`, a generator that returns the result when the text ends.

    `result` is None until then. `close()` (or dropping the stream) stops early: the
    generator's `finally` clauses run at once, so whatever it holds (a generation thread, the
    model lock) is let go when the reader goes away.
    """

    def __init__(self, chunks: Generator[str, None, R]) -> None:
        self.result: R | None = None
        self._chunks = chunks

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._chunks)
        except StopIteration as end:
            if self.result is None:  # a finished generator stops again with no value
                self.result = end.value
            raise

    def close(self) -> None:
        self._chunks.close()

    def finish(self) -> R:
        """The result, after reading whatever text is left."""
        for _ in self:
            pass
        if self.result is None:
            raise RuntimeError("the stream was closed before it ended")
        return self.result


class AnswerStream(TextStream[Answer]):
    """What `PageRAG.ask_stream` returns: the answer's text as it is written, then `answer`."""

    @property
    def answer(self) -> Answer:
        """The whole `Answer` (the rest of the text is read first if the loop stopped early)."""
        return self.finish()
