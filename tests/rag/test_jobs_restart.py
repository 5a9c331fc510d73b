"""kill -9 of `pagerag serve` in the middle of an upload, then a restart (issue 10, item 5):
the half-ingested document stays invisible (search, counts, page images), its job record
survives and says what happened, the restarted server resumes the job to completion, and the
staged copy of the upload is removed once the job ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.server.jobs import Job, JobManager
from rag.service import PageRAG
from rag.types import FileError, FileWarning
from tests.pdfs import make_pdf
from tests.serving import serving_service
from tests.slowpdf import slow_pages_pdf

API = "/api/v1"
PAGES = 24


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def pagerag_serve(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`pagerag serve` in a subprocess on the tiny models; yields it and its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < end, "the server did not start"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_job(client: httpx.Client, job_id: str, until: Callable[[dict[str, Any]], bool]) -> dict:
    end = time.monotonic() + 180
    while not until(job := client.get(f"{API}/jobs/{job_id}").json()):
        assert job["state"] in ("queued", "running") and time.monotonic() < end, job
        time.sleep(0.05)
    return job


def search_ids(client: httpx.Client, k: int = 50) -> set[str]:
    response = client.post(f"{API}/search", json={"query": "page", "top_k": k, "mode": "visual"})
    assert response.status_code == 200, response.text
    return {h["doc_id"] for h in response.json()["hits"]}


def test_kill_9_mid_upload_then_restart_resumes_and_hides_the_partial_document(
    tmp_path: Path,
    tiny_colqwen_dir: Path,
    tiny_generator_dir: Path,
    tiny_retriever: Any,
    tiny_generator: Any,
) -> None:
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PAGERAG_")},
        "PAGERAG_DATA_DIR": str(data),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_GENERATOR_MODEL": str(tiny_generator_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_DTYPE": "float32",
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "PAGERAG_RENDER_DPI": "50",
        "PAGERAG_BATCH_SIZE": "2",
        "PAGERAG_GEN_MIN_PIXELS": str(4 * 28 * 28),
        "PAGERAG_GEN_MAX_PIXELS": str(16 * 28 * 28),
        "HF_HUB_OFFLINE": "1",
    }
    log = tmp_path / "server.log"
    small = make_pdf(tmp_path / "small.pdf", ["A complete document"]).read_bytes()
    slow = slow_pages_pdf(PAGES, strokes=20_000, salt="restart")
    uploads = data / "uploads"

    # 1. A complete document, then a slow upload killed with SIGKILL half-way.
    with pagerag_serve(env, log) as (proc, url), httpx.Client(base_url=url, timeout=60) as c:
        first = c.post(f"{API}/documents", files=[("files", ("small.pdf", small))]).json()
        wait_job(c, first["id"], lambda j: j["state"] == "done")
        job = c.post(f"{API}/documents", files=[("files", ("slow.pdf", slow))]).json()
        job = wait_job(c, job["id"], lambda j: j["pages_done"] >= 4)
        slow_id = job["files"][0]["doc_id"]
        staged = [p for p in uploads.rglob("*") if p.is_file()]
        assert len(staged) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    # 2. What the kill left: stored pages of a pending document, invisible to every read.
    service = serving_service(
        data, tiny_colqwen_dir, tiny_generator_dir, tiny_retriever, tiny_generator
    )
    try:
        stored = service.index.page_ids(slow_id)
        assert 4 <= len(stored) < PAGES
        assert service.pending() == (slow_id,)
        hits = service.search("page", 50, mode="visual")
        assert hits and slow_id not in {h.doc_id for h in hits}
        info = service.info()
        assert info.pages == 1 and info.pending_pages == len(stored)
        assert info.pending_documents == 1
        with pytest.raises(Exception, match="not complete yet") as pending:
            service.document(slow_id)
        assert f"{len(stored)} of {PAGES} pages stored" in str(pending.value)
    finally:
        service.close()
    assert staged[0].is_file()  # kept for the restart

    # 3. The restarted server lists the job, keeps the document hidden while it resumes it,
    # and completes it.
    with pagerag_serve(env, log) as (_, url), httpx.Client(base_url=url, timeout=60) as c:
        jobs = {j["id"]: j for j in c.get(f"{API}/jobs").json()["jobs"]}
        resumed = jobs[job["id"]]
        assert any("resumed at the restart" in w["warning"] for w in resumed["warnings"])
        if resumed["state"] != "done":  # checks while it is still being ingested
            answer = c.get(f"{API}/documents/{slow_id}")
            assert answer.status_code in (200, 409), answer.text
            if answer.status_code == 409:
                assert "resumes" in answer.json()["detail"]
                image = c.get(f"{API}/documents/{slow_id}/pages/1/image")
                assert image.status_code in (200, 404)
        done = wait_job(c, job["id"], lambda j: j["state"] != "running" and j["state"] != "queued")
        assert done["state"] == "done", done
        assert done["files"][0]["status"] == "indexed"
        assert slow_id in {d["doc_id"] for d in c.get(f"{API}/documents").json()["documents"]}
        assert c.get(f"{API}/documents/{slow_id}").json()["pages"] == PAGES
        assert c.get(f"{API}/documents/{slow_id}/pages/{PAGES}/image").status_code == 200
        assert slow_id in search_ids(c)
        status = c.get(f"{API}/status").json()
        assert status["pages"] == PAGES + 1 and status["pending_pages"] == 0
    assert not [p for p in uploads.rglob("*") if p.is_file()]  # the staged copy is gone


def test_a_pending_documents_image_and_heatmap_answer_404(
    make_serving_service: Callable[..., PageRAG], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from rag.server.app import create_app

    service = make_serving_service("pending-routes")
    service.ingest([make_pdf(tmp_path / "a.pdf", ["Alpha", "Beta"])])
    [doc] = service.documents()
    with service.manifest._tx() as db:  # as a kill mid-ingestion leaves it
        db.execute("UPDATE documents SET state = 'pending' WHERE doc_id = ?", (doc.doc_id,))
    with TestClient(create_app(service, ui=False, warm_up=False)) as client:
        assert client.get(f"{API}/documents/{doc.doc_id}/pages/1/image").status_code == 404
        heatmap = client.get(f"{API}/documents/{doc.doc_id}/pages/1/heatmap?query=alpha")
        assert heatmap.status_code == 404
        assert client.get(f"{API}/documents/{doc.doc_id}").status_code == 409
        assert client.post(f"{API}/search", json={"query": "alpha"}).json()["hits"] == []
    service.close()


def test_job_records_survive_a_new_manager_and_staged_files_of_ended_jobs_go(
    make_serving_service: Callable[..., PageRAG], tmp_path: Path
) -> None:
    service = make_serving_service("job-records")
    jobs = JobManager(service)
    folder = jobs.upload_folder()
    folder.mkdir(parents=True)
    paper = make_pdf(folder / "paper.upload", ["Gamma"])
    job = Job(
        id="ab" * 16, kind="upload", paths=[paper], sources={paper: "paper.pdf"}, folder=folder
    )
    jobs.store.save({**job.record(), "state": "running"})
    # Another process owned it: as if the server had died with it running.
    with jobs.store._lock:
        jobs.store._db.execute("UPDATE jobs SET owner = 'dead' WHERE id = ?", (job.id,))
    jobs.close()
    again = JobManager(service)
    view = again.wait(job.id, timeout=120)
    assert view is not None and view.state == "done", view
    assert not folder.exists()
    assert [d.source for d in service.documents()] == ["paper.pdf"]
    again.close()
    service.close()


def test_job_records_of_an_earlier_version_still_load_as_typed_values(
    make_serving_service: Callable[..., PageRAG],
) -> None:
    # As the version before typed job errors wrote it: errors and warnings as dicts, no stage.
    old = {
        "id": "cd" * 16,
        "kind": "upload",
        "state": "done",
        "created_at": "2026-01-01T00:00:00+00:00",
        "started_at": "2026-01-01T00:00:01+00:00",
        "finished_at": "2026-01-01T00:00:02+00:00",
        "files_total": 2,
        "files_done": 2,
        "pages_total": 1,
        "pages_done": 1,
        "current": "a.pdf",
        "indexed_documents": 1,
        "indexed_pages": 1,
        "skipped_documents": 0,
        "files": [
            {"name": "a.pdf", "status": "indexed", "doc_id": "ab" * 32, "error": None},
            {"name": "b.pdf", "status": "failed", "doc_id": None, "error": "the file is empty"},
        ],
        "errors": [{"source": "b.pdf", "error": "the file is empty"}],
        "warnings": [{"source": "a.pdf", "warning": "1 of 2 pages"}],
        "message": "",
        "paths": [],
        "sources": [],
        "folder": None,
        "client": "",
        "retired_field": 1,  # a field this version does not know
    }
    service = make_serving_service("old-job-records")
    jobs = JobManager(service)
    jobs.store.save(old)
    with jobs.store._lock:
        jobs.store._db.execute("UPDATE jobs SET owner = 'dead' WHERE id = ?", (old["id"],))
    jobs.close()
    again = JobManager(service)
    job = again.get(old["id"])
    assert job is not None and job.state == "done" and job.stage == ""
    assert job.errors == [FileError("b.pdf", "the file is empty")]
    assert job.warnings == [FileWarning("a.pdf", "1 of 2 pages")]
    assert [f.status for f in job.files] == ["indexed", "failed"]
    # Stored again, the record keeps the JSON shape it had.
    record = Job.from_record({**old, "state": "done"}).record()
    assert record["errors"] == old["errors"] and record["warnings"] == old["warnings"]
    again.close()
    service.close()


def test_jobs_are_taken_in_turn_between_clients(
    make_serving_service: Callable[..., PageRAG],
) -> None:
    # One client queues many uploads, another one: the other's is not last (item 8).
    service = make_serving_service("fair-queue")
    jobs = JobManager(service)
    for n, client in enumerate(["big"] * 5 + ["small"]):
        job = Job(id=f"{n:032x}", kind="upload", client=client)
        jobs._lines.setdefault(client, deque()).append(job)
    order = [jobs._next() for _ in range(6)]
    assert [j.client for j in order if j] == ["big", "small", "big", "big", "big", "big"]
    jobs.close()
    assert jobs._next() is None
    service.close()
