"""Streams of text that end in a result: iterate for the chunks as they are written, then read
the result (simonw/llm's `Response`). The generator's `Stream` (the model's text, then
`Generated`) and the service's `AnswerStream` (the answer's text, then the `Answer`) are both
one, so the CLI, the API and the UI read an answer the same way, without type checks.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Generic, TypeVar

from rag.types import Answer, Citation

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
        while not (chunk := self._pull()):  # "" only marks a step before the text (`steps`)
            pass
        return chunk

    def steps(self) -> Iterator[str]:
        """The chunks, and also "" wherever the source marks a step before the text: for an
        `AnswerStream`, retrieval has ended and `retrieved` is filled."""
        while True:
            try:
                yield self._pull()
            except StopIteration:
                return

    def _pull(self) -> str:
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
    """What `PageRAG.ask_stream` returns: the answer's text as it is written, then `answer`.

    `retrieved` is filled with the pages found (none cited yet) as soon as retrieval ends,
    before the model reads them: a reader of `steps()` can show them meanwhile."""

    def __init__(
        self, chunks: Generator[str, None, Answer], retrieved: list[Citation] | None = None
    ) -> None:
        super().__init__(chunks)
        self.retrieved: list[Citation] = [] if retrieved is None else retrieved

    @property
    def answer(self) -> Answer:
        """The whole `Answer` (the rest of the text is read first if the loop stopped early)."""
        return self.finish()
