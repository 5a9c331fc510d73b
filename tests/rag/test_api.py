"""The REST API (and the server around it) on the tiny models: every endpoint, streaming,
uploads of good and bad files, API keys, the upload cap, the shared queue's 429 and 504."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag.server.app import create_app
from rag.server.modelqueue import WorkQueue
from rag.server.schemas import StatusOut, api_words, job_out
from rag.service import PageRAG
from rag.types import ServiceInfo
from tests.pdfs import make_pdf
from tests.serving import make_library

API = "/api/v1"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service(
        "api",
    )
    svc.ingest([make_library(tmp_path_factory.mktemp("api-library"))])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: PageRAG) -> Iterator[TestClient]:
    # The UI is mounted too: this is the app `pagerag serve` runs.
    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture
def fresh_queue(client: TestClient) -> Iterator[Callable[..., WorkQueue]]:
    """Swap the server's shared queue for one with test limits; restore it afterwards."""
    state = client.app.state  # type: ignore[attr-defined]
    original = state.work

    def make(max_waiting: int, timeout: float) -> WorkQueue:
        state.work = WorkQueue(max_waiting, timeout)
        return state.work

    yield make
    state.work = original


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


def doc_id(service: PageRAG, source: str) -> str:
    [doc] = [d for d in service.documents() if d.source == source]
    return doc.doc_id


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    """The job once it has ended, as GET /jobs/{id} shows it; the same as the job manager's
    typed record of it, rendered as the API renders it."""
    job = client.app.state.jobs.wait(job_id)  # type: ignore[attr-defined]
    assert job is not None and not job.running, job
    shown = client.get(f"{API}/jobs/{job_id}").json()
    assert shown == job_out(job).model_dump(mode="json")
    return shown


def events(body: str) -> list[tuple[str, Any]]:
    """Parse server-sent events: (event name, JSON data)."""
    parsed = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


# -- health and docs ------------------------------------------------------------------------


def test_health_ready_ui_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/search",
        "/ask",
        "/documents",
        "/documents/{doc_id}",
        "/jobs/{job_id}",
        "/documents/{doc_id}/pages/{page}/image",
        "/documents/{doc_id}/pages/{page}/heatmap",
        "/status",
    ):
        assert API + path in paths
    assert "multipart/form-data" in paths[f"{API}/documents"]["post"]["requestBody"]["content"]
    ui = client.get("/")
    assert ui.status_code == 200 and "gradio" in ui.text.lower()


def test_readyz_reports_a_model_that_cannot_load(tmp_path: Path) -> None:
    from tests.serving import serving_settings

    missing = tmp_path / "no-model"
    svc = PageRAG(serving_settings(tmp_path / "data", missing, missing))
    try:
        with TestClient(create_app(svc, ui=False)) as c:
            assert c.get("/healthz").status_code == 200
            wait_for(lambda: c.get("/readyz").json()["status"] != "starting")
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "failed"
            assert "PAGERAG_RETRIEVER_MODEL" in ready.json()["detail"]
            response = c.post(f"{API}/search", json={"query": "a"})
            assert response.status_code == 503 and "PAGERAG_RETRIEVER_MODEL" in response.text
    finally:
        svc.close()


# -- search, pages, heatmaps ------------------------------------------------------------------


def test_search_returns_hits_with_working_image_and_heatmap_urls(client: TestClient) -> None:
    body = {"query": "Total 2015", "top_k": 3, "mode": "visual"}  # MaxSim, as heatmaps score
    response = client.post(f"{API}/search", json=body)
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert len(hits) == 3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    first = hits[0]
    assert set(first) >= {"doc_id", "source", "page", "score", "image_url", "heatmap_url"}
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    heatmap = client.get(first["heatmap_url"])
    assert heatmap.status_code == 200 and heatmap.content.startswith(b"\x89PNG")
    assert float(heatmap.headers["x-pagerag-score"]) == pytest.approx(first["score"], rel=1e-4)
    assert heatmap.content != image.content


