"""The first run without model weights (issue 11, item 1): ingestion that cannot load the
retriever still stores every page with its text and image, text search works at once, status
counts the pages waiting for visual vectors, and the next ingestion once the model is there
embeds them, after which visual search and similarity maps find them too. While the models
download, /readyz and the UI show the progress and nothing waits for it; a model that cannot
load is named with the setting to change, in status, the UI and one line of the server log."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from rag.config import Settings
from rag.errors import log_failure
from rag.heatmap import VisualPending, page_heatmap
from rag.models.download import DOWNLOADS
from rag.models.loading import ModelLoadError
from rag.server.app import create_app
from rag.server.jobs import JobManager
from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG
from tests.fakehub import fake_hub
from tests.pdfs import make_pdf
from tests.serving import serving_settings
from ui import actions
from ui.actions import any_running


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


# -- the first download, load errors, what the server logs (issue 11, item 1) ----------------

REPO = "test-org/tiny-colqwen"


def wait_for(condition: Callable[[], object], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def held(downloads: list[dict[str, Any]] | None) -> bool:
    return bool(downloads) and 0 < downloads[0]["bytes_done"] < downloads[0]["bytes_total"]


def test_while_the_retriever_downloads_text_search_works_then_pages_get_vectors(
    tmp_path: Path,
    tiny_colqwen_dir: Path,
    tiny_generator_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first `make serve DOCS=...`: the retriever comes from the Hub (a local one, held
    # halfway), the start-up folder is ingested meanwhile without waiting for it.
    docs = tmp_path / "docs"
    make_pdf(docs / "minutes.pdf", ["board minutes", "the quarterly revenue table"])
    settings = serving_settings(
        tmp_path / "data", tiny_colqwen_dir, tiny_generator_dir, retriever_model=REPO
    )
    svc = PageRAG(settings)
    api = "/api/v1"
    try:
        with (
            fake_hub(monkeypatch, tmp_path / "hf", {REPO: tiny_colqwen_dir}, hold=True) as hub,
            TestClient(create_app(svc, startup_paths=[docs], ui=False)) as c,
        ):
            try:
                # Held halfway through the weights (small files before them may be done
                # already: the total grows as each file starts).
                wait_for(lambda: held(c.get("/readyz").json().get("downloads")))
                ready = c.get("/readyz")
                assert ready.status_code == 503 and ready.json()["status"] == "starting"
                [download] = ready.json()["downloads"]
                assert download["model"] == REPO and download["kind"] == "ColQwen2"
                assert 0 < download["bytes_done"] < download["bytes_total"]
                assert "text search works" in ready.json()["detail"]

                jobs = c.app.state.jobs  # type: ignore[attr-defined]
                wait_for(lambda: not jobs.list()[0].running)
                assert jobs.list()[0].state == "done" and jobs.list()[0].indexed_pages == 2
                status = c.get(f"{api}/status").json()
                assert (status["pages"], status["waiting_pages"]) == (2, 2)
                found = c.post(f"{api}/search", json={"query": "quarterly revenue", "mode": "text"})
                assert found.status_code == 200 and found.json()["hits"][0]["page"] == 2
                visual = c.post(f"{api}/search", json={"query": "revenue", "mode": "visual"})
                assert visual.status_code == 503 and "Retry-After" in visual.headers
                detail = visual.json()["detail"]
                assert "still downloading" in detail and '"mode": "text"' in detail
            finally:
                hub.release()
            wait_for(lambda: c.get("/readyz").status_code == 200)
            # The pages stored meanwhile get their visual vectors by a job of their own.
            wait_for(lambda: svc.info().waiting_pages == 0 and not any_running(jobs))
            hits = c.post(f"{api}/search", json={"query": "revenue", "mode": "visual"}).json()
            assert len(hits["hits"]) == 2
            assert not c.get("/readyz").json().get("downloads")
    finally:
        svc.close()
        DOWNLOADS.forget(REPO)


def test_a_load_error_is_kept_shown_and_cleared_by_a_later_load(
    tmp_path: Path,
    tiny_colqwen_dir: Path,
    tiny_generator_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    retriever, generator = tmp_path / "models" / "colqwen", tmp_path / "models" / "qwen"
    svc = PageRAG(serving_settings(tmp_path / "data", retriever, generator))
    try:
        with TestClient(create_app(svc, ui=False, warm_up=False)) as c:
            status = c.get("/api/v1/status").json()
            assert status["retriever_error"] == status["generator_error"] == ""
            with pytest.raises(ModelLoadError):
                svc.retriever  # noqa: B018
            with pytest.raises(ModelLoadError):
                svc.generator  # noqa: B018
            status = c.get("/api/v1/status").json()
            assert "PAGERAG_RETRIEVER_MODEL" in status["retriever_error"]
            assert "PAGERAG_GENERATOR_MODEL" in status["generator_error"]
            assert "\n" not in status["retriever_error"] + status["generator_error"]
            shutil.copytree(tiny_colqwen_dir, retriever)  # put in place, as by hand
            shutil.copytree(tiny_generator_dir, generator)
            svc.retriever  # noqa: B018
            svc.generator  # noqa: B018
            status = c.get("/api/v1/status").json()
            assert status["retriever_error"] == status["generator_error"] == ""
            assert status["retriever_loaded"] and status["generator_loaded"]
    finally:
        svc.close()

    hub_id = PageRAG(
        serving_settings(tmp_path / "data2", tmp_path, tmp_path, retriever_model="o/m")
    )
    try:
        with pytest.raises(ModelLoadError, match="unset HF_HUB_OFFLINE"):
            hub_id.retriever  # noqa: B018
        assert "PAGERAG_RETRIEVER_MODEL" in hub_id.info().retriever_error
    finally:
        hub_id.close()


def test_the_ask_tab_says_why_and_what_works_without_the_models(tmp_path: Path) -> None:
    make_pdf(tmp_path / "docs" / "a.pdf", ["alpha revenue", "beta costs"])
    missing = tmp_path / "no-model"
    svc = PageRAG(serving_settings(tmp_path / "data", missing, missing))
    work = WorkQueue(max_waiting=4, timeout=30.0)
    try:
        assert svc.ingest([tmp_path / "docs"]).waiting_pages == 2  # stored for text search

        *_, hybrid = actions.ask(svc, "revenue", [], [], 2, [], False, "hybrid", work=work)
        said = hybrid.chat[-1]["content"]
        assert said.startswith("Not answered: Cannot load the ColQwen2 model")
        assert "PAGERAG_RETRIEVER_MODEL" in said and "Text layer only" in said
        assert "Nothing is indexed" not in said and "pagerag" not in said

        *_, text = actions.ask(svc, "revenue", [], [], 2, [], False, "text", work=work)
        said = text.chat[-1]["content"]
        assert text.gallery and "Qwen2-VL" in said and "Find pages only" in said

        banner = actions.banner(svc)
        assert "**The page model could not be loaded:**" in banner
        assert "PAGERAG\\_RETRIEVER\\_MODEL" in banner  # escaped for Markdown
        assert "2 stored pages are found by text search now" in banner
        assert "**The answer model could not be loaded:**" in banner
        status = actions.status(svc, work)
        assert "could not load: Cannot load the ColQwen2 model" in status
        assert "| Waiting for visual vectors | 2 pages" in status
    finally:
        svc.close()


def test_nothing_searchable_yet_names_the_documents_still_being_ingested(
    tmp_path: Path,
) -> None:
    from rag.server.schemas import api_words

    missing = tmp_path / "no-model"
    svc = PageRAG(serving_settings(tmp_path / "data", missing, missing))
    try:
        empty = svc.ask("anything", mode="text").text
        assert empty.startswith("Nothing is indexed yet")
        with pytest.raises(ModelLoadError):
            svc.retriever  # noqa: B018
        svc.library.begin("ab" * 32, title="t", pages=3, size=1, kind="pdf", tags=())
        text = svc.ask("anything", mode="text").text
        assert text.startswith("Nothing is searchable yet") and "1 document is still" in text
        assert "The page model could not be loaded either: Cannot load the ColQwen2" in text
        for words in (actions.ui_words(text), api_words(text)):
            assert "pagerag" not in words and "completes the documents" in words
    finally:
        svc.close()


def test_known_errors_log_one_line_and_a_hint_bugs_their_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-model"
    for debug in (False, True):
        svc = PageRAG(serving_settings(tmp_path / f"data-{debug}", missing, missing, debug=debug))
        caplog.clear()
        try:
            with TestClient(create_app(svc, ui=False)) as c:
                wait_for(lambda: c.get("/readyz").json()["status"] == "failed")
        finally:
            svc.close()
        [record] = [r for r in caplog.records if r.name == "rag.server.app"]
        assert record.levelname == "ERROR"
        if debug:  # PAGERAG_DEBUG=1: the traceback too
            assert record.exc_info is not None
        else:
            assert record.exc_info is None and "\n" not in record.getMessage()
            assert "PAGERAG_RETRIEVER_MODEL" in record.getMessage()
            assert "PAGERAG_DEBUG=1" in record.getMessage()

    # An ingestion job that stops on a known error (here: a full disk) says so in one line.
    svc = PageRAG(serving_settings(tmp_path / "data-disk", missing, missing))
    svc.settings.disk_reserve_mb = 10**12  # more than any disk has free
    jobs = JobManager(svc)
    caplog.clear()
    try:
        job = jobs.submit_paths([tmp_path])
        ended = jobs.wait(job.id)
        assert ended is not None and ended.state == "failed"
    finally:
        jobs.close()
        svc.close()
    [record] = [r for r in caplog.records if r.name == "rag.server.jobs"]
    assert record.exc_info is None and "PAGERAG_DISK_RESERVE_MB" in record.getMessage()

    log = logging.getLogger("tests.first_run")
    caplog.clear()
    log_failure(log, "a bug", RuntimeError("boom"))
    assert caplog.records[0].exc_info is not None
