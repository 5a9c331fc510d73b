"""A document with unreadable pages: every page that renders is indexed, each skipped page is
a warning with its reason, and only a document with no renderable page fails (issue 10, 9)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.discover import file_sha256
from ingest.library import Library, PageImages
from ingest.manifest import Manifest
from ingest.runner import IngestRunner
from ingest.sandbox import RenderSandbox
from rag.index import EdgeIndex
from rag.service import PageRAG
from tests import hostile
from tests.ingest.test_runner import FlakyIndex
from tests.ingesting import ingest_service

LETTER = b"[0 0 612 792]"
FONT = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
SLOW = b"".join(
    b"%d %d m %d %d l S\n" % (i % 600, i % 700, i * 7 % 600, i * 3 % 700) for i in range(2000)
)


def pages_pdf(boxes: list[bytes], *, missing: int | None = None, slow: int | None = None) -> bytes:
    """One page per box, page n showing the word `wordN`; page `missing` is a dangling
    reference in the page tree, page `slow` takes PDFium seconds to draw."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for i, box in enumerate(boxes, 1):
        number = len(objects) + 1
        kids.append(b"%d 0 R" % (999 if i == missing else number))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Contents %d 0 R /Resources %s >>"
            % (box, number + 1, FONT)
        )
        content = b"BT /F1 24 Tf 72 700 Td (word%d) Tj ET\n" % i
        objects.append(hostile._stream(content + (SLOW * 100 if i == slow else b"")))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(boxes))
    return hostile.raw_pdf(objects)


@pytest.fixture
def service(tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever) -> Iterator[PageRAG]:
    svc = ingest_service(tmp_path / "data", tiny_colqwen_dir, tiny_retriever, render_timeout_s=1)
    yield svc
    svc.close()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("tiny-page.pdf", pages_pdf([LETTER, b"[0 0 3 3]", LETTER]), "absurd shape"),
        ("sliver.pdf", pages_pdf([LETTER, b"[0 0 14400 3]", LETTER]), "absurd shape"),
        ("missing-kid.pdf", pages_pdf([LETTER] * 3, missing=2), "cannot be loaded"),
        ("hanging-page.pdf", pages_pdf([LETTER] * 3, slow=2), "timed out"),
    ],
)
def test_one_bad_page_is_skipped_and_the_rest_indexed(
    service: PageRAG, tmp_path: Path, name: str, data: bytes, reason: str
) -> None:
    path = hostile.write(tmp_path / "in" / name, data)
    report = service.ingest([path])
    assert report.failed == [] and report.indexed_documents == 1
    [doc] = service.documents()
    assert (doc.source, doc.pages) == (name, 2)  # the pages stored, as /status counts them
    assert service.index.page_ids(doc.doc_id) == [1, 3]
    [warning] = report.warnings
    assert warning.source == name
    assert warning.warning.startswith("page 2 is not indexed: ")
    assert reason in warning.warning
    for page in (1, 3):
        [hit] = service.search(f"word{page}", k=1, mode="text")
        assert (hit.doc_id, hit.page) == (doc.doc_id, page)
    assert service.search("word2", k=1, mode="text") == []
    images = service.library.images.folder(doc.doc_id)
    assert sorted(p.name for p in images.iterdir()) == ["p0001.png", "p0003.png"]
    assert service.manifest.pending() == []
    assert service.ingest([path]).skipped_documents == 1  # done: not rendered again


def test_a_document_with_no_renderable_page_still_fails(service: PageRAG, tmp_path: Path) -> None:
    path = hostile.write(tmp_path / "in" / "all-bad.pdf", pages_pdf([b"[0 0 3 3]"] * 2, missing=2))
    report = service.ingest([path])
    [failure] = report.failed
    assert failure.source == "all-bad.pdf"
    assert "no page of the document could be rendered" in failure.error
    assert "page 1 has an absurd shape" in failure.error
    assert "page 2 cannot be loaded" in failure.error
    assert service.documents() == [] and service.index.count() == 0
    doc_id, _ = file_sha256(path)
    assert not service.library.images.folder(doc_id).exists()


def test_an_interrupted_run_resumes_a_document_with_a_skipped_page(
    tmp_path: Path, tiny_retriever: Any
) -> None:
    """Page 1 is stored, then the store goes down; the next run retries the bad page 2
    (skipped again), stores page 3, and counts the document complete."""
    path = hostile.write(tmp_path / "in" / "doc.pdf", pages_pdf([LETTER, b"[0 0 3 3]", LETTER]))
    edge = EdgeIndex(tmp_path / "index")

    def runner(index: Any) -> IngestRunner:
        library = Library(
            Manifest(tmp_path / "manifest.sqlite3"), index, PageImages(tmp_path / "pages")
        )
        return IngestRunner(
            library,
            lambda: tiny_retriever,
            sandbox=RenderSandbox(dpi=50),
            batch_size=1,
            retry_delay=0.01,
        )

    flaky = FlakyIndex(edge, failures=0)
    original = flaky.upsert

    def fail_after_first_batch(records: Any, embeddings: Any) -> None:
        if flaky.calls >= 1:
            flaky.failures = 100
        original(records, embeddings)

    flaky.upsert = fail_after_first_batch  # type: ignore[method-assign]
    first = runner(flaky).run([path])
    assert first.indexed_documents == 0 and "vector store failed" in first.failed[0].error
    [doc_id] = Manifest(tmp_path / "manifest.sqlite3").pending()
    assert edge.page_ids(doc_id) == [1]
    again = runner(edge).run([path])
    assert (again.indexed_documents, again.indexed_pages, again.failed) == (1, 1, [])
    assert [w.warning[:22] for w in again.warnings] == ["page 2 is not indexed:"]
    assert edge.page_ids(doc_id) == [1, 3]
    manifest = Manifest(tmp_path / "manifest.sqlite3")
    assert manifest.pending() == [] and manifest.documents()[0].pages == 2
