"""Per-document render budgets (issue 10, item 8): a small file with thousands of pages, or a
bomb in every page, stops at the budget; the pages done so far are indexed and a warning says
which budget cut the document short and what was kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.render import RenderLimits, SkippedPage
from ingest.sandbox import BudgetStop, RenderSandbox, SandboxPage
from rag.config import Settings
from rag.service import PageRAG
from tests import hostile
from tests.ingest.test_page_skips import LETTER, SLOW
from tests.ingesting import ingest_service


def blank_pages_pdf(count: int) -> bytes:
    """`count` empty letter pages sharing one page object body: a few bytes per page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for _ in range(count):
        kids.append(b"%d 0 R" % (len(objects) + 1))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>")
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), count)
    return hostile.raw_pdf(objects)


def _render(box: RenderSandbox, path: Path, out: Path) -> list[object]:
    try:
        return list(box.render(path, "pdf", out))
    finally:
        box.close()


def test_render_seconds_budget_stops_a_many_page_document(tmp_path: Path) -> None:
    path = hostile.write(tmp_path / "blank.pdf", blank_pages_pdf(5000))
    box = RenderSandbox(dpi=36, limits=RenderLimits(max_pages=5000, max_render_seconds=1.0))
    started = time.monotonic()
    events = _render(box, path, tmp_path / "out")
    assert time.monotonic() - started < 4  # the budget, plus starting the worker
    *pages, stop = events
    assert isinstance(stop, BudgetStop)
    assert stop.budget == "PAGERAG_MAX_RENDER_SECONDS_PER_DOCUMENT=1"
    assert 0 < len(pages) < 5000 and all(isinstance(p, SandboxPage) for p in pages)
    assert stop.next_page == len(pages) + 1
    # No image is left for a page that will not be indexed.
    assert len(list((tmp_path / "out").iterdir())) == len(pages)


def test_image_bytes_budget_bounds_what_is_written(tmp_path: Path) -> None:
    path = hostile.write(tmp_path / "blank.pdf", blank_pages_pdf(300))
    budget = 20_000
    box = RenderSandbox(dpi=72, limits=RenderLimits(max_image_bytes=budget))
    *pages, stop = _render(box, path, tmp_path / "out")
    assert isinstance(stop, BudgetStop) and stop.budget.startswith(
        "PAGERAG_MAX_IMAGE_MB_PER_DOCUMENT="
    )
    sizes = [f.stat().st_size for f in (tmp_path / "out").iterdir()]
    assert len(sizes) == len(pages) < 300
    assert budget <= sum(sizes) <= budget + max(sizes)  # over by at most the last page


def test_a_bomb_in_every_page_costs_the_budget_not_pages_times_timeout(tmp_path: Path) -> None:
    path = hostile.write(tmp_path / "bombs.pdf", _all_slow(8))
    box = RenderSandbox(dpi=72, page_timeout=1.0, limits=RenderLimits(max_render_seconds=2.5))
    started = time.monotonic()
    *skipped, stop = _render(box, path, tmp_path / "out")
    assert time.monotonic() - started < 5  # 8 pages x 1 s timeout would be 8 s
    assert [type(s) for s in skipped] == [SkippedPage] * len(skipped) and 1 <= len(skipped) <= 3
    assert all("timed out" in s.reason for s in skipped)  # type: ignore[attr-defined]
    assert isinstance(stop, BudgetStop) and stop.next_page == len(skipped) + 1


def _all_slow(count: int) -> bytes:
    """`count` pages, each as slow to draw as the hanging page of test_page_skips."""
    body = hostile._stream(SLOW * 100)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", body]
    kids = []
    for _ in range(count):
        kids.append(b"%d 0 R" % (len(objects) + 1))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Contents 3 0 R >>" % LETTER)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), count)
    return hostile.raw_pdf(objects)


@pytest.fixture
def make_service(tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever) -> Iterator:
    made: list[PageRAG] = []

    def make(**budgets: float) -> PageRAG:
        made.append(
            ingest_service(
                tmp_path / "data", tiny_colqwen_dir, tiny_retriever, render_dpi=36, **budgets
            )
        )
        return made[-1]

    yield make
    for svc in made:
        svc.close()


@pytest.mark.parametrize(
    ("budget", "setting"),
    [
        ({"max_render_seconds_per_document": 0.5}, "PAGERAG_MAX_RENDER_SECONDS_PER_DOCUMENT=0.5"),
        ({"max_image_mb_per_document": 0.01}, "PAGERAG_MAX_IMAGE_MB_PER_DOCUMENT=0.01"),
    ],
)
def test_a_document_cut_by_a_budget_is_done_with_the_pages_kept(
    make_service, tmp_path: Path, budget: dict[str, float], setting: str
) -> None:
    path = hostile.write(tmp_path / "in" / "blank.pdf", blank_pages_pdf(5000))
    service = make_service(**budget)
    started = time.monotonic()
    report = service.ingest([path])
    assert time.monotonic() - started < 60
    assert report.failed == [] and report.indexed_documents == 1
    [doc] = service.documents()
    assert 0 < doc.pages < 2000
    assert service.index.page_ids(doc.doc_id) == list(range(1, doc.pages + 1))
    assert service.index.count() == doc.pages and service.manifest.pending() == []
    [warning] = report.warnings
    assert warning.warning.startswith(
        f"only the first {doc.pages} of 5000 pages are indexed: the document reached {setting}"
    )
    images = service.library.images.folder(doc.doc_id)
    assert len(list(images.iterdir())) == doc.pages


def test_budgets_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)
    assert defaults.max_render_seconds_per_document == 600
    assert defaults.max_image_mb_per_document == 500
    monkeypatch.setenv("PAGERAG_MAX_RENDER_SECONDS_PER_DOCUMENT", "60")
    monkeypatch.setenv("PAGERAG_MAX_IMAGE_MB_PER_DOCUMENT", "2.5")
    settings = Settings(_env_file=None)
    assert (settings.max_render_seconds_per_document, settings.max_image_mb_per_document) == (
        60,
        2.5,
    )
