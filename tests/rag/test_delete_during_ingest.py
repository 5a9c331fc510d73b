"""DELETE while an upload is being ingested, on the real server (uvicorn on 127.0.0.1, the tiny
models): deletions happen between two batches instead of after the whole run, a delete of the
document being ingested stops its ingestion, and a crowd of DELETEs starves no other route
(issue 10, item 4: a DELETE used to wait for the whole job, and ~45 of them took every worker
thread, so /healthz, /documents and /status stopped answering)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from rag.server.app import create_app
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import running_server
from tests.slowpdf import slow_pages_pdf

API = "/api/v1"
TIMEOUT = 6.0  # PAGERAG_REQUEST_TIMEOUT here; the slow upload takes well over twice that
PAGES = 40  # of about half a second each to render


@pytest.fixture
def service(tmp_path: Path, make_serving_service: Callable[..., PageRAG]) -> Iterator[PageRAG]:
    # Batches of 2 pages (about a second): a deletion waits for the current one only.
    svc = make_serving_service("delete-during-ingest", request_timeout=TIMEOUT, batch_size=2)
    library = [make_pdf(tmp_path / f"small{i}.pdf", [f"Small document {i}"]) for i in range(8)]
    svc.ingest(library)
    yield svc
    svc.close()


def upload_slow(client: httpx.Client, salt: str) -> str:
    data = slow_pages_pdf(PAGES, strokes=20_000, salt=salt)
    files = [("files", ("slow.pdf", data, "application/pdf"))]
    response = client.post(f"{API}/documents", files=files)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_running(client: httpx.Client, job_id: str, pages: int = 4) -> dict[str, Any]:
    """Until the job has stored `pages` pages (so it holds the write lock, mid-run)."""
    end = time.monotonic() + 60
    while (job := client.get(f"{API}/jobs/{job_id}").json())["pages_done"] < pages:
        assert job["state"] in ("queued", "running"), job
        assert time.monotonic() < end, job
        time.sleep(0.05)
    return job


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def test_many_deletes_during_ingestion_answer_in_time_and_starve_nothing(
    service: PageRAG,
) -> None:
    small = [d.doc_id for d in service.documents()]
    with (
        running_server(create_app(service, ui=False, warm_up=False)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        job_id = upload_slow(client, "crowd")
        wait_running(client, job_id)
        # 48 DELETEs at once (6 per document), more than the server's 40 worker threads.
        targets = [doc for doc in small for _ in range(6)]
        with ThreadPoolExecutor(len(targets)) as pool:
            deletes = [
                pool.submit(timed, lambda d=doc: client.delete(f"{API}/documents/{d}"))
                for doc in targets
            ]
            time.sleep(0.3)  # every DELETE is in the server now
            # Meanwhile the health, listing and status routes answer at once.
            for _ in range(5):
                for path in ("/healthz", "/readyz", f"{API}/documents", f"{API}/status"):
                    seconds, response = timed(lambda p=path: client.get(p))
                    assert response.status_code == 200, (path, response.text)
                    assert seconds < 2.0, f"{path} took {seconds:.1f} s during the deletes"
            results = [f.result() for f in deletes]
        running = client.get(f"{API}/jobs/{job_id}").json()
        assert running["state"] == "running", "the job ended: the test proves nothing"
        for seconds, response in results:
            assert seconds < TIMEOUT + 2, f"a DELETE took {seconds:.1f} s"
            # 404: that document was already deleted when this request looked it up.
            assert response.status_code in (200, 404), response.text
        deleted = {r.json()["deleted"]["doc_id"] for _, r in results if r.status_code == 200}
        assert deleted == set(small)  # each deleted between two batches, not after the run
        listed = {d["doc_id"] for d in client.get(f"{API}/documents").json()["documents"]}
        assert not listed & set(small)
        assert client.get(f"{API}/status").json()["pending_documents"] == 1
    for doc in small:
        assert service.index.page_ids(doc) == []
        assert not service.library.images.folder(doc).exists()


def test_deleting_the_document_being_ingested_stops_its_ingestion(service: PageRAG) -> None:
    with (
        running_server(create_app(service, ui=False, warm_up=False)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        job_id = upload_slow(client, "cancel")
        job = wait_running(client, job_id)
        [slow] = service.pending()
        assert job["files"][0]["doc_id"] == slow
        seconds, response = timed(lambda: client.delete(f"{API}/documents/{slow[:12]}"))
        assert response.status_code == 200, response.text
        assert seconds < TIMEOUT
        # The job ends soon after (it does not render the remaining pages), and says why.
        end = time.monotonic() + 2 * TIMEOUT
        while (job := client.get(f"{API}/jobs/{job_id}").json())["state"] == "running":
            assert time.monotonic() < end, "the job went on ingesting the deleted document"
            time.sleep(0.1)
        assert job["pages_done"] < PAGES
        [result] = job["files"]
        assert result["status"] == "failed"
        assert "deleted while it was being ingested" in result["error"]
        assert client.get(f"{API}/documents/{slow}").status_code == 404
    assert service.pending() == ()
    assert service.index.page_ids(slow) == []
    assert not service.library.images.folder(slow).exists()
    assert service.manifest.document(slow) is None


def test_a_delete_waiting_past_the_timeout_is_queued_and_still_happens(
    service: PageRAG,
) -> None:
    doc = service.documents()[0].doc_id
    with service._writes.held():  # an ingestion that sits in one batch for a long while
        started = time.monotonic()
        with pytest.raises(Exception, match="is queued") as queued:
            service.delete(doc, timeout=0.5)
        assert time.monotonic() - started < 2
        assert type(queued.value).__name__ == "DeletionQueued"
        assert service.manifest.info(doc) is not None  # not yet
    assert service.manifest.info(doc) is None  # run as the holder let go
    assert service.index.page_ids(doc) == []
    # Through the API: 202, with what happens next.
    other = service.documents()[0].doc_id
    with TestClient(create_app(service, ui=False, warm_up=False)) as client:
        with service._writes.held():
            seconds, response = timed(lambda: client.delete(f"{API}/documents/{other}"))
            assert response.status_code == 202, response.text
            assert "is queued" in response.json()["detail"]
            assert TIMEOUT <= seconds < TIMEOUT + 2
        assert client.get(f"{API}/documents/{other}").status_code == 404
