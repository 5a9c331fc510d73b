"""One error base: every error a user can fix carries its HTTP status and CLI exit status, and
each surface (API, CLI, UI) maps it in one place."""

from __future__ import annotations

import pytest

from ingest.diskspace import DiskFullError
from rag.errors import UserError, user_error_status
from rag.eval.datasets import DatasetError
from rag.heatmap import HeatmapError, PageNotStored
from rag.ids import IdError
from rag.index.base import IndexMismatchError, IndexUnavailableError
from rag.models.generator import GenerationError
from rag.models.loading import ModelLoadError
from rag.server.modelqueue import QueueFull, QueueTimeout
from rag.service import DeletionQueued, DocumentPending, PageRAGError
from ui.actions import problem

CASES = [
    (PageRAGError("x"), 400, 2),  # bad usage: an empty question, an unknown id
    (DocumentPending("x"), 409, 3),
    (DeletionQueued("ab" * 32, 1.0), 400, 3),
    (HeatmapError("x"), 400, 3),
    (PageNotStored("x"), 404, 3),
    (GenerationError("x"), 422, 3),
    (ModelLoadError("x"), 503, 3),
    (IndexMismatchError("x"), 503, 3),
    (IndexUnavailableError("x"), 503, 3),
    (DiskFullError("x"), 507, 3),
    (QueueFull(5, 16), 429, 3),
    (QueueTimeout(2.0), 504, 3),
    (IdError("x"), 422, 2),
    (DatasetError("x"), 400, 2),
]


@pytest.mark.parametrize(("exc", "http", "exit_code"), CASES, ids=lambda c: type(c).__name__)
def test_each_user_error_carries_its_statuses(exc: UserError, http: int, exit_code: int) -> None:
    assert isinstance(exc, UserError)
    assert (user_error_status(exc), exc.exit_code) == (http, exit_code)
    assert problem(exc) == str(exc)  # the UI shows the message


def test_a_bug_is_not_a_user_error() -> None:
    for exc in (RuntimeError("boom"), ValueError("x"), KeyError("k")):
        assert user_error_status(exc) is None and problem(exc) is None


def test_a_busy_answer_says_when_to_come_back() -> None:
    assert QueueFull(7, 3).headers() == {"Retry-After": "7"}
    assert PageRAGError("x").headers() == {}
