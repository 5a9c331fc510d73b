"""A client nobody here wrote: openapi-python-client generates one from the running server's
/openapi.json, and the test drives the whole API path through it (issue 11, item 11):
upload (a real PDF), the job, search, ask (JSON and streamed), the page image, the heatmap,
status and delete. Undeclared statuses raise (`raise_on_unexpected_status`), so every
answer met here must be in the schema, with a body that parses as the schema says."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from rag.server.app import create_app
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import running_server

# The generator's own setting for binary types it does not know by name (it maps
# application/octet-stream to `File`); nothing else is configured. Post-hooks (ruff) are off:
# they only format the generated code.
CONFIG = """\
content_type_overrides:
  image/png: application/octet-stream
post_hooks: []
"""


@pytest.fixture(scope="module")
def server(
    make_serving_service: Callable[..., PageRAG], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    service = make_serving_service("openapi-client")
    try:
        with running_server(create_app(service, ui=False)) as url:
            yield url
    finally:
        service.close()


@pytest.fixture(scope="module")
def generated(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The package openapi-python-client generates from the server's /openapi.json."""
    folder = tmp_path_factory.mktemp("generated")
    spec = folder / "openapi.json"
    spec.write_text(json.dumps(httpx.get(f"{server}/openapi.json").json()))
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    out = folder / "pagerag_client"
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none"]
    run = subprocess.run(
        [*command, "--path", str(spec), "--output-path", str(out), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # Every operation and response was understood: nothing is left out of the client.
    assert "WARNING" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("pagerag_client")
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.split(".")[0] == "pagerag_client"]:
            del sys.modules[name]


def api(generated: ModuleType, name: str) -> Any:
    """A generated operation module, by its operation id's module name."""
    [module] = [
        importlib.import_module(f"pagerag_client.api.{tag}.{name}")
        for tag in ("documents", "pages", "search", "status")
        if (Path(generated.__file__).parent / "api" / tag / f"{name}.py").exists()
    ]
    return module


def events(text: str) -> list[tuple[str, Any]]:
    parsed = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


def test_a_generated_client_drives_upload_job_search_ask_pages_and_delete(
    server: str, generated: ModuleType, tmp_path: Path
) -> None:
    from pagerag_client import Client
    from pagerag_client.models import (
        AskIn,
        JobOut,
        Problem,
        QuestionIn,
        ReadyOut,
        SearchIn,
        StatusOut,
        UploadDocumentsBody,
        ValidationProblem,
    )
    from pagerag_client.types import File

    client = Client(base_url=server, timeout=httpx.Timeout(60), raise_on_unexpected_status=True)

    deadline = time.monotonic() + 30
    while not isinstance(ready := api(generated, "ready").sync(client=client), ReadyOut) or (
        ready.status.value != "ready"
    ):
        assert time.monotonic() < deadline, ready
        time.sleep(0.1)
    assert api(generated, "health").sync(client=client).status == "ok"

    # Upload a real PDF; follow its job to the end.
    pdf = make_pdf(tmp_path / "permits.pdf", ["Permits 2015", "Totals by month"]).read_bytes()
    body = UploadDocumentsBody(files=[File(BytesIO(pdf), "permits.pdf", "application/pdf")])
    job = api(generated, "upload_documents").sync(client=client, body=body)
    assert isinstance(job, JobOut) and job.kind.value == "upload", job
    while job.state.value in ("queued", "running"):
        time.sleep(0.05)
        job = api(generated, "get_job").sync(job.id, client=client)
        assert isinstance(job, JobOut)
    assert job.state.value == "done" and job.stage == "done", job
    assert job.errors == [] and job.indexed_documents == 1 and job.pages_done == 2
    [done] = job.files
    assert done.status.value == "indexed" and isinstance(done.doc_id, str)
    doc_id = done.doc_id
    listed = api(generated, "list_jobs").sync(client=client)
    assert listed.jobs[0].id == job.id

    # Search; the hit's page image and heatmap come back as files.
    found = api(generated, "search").sync(client=client, body=SearchIn(query="Permits", top_k=2))
    assert {h.doc_id for h in found.hits} == {doc_id} and len(found.hits) == 2
    image = api(generated, "page_image").sync(doc_id, 1, client=client)
    assert isinstance(image, File) and image.payload.read().startswith(b"\x89PNG")
    heatmap = api(generated, "page_heatmap").sync_detailed(doc_id, 1, client=client, query="x")
    assert isinstance(heatmap.parsed, File) and heatmap.parsed.payload.read()[:4] == b"\x89PNG"
    assert math.isfinite(float(heatmap.headers["x-pagerag-score"]))

    # Ask, as JSON and as a stream.
    answer = api(generated, "ask").sync(client=client, body=AskIn(question="Which year?"))
    assert answer.text and [c.label for c in answer.citations] == [1, 2]
    streamed = api(generated, "ask_stream").sync(
        client=client, body=QuestionIn(question="Which year?")
    )
    assert isinstance(streamed, str)
    *tokens, (last, final) = events(streamed)
    assert last == "answer" and {name for name, _ in tokens} == {"token"}
    assert "".join(t["text"] for _, t in tokens) == final["text"]

    status = api(generated, "status").sync(client=client)
    assert isinstance(status, StatusOut) and status.documents == 1 and status.queue.served >= 3

    # Errors parse as the schema says: both shapes of a 422, a 404.
    bad = api(generated, "search").sync(client=client, body=SearchIn(query=""))
    assert isinstance(bad, ValidationProblem) and isinstance(bad.detail, list)
    bad_id = api(generated, "get_job").sync("nope", client=client)
    assert isinstance(bad_id, ValidationProblem) and isinstance(bad_id.detail, str)

    # Delete; the document is gone.
    deleted = api(generated, "delete_document").sync(doc_id, client=client)
    assert deleted.deleted.doc_id == doc_id
    gone = api(generated, "get_document").sync(doc_id, client=client)
    assert isinstance(gone, Problem) and "GET /api/v1/documents lists them" in gone.detail
    assert api(generated, "list_documents").sync(client=client).documents == []
