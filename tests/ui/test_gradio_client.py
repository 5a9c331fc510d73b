"""The web UI's events as other programs call them: gradio_client (a client nobody here wrote)
against the real server (uvicorn, the tiny models, the UI mounted). Public events have names
(ask, search, upload, delete, documents, status), internal ones are hidden, and a fresh session
can filter and delete by document id without loading the page's menus first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.server.app import create_app
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import make_library, running_server

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
PUBLIC = {"/ask", "/search", "/upload", "/delete", "/documents", "/status"}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("gradio-client")
    svc.ingest([make_library(tmp_path_factory.mktemp("gradio-client-library"))])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service: PageRAG) -> Iterator[str]:
    with running_server(create_app(service, warm_up=False)) as url:
        yield url


def client(server: str) -> Any:
    from gradio_client import Client

    return Client(server, verbose=False, download_files=False)  # a fresh session each time


def test_the_public_endpoints_have_names_and_labels(server: str) -> None:
    api = client(server).view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == PUBLIC
    assert api["unnamed_endpoints"] == {}  # no /on_ask_1, /lambda, /lambda_1 ...
    ask = api["named_endpoints"]["/ask"]
    assert [p["parameter_name"] for p in ask["parameters"]] == [
        "question",
        "k",
        "docs",
        "show_map",
        "mode",
        "tags",  # last, with a default: clients that send five values still work
    ]
    search = api["named_endpoints"]["/search"]
    assert [p["parameter_name"] for p in search["parameters"]] == [
        "question",
        "k",
        "mode",
        "docs",
        "tags",
    ]
    for endpoint in api["named_endpoints"].values():  # every value has a name of its own
        assert not [r for r in endpoint["returns"] if r["label"].startswith("value_")]


def test_search_and_documents_return_json(server: str, service: PageRAG) -> None:
    c = client(server)
    docs = c.predict(api_name="/documents")
    assert {d["source"] for d in docs} >= {"report.pdf", "minutes.pdf"}
    report = next(d for d in docs if d["source"] == "report.pdf")
    assert report["pages"] == 3 and len(report["doc_id"]) == 64
    hits = c.predict("Revenue 2015", 3, "text", [], api_name="/search")
    assert hits and hits[0]["source"] == "report.pdf" and hits[0]["page"] == 1
    assert set(hits[0]) == {"label", "doc_id", "source", "title", "page", "score"}
    assert c.predict("Revenue 2015", 3, "text", [], ["no-such-tag"], api_name="/search") == []
    # A fresh session filters by an id prefix it never saw in a menu (resolved server-side).
    [minutes] = [d["doc_id"] for d in docs if d["source"] == "minutes.pdf"]
    only = client(server).predict("Budget", 5, "visual", [minutes[:8]], api_name="/search")
    assert {h["source"] for h in only} == {"minutes.pdf"} and len(only) == 2
    chat, pages, _chips, note, question = client(server).predict(
        "Budget?", 2, [minutes], False, "visual", api_name="/ask"
    )
    assert chat[-1]["role"] == "assistant" and chat[-1]["content"]
    assert len(pages) == 2 and all("minutes.pdf" in p["caption"] for p in pages)
    assert "retrieval" in note and question == ""
    with pytest.raises(Exception, match="no document with id"):
        client(server).predict("Budget", 5, "text", ["abcdef12"], api_name="/search")


def test_upload_a_pdf_then_delete_it_from_fresh_sessions(server: str, tmp_path: Path) -> None:
    from gradio_client import handle_file

    pdf = make_pdf(tmp_path / "client upload.pdf", ["Client page one", "Client page two"])
    progress, _files, _password, report = client(server).predict(
        [handle_file(str(pdf))], "", api_name="/upload"
    )
    assert "Added 1 document (2 pages)" in report and progress == ""
    docs = client(server).predict(api_name="/documents")
    [doc] = [d for d in docs if d["source"] == "client upload.pdf"]
    # Delete by id in a session that never loaded the menus: no /refresh needed first.
    done = client(server).predict(doc["doc_id"][:12], api_name="/delete")
    assert done == "Deleted **client upload.pdf** (2 pages)."
    assert "client upload.pdf" not in {
        d["source"] for d in client(server).predict(api_name="/documents")
    }
    again = client(server).predict(doc["doc_id"][:12], api_name="/delete")
    assert "no document with id" in again and "pagerag" not in again
    assert "Library tab lists them" in again


def test_status_is_a_table(server: str) -> None:
    text = client(server).predict(api_name="/status")
    assert "| Retriever |" in text and "Model queue" in text