def test_search_filter_by_document_prefix(client: TestClient, service: PageRAG) -> None:
    prefix = doc_id(service, "minutes.pdf")[:10]
    body = {"query": "budget", "top_k": 10, "filter": {"doc_ids": [prefix]}}
    hits = client.post(f"{API}/search", json=body).json()["hits"]
    assert {h["source"] for h in hits} == {"minutes.pdf"} and len(hits) == 2
    body = {"query": "budget", "filter": {"source_prefix": "report.pdf"}}
    assert {h["source"] for h in client.post(f"{API}/search", json=body).json()["hits"]} == {
        "report.pdf"
    }
    text = client.post(f"{API}/search", json={"query": "Budget", "mode": "text"}).json()
    assert text["hits"][0]["source"] == "minutes.pdf" and text["hits"][0]["page"] == 2
    bad_mode = client.post(f"{API}/search", json={"query": "x", "mode": "fuzzy"})
    assert bad_mode.status_code == 422
    unknown = client.post(f"{API}/search", json={"query": "x", "filter": {"doc_ids": ["ffff"]}})
    assert unknown.status_code == 400 and "no document" in unknown.json()["detail"]


def test_bad_requests_get_clear_statuses(client: TestClient, service: PageRAG) -> None:
    assert client.post(f"{API}/search", json={"query": ""}).status_code == 422
    assert client.post(f"{API}/search", json={"query": "x", "top_k": 0}).status_code == 422
    blank = client.post(f"{API}/search", json={"query": "   "})
    assert blank.status_code == 400 and "empty" in blank.json()["detail"]
    doc = doc_id(service, "report.pdf")
    assert client.get(f"{API}/documents/{doc}/pages/9/image").status_code == 404
    assert client.get(f"{API}/documents/{doc}/pages/0/image").status_code == 422  # 1 and up
    assert client.get(f"{API}/documents/{doc}/pages/9/heatmap?query=x").status_code == 404
    assert client.get(f"{API}/documents/{doc}/pages/1/heatmap").status_code == 422
    assert client.get(f"{API}/documents/ffff/pages/1/image").status_code == 404
    # A path-like id is just an unknown id, never a path.
    assert client.get(f"{API}/documents/..%2F..%2Fetc/pages/1/image").status_code == 404
    assert client.get(f"{API}/jobs/nope").status_code == 422  # job ids are hex


# -- answers ------------------------------------------------------------------------------


