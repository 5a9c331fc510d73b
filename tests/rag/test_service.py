"""Incremental, idempotent and resumable ingestion through the service object."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import Settings
from rag.service import PageRAG, PageRAGError
from rag.types import SearchFilter
from tests.pdfs import make_pdf

ROOT = Path(__file__).resolve().parents[2]


def settings_for(data: Path, model: Path, **extra: object) -> Settings:
    values: dict[str, object] = {"device": "cpu", "max_visual_tokens": 32, "render_dpi": 50}
    return Settings(_env_file=None, data_dir=data, retriever_model=str(model), **(values | extra))


@pytest.fixture
def service(tmp_path: Path, tiny_colqwen_dir: Path, tiny_retriever) -> Iterator[PageRAG]:
    svc = PageRAG(settings_for(tmp_path / "data", tiny_colqwen_dir), retriever=tiny_retriever)
    yield svc
    svc.close()


def test_changed_file_replaces_its_old_pages(service: PageRAG, tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "docs" / "report.pdf", ["alpha", "beta", "gamma"])
    first = service.ingest([tmp_path / "docs"])
    [old] = service.documents()
    assert (first.indexed_documents, first.indexed_pages, old.pages) == (1, 3, 3)
    make_pdf(path, ["delta", "epsilon"])
    second = service.ingest([tmp_path / "docs"])
    [new] = service.documents()
    assert (second.indexed_documents, second.indexed_pages) == (1, 2)
    assert new.doc_id != old.doc_id and new.source == "report.pdf"
    assert service.index.count() == 2
    assert service.index.page_ids(old.doc_id) == []
    assert not any(service.settings.images_dir.rglob(f"{old.doc_id}/*"))


def test_identical_files_are_stored_once(service: PageRAG, tmp_path: Path) -> None:
    a = make_pdf(tmp_path / "in" / "a.pdf", ["same", "bytes"])
    (tmp_path / "in" / "sub").mkdir()
    shutil.copy(a, tmp_path / "in" / "sub" / "b.pdf")
    report = service.ingest([tmp_path / "in"])
    assert (report.indexed_documents, report.skipped_documents, report.indexed_pages) == (1, 1, 2)
    [doc] = service.documents()
    assert set(doc.sources) == {"a.pdf", "sub/b.pdf"}
    # Both paths find the pages, and removing one copy keeps the document.
    for prefix in ("a.pdf", "sub"):
        assert service.index.count(SearchFilter(source_prefix=prefix)) == 2
    (tmp_path / "in" / "sub" / "b.pdf").unlink()
    make_pdf(tmp_path / "in" / "sub" / "b.pdf", ["now different"])
    service.ingest([tmp_path / "in"])
    assert service.index.count() == 3
    assert service.index.count(SearchFilter(source_prefix="a.pdf")) == 2


def test_tags_filter_and_unknown_document(service: PageRAG, tmp_path: Path) -> None:
    make_pdf(tmp_path / "x" / "one.pdf", ["one"])
    make_pdf(tmp_path / "y" / "two.pdf", ["two", "two b"])
    service.ingest([tmp_path / "x"], tags=["finance"])
    service.ingest([tmp_path / "y"], tags=["legal"])
    hits = service.search("two", k=10, filters=SearchFilter(tags=("legal",)))
    assert {h.source for h in hits} == {"two.pdf"} and len(hits) == 2
    assert {d.tags for d in service.documents()} == {("finance",), ("legal",)}
    with pytest.raises(PageRAGError, match="no document"):
        service.delete("ffff")


def test_search_scores_equal_exact_maxsim(service: PageRAG, tmp_path: Path) -> None:
    make_pdf(tmp_path / "d" / "a.pdf", [f"page {i}" for i in range(6)])
    service.ingest([tmp_path / "d"])
    query = service.retriever.embed_query("page 3 value")
    two_stage = service.index.search(query, 6)
    exact = service.index.search_exact(query, 6)
    assert [(h.doc_id, h.page) for h in two_stage] == [(h.doc_id, h.page) for h in exact]
    assert all(abs(a.score - b.score) < 1e-4 for a, b in zip(two_stage, exact, strict=True))
    hit = two_stage[0]
    assert hit.grid[0] * hit.grid[1] > 0 and hit.image_offset > 0 and "page" in hit.text


def test_killed_ingestion_resumes_without_duplicates(
    tmp_path: Path, tiny_colqwen_dir: Path
) -> None:
    """SIGKILL a real `pagerag ingest` mid-document, run it again: every page once."""
    pages = 60
    make_pdf(tmp_path / "docs" / "long.pdf", [f"section {i}" for i in range(pages)])
    data = tmp_path / "data"
    env = {
        **os.environ,
        "PAGERAG_DATA_DIR": str(data),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_MAX_VISUAL_TOKENS": "256",
        "PAGERAG_RENDER_DPI": "100",
        "PAGERAG_BATCH_SIZE": "2",
    }
    cmd = [sys.executable, "-m", "rag.cli", "ingest", str(tmp_path / "docs")]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while len(list((data / "pages").rglob("*.png"))) < 12 and proc.poll() is None:
        assert time.monotonic() < deadline, "ingestion never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""

    settings = settings_for(data, tiny_colqwen_dir, max_visual_tokens=256, render_dpi=100)
    svc = PageRAG(settings)
    try:
        state = (svc.manifest.pending(), svc.documents(), svc.manifest.failures())
        assert len(state[0]) == 1 and state[1] == [], state
        stored_before = len(svc.index.page_ids(svc.manifest.pending()[0]))
        assert stored_before < pages
        report = svc.ingest([tmp_path / "docs"])
        assert report.indexed_documents == 1
        assert report.indexed_pages == pages - stored_before  # resumed, not restarted
        [doc] = svc.documents()
        assert svc.index.count() == pages and svc.index.page_ids(doc.doc_id) == list(
            range(1, pages + 1)
        )
        assert svc.manifest.pending() == []
    finally:
        svc.close()
