"""A document's title and tags changed after ingestion: through the service, PATCH
/api/v1/documents/{id} and `pagerag docs edit`; search filters by the new tags at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rag.cli import app as cli
from rag.server.app import create_app
from rag.service import PageRAG, PageRAGError
from rag.types import SearchFilter
from tests.serving import make_library

API = "/api/v1"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, make_serving_service: Callable[..., PageRAG]
) -> Iterator[PageRAG]:
    svc = make_serving_service("edit")
    svc.ingest([make_library(tmp_path_factory.mktemp("edit-library"))])
    yield svc
    svc.close()


def report_id(service: PageRAG) -> str:
    [doc] = [d for d in service.documents() if d.source == "report.pdf"]
    return doc.doc_id


def test_new_tags_filter_search_at_once_and_survive_a_reopen(service: PageRAG) -> None:
    doc = report_id(service)
    info = service.update_document(
        doc[:8], title="  Annual   report ", tags=["q4", "finance", "q4"]
    )
    assert (info.title, info.tags) == ("Annual report", ("finance", "q4"))
    hits = service.search("Revenue", 10, SearchFilter(tags=("q4",)), mode="text")
    assert hits and {h.doc_id for h in hits} == {doc} and hits[0].title == "Annual report"
    assert service.update_document(doc, tags=[]).tags == ()  # [] clears, None keeps the title
    assert service.document(doc).title == "Annual report"
    assert not service.search("Revenue", 10, SearchFilter(tags=("q4",)), mode="text")


def test_bad_titles_and_tags_say_what_is_allowed(service: PageRAG) -> None:
    doc = report_id(service)
    with pytest.raises(PageRAGError, match="a title needs 1 to 300 characters"):
        service.update_document(doc, title="   ")
    with pytest.raises(PageRAGError, match="at most 32 tags of 1 to 64 printable"):
        service.update_document(doc, tags=["x" * 65])
    with pytest.raises(PageRAGError, match="no document with id"):
        service.update_document("ffff", title="x")


def test_patch_changes_and_validates(service: PageRAG) -> None:
    doc = report_id(service)
    with TestClient(create_app(service)) as client:
        done = client.patch(
            f"{API}/documents/{doc[:10]}", json={"title": "Report 2015", "tags": ["audit"]}
        )
        assert done.status_code == 200, done.text
        assert (done.json()["title"], done.json()["tags"]) == ("Report 2015", ["audit"])
        listed = client.get(f"{API}/documents").json()["documents"]
        assert any(d["doc_id"] == doc and d["tags"] == ["audit"] for d in listed)
        found = client.post(
            f"{API}/search",
            json={"query": "Revenue", "mode": "text", "filter": {"tags": ["audit"]}},
        ).json()["hits"]
        assert found and {h["doc_id"] for h in found} == {doc}
        assert client.patch(f"{API}/documents/{doc}", json={"colour": "red"}).status_code == 422
        assert client.patch(f"{API}/documents/{doc}", json={"tags": ["x" * 65]}).status_code == 422
        assert client.patch(f"{API}/documents/ffff", json={"title": "x"}).status_code == 404


def test_cli_edit(service: PageRAG, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    doc = report_id(service)
    service.close()  # the CLI opens the data directory itself
    s = service.settings
    for name, value in {
        "DATA_DIR": s.data_dir,
        "RETRIEVER_MODEL": s.retriever_model,
        "MAX_VISUAL_TOKENS": s.max_visual_tokens,
        "RENDER_DPI": s.render_dpi,
        "DEVICE": "cpu",
    }.items():
        monkeypatch.setenv(f"PAGERAG_{name}", str(value))
    runner = CliRunner()
    done = runner.invoke(cli, ["docs", "edit", doc[:8], "--title", "Board report", "-t", "board"])
    assert done.exit_code == 0, done.output
    assert "'Board report', board" in done.output
    assert runner.invoke(cli, ["docs", "edit", doc[:8]]).exit_code == 2  # nothing to change
    listed = runner.invoke(cli, ["docs", "list", "--json"])
    assert '"Board report"' in listed.output and '"board"' in listed.output
