"""Hostile folders and a failing vector store: every bad file gets a reason, nothing stored
is lost, and a later run completes what a fault interrupted."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reportlab.lib.pdfencrypt import StandardEncryption
from reportlab.pdfgen import canvas

from ingest.library import Library, PageImages
from ingest.manifest import Manifest
from ingest.runner import UPSERT_ATTEMPTS, IngestRunner
from ingest.sandbox import RenderSandbox
from rag.index import EdgeIndex
from rag.service import PageRAG
from tests import hostile
from tests.ingesting import ingest_service
from tests.pdfs import make_pdf


def encrypted_pdf(path: Path, user: str, owner: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = canvas.Canvas(str(path), encrypt=StandardEncryption(user, ownerPassword=owner))
    pdf.drawString(72, 700, "secret quarterly figures")
    pdf.showPage()
    pdf.save()
    return path


@pytest.fixture
def service(tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever) -> Iterator[PageRAG]:
    svc = ingest_service(
        tmp_path / "data",
        tiny_colqwen_dir,
        tiny_retriever,
        render_timeout_s=2,
        max_pages_per_document=3,
        image_max_pixels=50_000_000,
    )
    yield svc
    svc.close()


HOSTILE = {
    "zero-pages.pdf": "no pages",
    "page-tree-loop.pdf": "broken page tree",
    "sliver.pdf": "absurd shape",
    "slow.pdf": "timed out",
    "page.html.pdf": "HTML",
    "notes.pdf": "plain text",
    "scan.pdf": "PNG image, not a PDF",
    "truncated.pdf": "",  # PDFium may repair it; either indexed or a reason, never a crash
    "bomb.png": "PAGERAG_IMAGE_MAX_PIXELS",
    "user-password.pdf": "encrypted",
    "empty.pdf": "empty",
}


def make_hostile_folder(folder: Path, corpus: Path | None) -> None:
    w = hostile.write
    w(folder / "zero-pages.pdf", hostile.zero_pages_pdf())
    w(folder / "page-tree-loop.pdf", hostile.page_tree_loop_pdf())
    w(folder / "sliver.pdf", hostile.one_page_pdf(b"[0 0 14400 3]"))
    w(folder / "slow.pdf", hostile.slow_pdf())
    w(folder / "page.html.pdf", b"<!DOCTYPE html><html><body>not a pdf</body></html>")
    w(folder / "notes.pdf", b"just some notes\n")
    w(folder / "scan.pdf", hostile.png_bytes(64, 64))
    good = make_pdf(folder / "good.pdf", ["fine page one", "fine page two"])
    w(folder / "truncated.pdf", good.read_bytes()[: good.stat().st_size // 2])
    w(folder / "bomb.png", hostile.png_bytes(12_000, 12_000))
    w(folder / "empty.pdf", b"")
    encrypted_pdf(folder / "user-password.pdf", user="open sesame", owner="boss")
    encrypted_pdf(folder / "owner-only.pdf", user="", owner="boss")
    make_pdf(folder / "long.pdf", [f"page {i}" for i in range(5)])
    if corpus is not None:
        shutil.copy(corpus / "password-example.pdf", folder / "password-example.pdf")


def test_hostile_folder(service: PageRAG, tmp_path: Path, corpus: Path) -> None:
    folder = tmp_path / "hostile"
    make_hostile_folder(folder, corpus)
    started = time.monotonic()
    report = service.ingest([folder])
    assert time.monotonic() - started < 60
    failed = {f.source: f.error for f in report.failed}
    for name, reason in HOSTILE.items():
        if name == "truncated.pdf" and name not in failed:
            continue
        assert name in failed, f"{name} was not reported"
        assert reason.lower() in failed[name].lower(), (name, failed[name])
    indexed = {d.source: d for d in service.documents()}
    assert set(indexed) >= {"good.pdf", "owner-only.pdf", "long.pdf"}
    assert not set(indexed) & set(failed)  # nothing stored for a failed file
    # Page cap: 3 of 5 pages, with a warning that says so.
    assert indexed["long.pdf"].pages == 3
    assert any("3 of 5 pages" in w.warning for w in report.warnings)
    assert service.index.count() == sum(d.pages for d in indexed.values())
    assert service.manifest.pending() == []


def test_password_given_per_file(service: PageRAG, tmp_path: Path) -> None:
    path = encrypted_pdf(tmp_path / "in" / "locked.pdf", user="open sesame", owner="boss")
    wrong = service.ingest([path], passwords={"locked.pdf": "nope"})
    assert "password given for this PDF is wrong" in wrong.failed[0].error
    right = service.ingest([path], passwords={"locked.pdf": "open sesame"})
    assert (right.indexed_documents, right.failed) == (1, [])


class FlakyIndex:
    """The real Edge index, with upserts that fail while `failures` lasts (a server outage)."""

    def __init__(self, index: EdgeIndex, failures: int) -> None:
        self._index = index
        self.failures = failures
        self.calls = 0

    def upsert(self, records: Any, embeddings: Any) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("Qdrant is unreachable")
        self._index.upsert(records, embeddings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def _runner(data: Path, index: Any, retriever: Any) -> IngestRunner:
    library = Library(Manifest(data / "manifest.sqlite3"), index, PageImages(data / "pages"))
    return IngestRunner(
        library,
        lambda: retriever,
        sandbox=RenderSandbox(dpi=50),
        batch_size=2,
        retry_delay=0.01,
    )


def test_transient_store_errors_are_retried(tmp_path: Path, tiny_retriever) -> None:
    index = FlakyIndex(EdgeIndex(tmp_path / "index"), failures=2)
    make_pdf(tmp_path / "in" / "a.pdf", ["one", "two", "three"])
    report = _runner(tmp_path, index, tiny_retriever).run([tmp_path / "in"])
    assert (report.indexed_documents, report.indexed_pages, report.failed) == (1, 3, [])
    assert index.calls == 4  # two failures, then two batches


def test_store_outage_keeps_document_pending_and_next_run_completes(
    tmp_path: Path, tiny_retriever
) -> None:
    edge = EdgeIndex(tmp_path / "index")
    make_pdf(tmp_path / "in" / "a.pdf", [f"p{i}" for i in range(6)])
    flaky = FlakyIndex(edge, failures=0)
    runner = _runner(tmp_path, flaky, tiny_retriever)
    original = flaky.upsert

    def fail_after_first_batch(records: Any, embeddings: Any) -> None:
        if flaky.calls >= 1:
            flaky.failures = 100  # the server goes down after the first batch
        original(records, embeddings)

    flaky.upsert = fail_after_first_batch  # type: ignore[method-assign]
    report = runner.run([tmp_path / "in"])
    assert report.indexed_documents == 0 and "vector store failed" in report.failed[0].error
    [doc_id] = runner.library.manifest.pending()
    assert edge.page_ids(doc_id) == [1, 2]  # what was stored is kept
    assert runner.library.manifest.failures()[0]["source"] == "a.pdf"
    # The server is back: the next run stores only the missing pages.
    again = _runner(tmp_path, edge, tiny_retriever).run([tmp_path / "in"])
    assert (again.indexed_documents, again.indexed_pages, again.failed) == (1, 4, [])
    assert edge.page_ids(doc_id) == list(range(1, 7))


class _Refusal(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


@pytest.mark.parametrize(("status", "sends"), [(503, UPSERT_ATTEMPTS), (401, 1)])
def test_one_retry_layer_for_a_qdrant_server(
    tmp_path: Path, tiny_retriever: Any, monkeypatch: pytest.MonkeyPatch, status: int, sends: int
) -> None:
    # An outage costs UPSERT_ATTEMPTS sends per batch (the runner's retries, not the runner's
    # times the client's); a refusal that waiting cannot fix (a wrong key) is sent once.
    from rag.index.server import ServerIndex

    index = ServerIndex.local(None, batch_size=8)
    sent: list[int] = []

    def down(batch: list[Any]) -> None:
        sent.append(len(batch))
        raise _Refusal(status)

    monkeypatch.setattr(index, "_send", down)
    make_pdf(tmp_path / "in" / "a.pdf", ["one", "two"])
    report = _runner(tmp_path, index, tiny_retriever).run([tmp_path / "in"])
    assert "vector store failed" in report.failed[0].error
    assert len(sent) == sends