def test_ask_returns_an_answer_with_citations(client: TestClient) -> None:
    history = [{"question": "Which report?", "answer": "The report [1]."}]
    body = {"question": "What was the total?", "top_k": 2, "history": history}
    response = client.post(f"{API}/ask", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["question"] == "What was the total?" and answer["text"]
    assert [c["label"] for c in answer["citations"]] == [1, 2]
    assert answer["completion_tokens"] == 6
    assert client.get(answer["citations"][0]["image_url"]).status_code == 200


def test_ask_streams_tokens_then_the_answer(client: TestClient) -> None:
    body = {"question": "What was the total?", "stream": True}
    with client.stream("POST", f"{API}/ask", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        parsed = events(response.read().decode())
    *tokens, (last, answer) = parsed
    assert last == "answer" and len(tokens) >= 1
    assert all(name == "token" for name, _ in tokens)
    assert "".join(data["text"] for _, data in tokens) == answer["text"]
    assert len(answer["citations"]) == 2  # PAGERAG_ASK_PAGES


def test_ask_with_an_empty_library_filter_needs_no_model(client: TestClient) -> None:
    body = {"question": "q", "filter": {"tags": ["no-such-tag"]}, "stream": True}
    with client.stream("POST", f"{API}/ask", json=body) as response:
        [(name, answer)] = events(response.read().decode())
    assert name == "answer" and answer["citations"] == []
    assert "No indexed page matches the filter" in answer["text"]


# -- documents and uploads ----------------------------------------------------------------------


def test_documents_list_get_and_thumbnails(client: TestClient, service: PageRAG) -> None:
    docs = client.get(f"{API}/documents").json()["documents"]
    assert {d["source"]: d["pages"] for d in docs}.items() >= {
        ("report.pdf", 3),
        ("minutes.pdf", 2),
    }
    report = next(d for d in docs if d["source"] == "report.pdf")
    assert report["title"] == "Report"
    assert client.get(report["thumbnail_url"]).status_code == 200
    one = client.get(f"{API}/documents/{report['doc_id'][:8]}")
    assert one.status_code == 200 and one.json()["doc_id"] == report["doc_id"]
    assert client.get(f"{API}/documents/ffff").status_code == 404


def upload(client: TestClient, files: list[tuple[str, bytes]], **kwargs: Any) -> Any:
    return client.post(
        f"{API}/documents",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        **kwargs,
    )


def test_upload_corpus_files_good_and_bad(
    client: TestClient, service: PageRAG, corpus: Path
) -> None:
    names = ["nics-background-checks-2015-11.pdf", "empty.pdf", "password-example.pdf"]
    files = [(name, (corpus / name).read_bytes()) for name in names]
    files.append(("notes.pdf", b"just some text, not a PDF at all\n"))  # named .pdf, is not one
    response = upload(client, files)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"].endswith(f"/jobs/{job['id']}")
    assert job["kind"] == "upload" and job["state"] in ("queued", "running", "done")
    job = finished(client, job["id"])
    assert job["state"] == "done" and job["indexed_documents"] == 1
    status = {f["name"]: (f["status"], f["error"]) for f in job["files"]}
    assert status["nics-background-checks-2015-11.pdf"] == ("indexed", None)
    assert status["empty.pdf"] == ("failed", "the file is empty")
    assert status["notes.pdf"] == ("failed", "the file is plain text, not a PDF or image")
    assert status["password-example.pdf"][0] == "failed"
    assert "password" in status["password-example.pdf"][1].lower()
    assert {e["source"] for e in job["errors"]} == {
        "empty.pdf",
        "notes.pdf",
        "password-example.pdf",
    }
    docs = {d.source: d for d in service.documents()}
    assert docs["nics-background-checks-2015-11.pdf"].pages == 1
    # Staged files are gone once the job has run.
    assert not any(service.settings.uploads_dir.rglob("*.upload"))
    # The same file again: already in the library.
    again = finished(client, upload(client, files[:1]).json()["id"])
    assert again["files"][0]["status"] == "unchanged" and again["skipped_documents"] == 1
    listed = client.get(f"{API}/jobs").json()["jobs"]
    assert [j["id"] for j in listed[:2]] == [again["id"], job["id"]]


def test_upload_names_are_never_paths(client: TestClient, service: PageRAG, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "x.pdf", ["escape attempt"]).read_bytes()
    job = upload(client, [("../../outside/evil.pdf", pdf)]).json()
    job = finished(client, job["id"])
    assert job["files"][0]["name"] == "evil.pdf" and job["files"][0]["status"] == "indexed"
    data = service.settings.data_dir
    assert not (data.parent / "outside").exists() and not list(data.rglob("evil.pdf"))
    deleted = client.delete(f"{API}/documents/{job['files'][0]['doc_id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"]["source"] == "evil.pdf"
    assert client.get(f"{API}/documents/{job['files'][0]['doc_id']}").status_code == 404


def test_upload_of_only_bad_files_is_refused(client: TestClient) -> None:
    response = upload(client, [("a.pdf", b"<html>not a pdf</html>"), ("b.png", b"")])
    assert response.status_code == 415
    assert "a.pdf: the file is HTML" in response.json()["detail"]
    no_files = client.post(f"{API}/documents", data={"x": "1"}, files={"y": ("", b"")})
    assert no_files.status_code in (400, 415)
    assert client.post(f"{API}/documents", json={"files": []}).status_code == 415


def test_too_many_waiting_jobs_get_429(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client.app.state.jobs, "max_pending", 0)  # type: ignore[attr-defined]
    pdf = make_pdf(tmp_path / "x.pdf", ["waiting"]).read_bytes()
    response = upload(client, [("x.pdf", pdf)])
    assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1


def test_upload_cap(service: PageRAG, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.settings, "max_upload_mb", 1)
    big = b"%PDF-1.4\n" + b"0" * (1024 * 1024 + 10)
    with TestClient(create_app(service, ui=False)) as c:
        response = upload(c, [("big.pdf", big)])
        assert response.status_code == 413 and "PAGERAG_MAX_UPLOAD_MB=1" in response.text

        # Without a Content-Length (chunked), the bytes are counted as they arrive.
        body = b"".join(
            [
                b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="big.pdf"\r\n',
                b"Content-Type: application/pdf\r\n\r\n",
                big,
                b"\r\n--XyZ--\r\n",
            ]
        )

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        chunked = c.post(
            f"{API}/documents",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        )
        assert chunked.status_code == 413
    assert not any(service.settings.uploads_dir.rglob("*.upload"))


# -- auth -----------------------------------------------------------------------------------------


def test_api_keys(service: PageRAG, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import SecretStr

    monkeypatch.setattr(service.settings, "api_keys", SecretStr("alpha-key, beta-key"))
    with TestClient(create_app(service)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code in (200, 503)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic alpha"}):
            denied = c.get(f"{API}/documents", headers=headers)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert c.post(f"{API}/search", json={"query": "x"}).status_code == 401
        assert upload(c, [("a.pdf", b"%PDF-1.4")]).status_code == 401
        for key in ("alpha-key", "beta-key"):
            ok = c.get(f"{API}/documents", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        # The UI asks for a login too: its config is refused until then.
        assert c.get("/config").status_code == 401
        login = c.post("/login", data={"username": "me", "password": "beta-key"})
        assert login.status_code == 200
        assert c.get("/config").status_code == 200
        assert c.post("/login", data={"username": "me", "password": "nope"}).status_code == 400


# -- the shared queue -----------------------------------------------------------------------------


def test_queue_full_answers_429_with_retry_after(
    client: TestClient, service: PageRAG, fresh_queue: Callable[..., WorkQueue]
) -> None:
    work = fresh_queue(1, 30.0)
    results: list[int] = []

    def search() -> None:
        results.append(client.post(f"{API}/search", json={"query": "total"}).status_code)

    with service._model_lock:  # the model is busy: the first request holds the only slot
        first = threading.Thread(target=search)
        first.start()
        wait_for(lambda: work.stats()["running"] == 1)
        second = threading.Thread(target=search)
        second.start()
        wait_for(lambda: work.stats()["waiting"] == 1)
        refused = client.post(f"{API}/search", json={"query": "total"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["detail"]
        streamed = client.post(f"{API}/ask", json={"question": "q", "stream": True})
        assert streamed.status_code == 429
    first.join()
    second.join()
    assert results == [200, 200]
    assert work.stats() | {"mean_seconds": 0} == work.stats() | {
        "running": 0,
        "waiting": 0,
        "served": 2,
        "rejected": 2,
        "mean_seconds": 0,
    }


def test_deadline_answers_504(
    client: TestClient, service: PageRAG, fresh_queue: Callable[..., WorkQueue]
) -> None:
    work = fresh_queue(4, 0.5)
    results: list[int] = []
    with service._model_lock:
        first = threading.Thread(
            target=lambda: results.append(
                client.post(f"{API}/ask", json={"question": "total"}).status_code
            )
        )
        first.start()
        wait_for(lambda: work.stats()["running"] == 1)
        late = client.post(f"{API}/search", json={"query": "total"})  # waits 0.5 s in line
        assert late.status_code == 504 and "PAGERAG_REQUEST_TIMEOUT" in late.json()["detail"]
        time.sleep(0.5)  # the admitted answer passes its deadline while the model is busy
    first.join()
    assert results == [504]  # stopped at its first words, not after the whole answer
    assert work.stats()["running"] == 0 and not service._model_lock.locked()


def test_an_unexpected_error_is_a_500_and_the_server_goes_on(
    service: PageRAG, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with TestClient(create_app(service, ui=False), raise_server_exceptions=False) as c:
        monkeypatch.setattr(service, "search", broken)
        response = c.post(f"{API}/search", json={"query": "x"})
        assert response.status_code == 500 and "boom" not in response.text
        monkeypatch.undo()
        assert c.post(f"{API}/search", json={"query": "x"}).status_code == 200
        assert c.app.state.work.stats()["running"] == 0  # type: ignore[attr-defined]


def test_status(client: TestClient) -> None:
    data = client.get(f"{API}/status").json()
    assert data["backend"] == "qdrant-edge" and data["pages"] >= 5
    assert data["retriever_loaded"] and data["queue"]["max_waiting"] == 16
    # Typed: every field of the service's info, and the queue (a new field must be added to
    # StatusOut, or the API would drop it).
    assert set(StatusOut.model_fields) == {f.name for f in fields(ServiceInfo)} | {"queue"}
    assert set(data) == set(StatusOut.model_fields)


# -- the OpenAPI contract (issue 11, items 11 and 16) -----------------------------------------


OPERATIONS = {
    ("post", "/api/v1/search"): "search",
    ("post", "/api/v1/ask"): "ask",
    ("post", "/api/v1/ask/stream"): "askStream",
    ("get", "/api/v1/documents"): "listDocuments",
    ("post", "/api/v1/documents"): "uploadDocuments",
    ("get", "/api/v1/documents/{doc_id}"): "getDocument",
    ("delete", "/api/v1/documents/{doc_id}"): "deleteDocument",
    ("patch", "/api/v1/documents/{doc_id}"): "updateDocument",
    ("get", "/api/v1/jobs"): "listJobs",
    ("get", "/api/v1/jobs/{job_id}"): "getJob",
    ("get", "/api/v1/documents/{doc_id}/pages/{page}/image"): "pageImage",
    ("get", "/api/v1/documents/{doc_id}/pages/{page}/heatmap"): "pageHeatmap",
    ("get", "/api/v1/status"): "status",
    ("get", "/healthz"): "health",
    ("get", "/readyz"): "ready",
}
LIBRARY_OPERATIONS = {
    (method, path.replace("/api/v1", "/api/v1/libraries/{library}", 1)): "library"
    + op[0].upper()
    + op[1:]
    for (method, path), op in OPERATIONS.items()
    if path.startswith("/api/v1/")
}
MANAGE_LIBRARIES = {
    ("get", "/api/v1/libraries"): "listLibraries",
    ("post", "/api/v1/libraries"): "createLibrary",
    ("get", "/api/v1/libraries/{library}"): "getLibrary",
    ("delete", "/api/v1/libraries/{library}"): "deleteLibrary",
}


def test_openapi_names_each_operation_and_declares_what_it_answers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    ops = {(m, p): op for p, item in schema["paths"].items() for m, op in item.items()}
    expected = OPERATIONS | LIBRARY_OPERATIONS | MANAGE_LIBRARIES
    assert {key: op.get("operationId") for key, op in ops.items()} == expected

    def codes(method: str, path: str) -> set[str]:
        return set(ops[(method, path)]["responses"])

    model = {"400", "413", "422", "429", "503", "504"}
    assert codes("post", f"{API}/search") == {"200"} | model
    assert codes("post", f"{API}/ask") == codes("post", f"{API}/ask/stream") == {"200"} | model
    assert codes("post", f"{API}/documents") == {"202", "400", "408", "413", "415", "429", "507"}
    assert codes("get", f"{API}/documents/{{doc_id}}") == {"200", "404", "409", "422"}
    assert codes("patch", f"{API}/documents/{{doc_id}}") == {"200", "400", "404", "409", "422"}
    assert codes("get", f"{API}/jobs/{{job_id}}") == {"200", "404", "422"}
    heatmap = f"{API}/documents/{{doc_id}}/pages/{{page}}/heatmap"
    assert codes("get", heatmap) >= {"200", "404", "409", "429", "503", "504"}
    assert codes("get", "/readyz") == {"200", "503"}
    assert "Retry-After" in ops[("post", f"{API}/search")]["responses"]["429"]["headers"]
    # Every error is JSON with one of the two error schemas.
    for op in ops.values():
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and op["operationId"] != "ready":
                [(media, content)] = response["content"].items()
                name = "ValidationProblem" if code == "422" else "Problem"
                assert (media, content["schema"]) == (
                    "application/json",
                    {"$ref": f"#/components/schemas/{name}"},
                ), (op["operationId"], code)
    # Binary responses are described as such; streaming is its own operation.
    png = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
    for key in [k for k, v in OPERATIONS.items() if v in ("pageImage", "pageHeatmap")]:
        assert ops[key]["responses"]["200"]["content"] == png
    assert list(ops[("post", f"{API}/ask")]["responses"]["200"]["content"]) == ["application/json"]
    stream = ops[("post", f"{API}/ask/stream")]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    # Typed bodies: status, readiness, job errors and warnings, the job's stage.
    components = schema["components"]["schemas"]

    def ref(key: tuple[str, str]) -> str:
        return str(ops[key]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"])

    assert ref(("get", f"{API}/status")).endswith("/StatusOut")
    assert ref(("get", "/readyz")).endswith("/ReadyOut")
    job = components["JobOut"]["properties"]
    assert job["errors"]["items"]["$ref"].endswith("/FileErrorOut")
    assert job["warnings"]["items"]["$ref"].endswith("/FileWarningOut")
    assert job["stage"]["type"] == "string"
    issue = components["ValidationProblem"]["properties"]["detail"]["anyOf"]
    assert {"type": "string"} in issue  # a malformed id; a list for a body that does not fit


def test_a_422_detail_is_a_list_for_a_bad_body_and_a_string_for_a_bad_id(
    client: TestClient,
) -> None:
    bad_body = client.post(f"{API}/search", json={"query": ""})
    assert bad_body.status_code == 422
    [issue] = bad_body.json()["detail"]
    assert issue["loc"] == ["body", "query"] and issue["msg"] and issue["type"]
    bad_id = client.get(f"{API}/jobs/nope")
    assert bad_id.status_code == 422 and "is not a job id" in bad_id.json()["detail"]


def test_messages_give_advice_an_api_client_can_follow(client: TestClient) -> None:
    unknown = client.get(f"{API}/documents/ffff")
    assert unknown.status_code == 404
    assert "GET /api/v1/documents lists them" in unknown.json()["detail"]
    short = client.get(f"{API}/documents/ab/pages/1/image")
    assert short.status_code == 422 and "GET /api/v1/documents" in short.json()["detail"]
    in_filter = client.post(f"{API}/search", json={"query": "x", "filter": {"doc_ids": ["zz"]}})
    assert in_filter.status_code == 422
    assert "GET /api/v1/documents" in in_filter.json()["detail"][0]["msg"]
    not_found = client.post(f"{API}/search", json={"query": "x", "filter": {"doc_ids": ["ffff"]}})
    assert not_found.status_code == 400 and "GET /api/v1/documents" in not_found.text
    for response in (unknown, short, in_filter, not_found):
        assert "pagerag " not in response.text


def test_every_command_line_advice_the_api_rewords_is_still_worded_so() -> None:
    # Messages not met above (a full disk, a vector store that keeps failing): the table's
    # phrases must still be the ones the ingestion writes.
    import ingest.runner
    from ingest.diskspace import RESUME
    from ingest.render import _pdfium_reason

    for message in (RESUME, _pdfium_reason(RuntimeError("Incorrect password error"))):
        assert "pagerag" not in api_words(message) and "--password" not in api_words(message)
    runner = Path(ingest.runner.__file__).read_text()
    assert "the next `pagerag ingest` run completes the document" in runner


def encrypted_pdf(path: Path, text: str, user: str) -> bytes:
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), encrypt=StandardEncryption(user, ownerPassword="owner"))
    pdf.drawString(72, 700, text)
    pdf.showPage()
    pdf.save()
    return path.read_bytes()


def test_uploads_open_encrypted_pdfs_with_the_passwords_sent(
    make_serving_service: Callable[..., PageRAG], tmp_path: Path
) -> None:
    svc = make_serving_service("api-passwords")
    locked = encrypted_pdf(tmp_path / "locked.pdf", "secret quarterly figures", "open sesame")
    other = encrypted_pdf(tmp_path / "other.pdf", "other secret", "second")
    try:
        with TestClient(create_app(svc, ui=False, warm_up=False)) as c:
            empty = c.post(f"{API}/ask", json={"question": "anything?"}).json()
            assert "POST /api/v1/documents" in empty["text"] and "pagerag" not in empty["text"]
            # No password: failed, with what to send.
            job = finished(c, upload(c, [("locked.pdf", locked)]).json()["id"])
            [error] = job["errors"]
            assert "encrypted" in error["error"] and "form field `password`" in error["error"]
            assert "--password" not in job["files"][0]["error"]
            # A wrong one, then per-file passwords.
            job = finished(
                c, upload(c, [("locked.pdf", locked)], data={"password": "no"}).json()["id"]
            )
            assert "password given for this PDF is wrong" in job["files"][0]["error"]
            both = {"locked.pdf": "open sesame", "other.pdf": "second"}
            sent = upload(
                c,
                [("locked.pdf", locked), ("other.pdf", other)],
                data={"passwords": json.dumps(both)},
            )
            assert sent.status_code == 202
            seen = []  # the job as it runs: counters only grow, the stage is named
            while (now := c.get(f"{API}/jobs/{sent.json()['id']}").json())["state"] in (
                "queued",
                "running",
            ):
                seen.append(now)
                time.sleep(0.01)
            seen.append(now)
            for name in ("files_done", "pages_done", "indexed_documents", "files_total"):
                counts = [j[name] for j in seen]
                assert counts == sorted(counts), (name, counts)
            stages = {j["stage"] for j in seen if j["state"] == "running"}
            assert stages <= {
                "reading",
                "loading the model",
                "rendering",
                "embedding",
                "storing",
                "done",
            }
            job = finished(c, sent.json()["id"])
            assert [f["status"] for f in job["files"]] == ["indexed", "indexed"], job
            assert job["indexed_documents"] == 2 and job["stage"] == "done"
            # `password` serves every file `passwords` leaves out.
            again = upload(c, [("other.pdf", other)], data={"password": "second"})
            assert finished(c, again.json()["id"])["files"][0]["status"] == "unchanged"
            # Malformed or naming a file not sent: 400, nothing staged.
            bad = upload(c, [("locked.pdf", locked)], data={"passwords": "[1, 2]"})
            assert bad.status_code == 400 and "JSON object" in bad.json()["detail"]
            stray = upload(c, [("locked.pdf", locked)], data={"passwords": '{"nope.pdf": "x"}'})
            assert stray.status_code == 400 and "'nope.pdf'" in stray.json()["detail"]
            assert not any(svc.settings.uploads_dir.rglob("*.upload"))
            # Passwords are never stored with the job records.
            jobs = c.app.state.jobs  # type: ignore[attr-defined]
            with jobs.store._lock:
                records = [r for (r,) in jobs.store._db.execute("SELECT record FROM jobs")]
            assert records and not any("open sesame" in r or "second" in r for r in records)
    finally:
        svc.close()


# -- `pagerag serve` ------------------------------------------------------------------------------


def test_serve_command_builds_the_app_and_ingests_docs_in_the_background(
    tmp_path: Path, tiny_colqwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.cli import app
    from rag.server import run as serving

    folder = tmp_path / "docs"
    make_pdf(folder / "a.pdf", ["alpha"])
    seen: dict[str, Any] = {}

    def fake_run(server_app: Any, host: str, port: int) -> None:
        seen.update(host=host, port=port)
        with TestClient(server_app) as c:  # runs the start-up: the folder job is submitted
            assert c.get("/healthz").status_code == 200
            [job] = c.get(f"{API}/jobs").json()["jobs"]
            seen["job"] = server_app.state.jobs.wait(job["id"])
            seen["shown"] = c.get(f"{API}/jobs/{job['id']}").json()

    monkeypatch.setattr(serving, "serve", fake_run)
    monkeypatch.setenv("PAGERAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PAGERAG_RETRIEVER_MODEL", str(tiny_colqwen_dir))
    monkeypatch.setenv("PAGERAG_GENERATOR_MODEL", str(tmp_path / "no-generator"))
    monkeypatch.setenv("PAGERAG_DEVICE", "cpu")
    monkeypatch.setenv("PAGERAG_MAX_VISUAL_TOKENS", "32")
    monkeypatch.setenv("PAGERAG_RENDER_DPI", "50")
    result = CliRunner().invoke(app, ["serve", "--port", "7999", "--docs", str(folder)])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7999
    assert seen["job"].kind == "folder" and seen["job"].indexed_documents == 1
    assert seen["shown"]["kind"] == "folder" and seen["shown"]["indexed_documents"] == 1
    missing = CliRunner().invoke(app, ["serve", "--docs", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such file" in missing.output
