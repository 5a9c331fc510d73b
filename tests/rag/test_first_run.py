"""The first run without model weights (issue 11, item 1): ingestion that cannot load the
retriever still stores every page with its text and image, text search works at once, status
counts the pages waiting for visual vectors, and the next ingestion once the model is there
embeds them, after which visual search and similarity maps find them too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rag.config import Settings
from rag.heatmap import VisualPending, page_heatmap
from rag.models.loading import ModelLoadError
from rag.service import PageRAG
from tests.pdfs import make_pdf


def _service(data: Path, model: Path) -> PageRAG:
    settings = Settings(
        _env_file=None,
        data_dir=data,
        retriever_model=str(model),
        device="cpu",
        max_visual_tokens=32,
        render_dpi=50,
    )
    return PageRAG(settings)


def test_pages_wait_for_visual_vectors_until_the_retriever_loads(
    tmp_path: Path, tiny_colqwen_dir: Path
) -> None:
    docs = tmp_path / "docs"
    make_pdf(docs / "minutes.pdf", ["board minutes", "the quarterly revenue table"])
    make_pdf(docs / "other.pdf", ["nothing to see"])
    model = tmp_path / "hub" / "colqwen"  # not downloaded yet
    data = tmp_path / "data"

    service = _service(data, model)
    try:
        report = service.ingest([docs])
        assert (report.indexed_documents, report.indexed_pages, report.failed) == (2, 3, [])
        assert (
            report.waiting_pages == 3 and "Cannot load the ColQwen2 model" in report.retriever_error
        )
        [hit] = service.search("quarterly revenue", 5, mode="text")
        assert (hit.source, hit.page) == ("minutes.pdf", 2) and Path(hit.image).is_file()
        info = service.info()
        assert (info.documents, info.pages, info.waiting_pages) == (2, 3, 3)
        with pytest.raises(ModelLoadError, match="PAGERAG_RETRIEVER_MODEL"):
            service.search("quarterly revenue", 5, mode="visual")
        with pytest.raises(VisualPending, match="no visual vectors yet"):
            page_heatmap(service, "revenue", hit.doc_id, 2)
        again = service.ingest([docs])  # still no model: nothing lost, nothing duplicated
        assert again.skipped_documents == 2 and again.visual_added == 0
        assert service.info().waiting_pages == 3
    finally:
        service.close()

    shutil.copytree(tiny_colqwen_dir, model)  # the download ended
    service = _service(data, model)
    try:
        report = service.ingest([docs])
        assert report.visual_added == 3 and not report.retriever_error
        assert service.info().waiting_pages == 0 and service.info().pages == 3
        hits = service.search("quarterly revenue", 5, mode="visual")
        assert {(h.source, h.page) for h in hits} == {
            ("minutes.pdf", 1),
            ("minutes.pdf", 2),
            ("other.pdf", 1),
        }
        assert all(h.grid != (0, 0) for h in hits)  # the grid came with the vectors
        heatmap = page_heatmap(service, "revenue", hits[0].doc_id, hits[0].page)
        assert heatmap.image.size[0] > 0
        [text_hit] = service.search("quarterly revenue", 5, mode="text")
        assert text_hit.page == 2  # the text channel and payload survived the rewrite
    finally:
        service.close()


def test_deleting_a_document_drops_its_waiting_pages(tmp_path: Path) -> None:
    make_pdf(tmp_path / "docs" / "a.pdf", ["alpha", "beta"])
    service = _service(tmp_path / "data", tmp_path / "missing-model")
    try:
        service.ingest([tmp_path / "docs"])
        [doc] = service.documents()
        assert service.info().waiting_pages == 2
        service.delete(doc.doc_id)
        assert service.info().waiting_pages == 0 and service.info().pages == 0
    finally:
        service.close()
