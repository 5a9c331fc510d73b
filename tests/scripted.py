"""The suite's one stand-in for the generator, for tests of what the service, the UI and the API
do with a given answer (the tiny random model writes noise), of who calls it with what, and of
how answers are paced and serialised."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

from rag.answer import TextStream
from rag.models.protocols import AnswerWriter, Generated
from rag.prompt import Turn


class ScriptedGenerator:
    """An `AnswerWriter` that writes `chunks`, or with `inner` what that writer writes, `delay`
    seconds apart. It records every call and when each answer starts and ends."""

    def __init__(self, *chunks: str, delay: float = 0.0, inner: AnswerWriter | None = None) -> None:
        self.chunks, self.delay, self.inner = chunks, delay, inner
        self.calls: list[tuple[str, list[Any], tuple[Turn, ...]]] = []  # (question, pages, history)
        self.log: list[str] = []  # "start" and "end" of every answer, in order

    def stream(
        self, question: str, pages: Sequence[Any], history: Sequence[Turn] = ()
    ) -> TextStream[Generated]:
        self.calls.append((question, list(pages), tuple(history)))
        inner = self.inner.stream(question, pages, history) if self.inner else None
        return TextStream(self._write(inner))

    def _write(self, inner: TextStream[Generated] | None) -> Generator[str, None, Generated]:
        self.log.append("start")
        try:
            for chunk in self.chunks if inner is None else inner:
                time.sleep(self.delay)
                yield chunk
        finally:
            if inner is not None:
                inner.close()  # a reader that leaves stops the inner generation too
        self.log.append("end")
        if inner is not None:
            return inner.finish()
        return Generated(
            text="".join(self.chunks),
            prompt_tokens=100,
            completion_tokens=len(self.chunks),
            image_tokens=80,
            prepare_seconds=0.01,
            first_token_seconds=0.02,
            seconds=0.05,
        )
