"""Named libraries: isolation on both index backends, the REST routes, scoped keys (403)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from qdrant_client import QdrantClient

from rag import libraries
from rag.index.server import ServerIndex
from rag.keys import add_key, keys_path
from rag.libraries import Libraries, LibraryError, LibraryExists, UnknownLibrary
from rag.server.app import create_app
from rag.service import PageRAG
from rag.types import SearchFilter
from tests.pdfs import make_pdf

API = "/api/v1"


class SharedServerIndex(ServerIndex):
    """One Qdrant engine (qdrant-client's local mode) holding every library's collection,
    as one Qdrant server would: closing a library must not close the engine."""

    def close(self) -> None:
        pass


def pdf(folder: Path, name: str, words: str) -> Path:
    return make_pdf(folder / name, [f"{words} page one", f"{words} page two"], title=name)


@pytest.fixture(params=["edge", "qdrant"])
def libs(
    request: pytest.FixtureRequest,
    make_serving_service: Callable[..., PageRAG],
) -> Iterator[Libraries]:
    if request.param == "edge":
        first = make_serving_service("libs-edge")
        made = Libraries(first.settings, first=first)
    else:
        engine = QdrantClient(location=":memory:")

        def open_index(settings: Any) -> ServerIndex:
            return SharedServerIndex(engine, settings.qdrant_collection)

        first = make_serving_service("libs-qdrant")
        first.index.close()
        first.index = open_index(first.settings)
        first.library.index = first.index
        made = Libraries(first.settings, first=first, open_index=open_index)
        made.engine = engine  # type: ignore[attr-defined]
    yield made
    made.close()


def test_two_libraries_stay_apart(libs: Libraries, tmp_path: Path) -> None:
    libs.create("team-a")
    libs.create("team-b", {"search_mode": "text"})
    assert libs.names() == ["default", "team-a", "team-b"]
    a, b = libs.get("team-a"), libs.get("team-b")
    assert a.models is b.models is libs.get("default").models  # one model for all
    assert b.settings.search_mode == "text" and a.settings.search_mode == "hybrid"
    a.ingest([pdf(tmp_path / "a", "alpha.pdf", "Alpha revenue")])
    b.ingest([pdf(tmp_path / "b", "beta.pdf", "Beta revenue")])
    [doc_a], [doc_b] = a.documents(), b.documents()
    assert libs.get("default").documents() == []
    for mode in ("visual", "text", "hybrid"):
        assert {h.doc_id for h in a.search("revenue page", 10, mode=mode)} == {doc_a.doc_id}
        assert {h.doc_id for h in b.search("revenue page", 10, mode=mode)} == {doc_b.doc_id}
    # Another library's document id is unknown here, as a filter too.
    with pytest.raises(Exception, match="no document"):
        a.resolve(doc_b.doc_id)
    assert a.search("revenue", 10, SearchFilter(doc_ids=(doc_b.doc_id,)), mode="text") == []
    # Page images live apart, under the folder the web UI serves.
    image = Path(a.search("alpha", 1, mode="text")[0].image)
    assert image.is_relative_to(libraries.pages_root(libs.root) / "team-a")
    # Deleting in one library, then the library itself, leaves the other whole.
    b.delete(doc_b.doc_id)
    assert b.documents() == [] and [d.doc_id for d in a.documents()] == [doc_a.doc_id]
    libs.delete("team-b")
    assert libs.names() == ["default", "team-a"]
    assert not libraries.library_dir(libs.root, "team-b").exists()
    assert len(a.search("alpha revenue", 10, mode="visual")) == 2
    if hasattr(libs, "engine"):  # a Qdrant server: one collection per library
        names = {c.name for c in libs.engine.get_collections().collections}
        assert names == {"pagerag", "pagerag-team-a"}


def test_library_names_and_settings_are_checked(tmp_path: Path) -> None:
    from rag.config import Settings

    root = Settings(_env_file=None, data_dir=tmp_path)
    for bad in ("", "A", "-x", "a/b", "..", "x" * 41, "é"):
        with pytest.raises(LibraryError, match="not a library name"):
            libraries.create(root, bad)
    libraries.create(root, "ok")
    with pytest.raises(LibraryExists):
        libraries.create(root, "ok")
    with pytest.raises(LibraryError, match="cannot set data_dir"):
        libraries.create(root, "x1", {"data_dir": "/etc"})
    with pytest.raises(LibraryError, match="PAGERAG_SEARCH_MODE"):
        libraries.create(root, "x2", {"search_mode": "fuzzy"})
    assert not libraries.exists(root, "x2")
    with pytest.raises(UnknownLibrary, match="pagerag libraries create nope"):
        libraries.settings_for(root, "nope")
    with pytest.raises(LibraryError, match="cannot be deleted"):
        libraries.remove(root, "default")
    own = libraries.settings_for(root, "ok")
    assert own.data_dir == tmp_path / "libraries" / "ok"
    assert own.qdrant_collection == "pagerag-ok" and libraries.root_dir(own) == tmp_path


# -- REST -------------------------------------------------------------------------------------


def wait_job(client: TestClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    end = time.monotonic() + 120
    while True:
        job = client.get(url, headers=headers).json()
        if job["stage"] in ("done", "failed"):
            return job
        assert time.monotonic() < end, job
        time.sleep(0.1)


def test_rest_libraries_and_scoped_keys(
    make_serving_service: Callable[..., PageRAG], tmp_path: Path
) -> None:
    service = make_serving_service("libs-rest", api_keys="root-key")
    keys = keys_path(service.settings)
    reader = add_key(keys, "a-reader", "read", ["a"])
    writer = add_key(keys, "a-writer", "write", ["a"])
    root = {"Authorization": "Bearer root-key"}
    as_reader = {"Authorization": f"Bearer {reader}"}
    as_writer = {"Authorization": f"Bearer {writer}"}
    files = {"files": ("alpha.pdf", pdf(tmp_path, "alpha.pdf", "Alpha").read_bytes())}
    with TestClient(create_app(service, ui=False, warm_up=False)) as c:
        # Managing libraries needs an admin key for every library.
        denied = c.post(f"{API}/libraries", json={"name": "a"}, headers=as_writer)
        assert denied.status_code == 403 and "admin" in denied.json()["detail"]
        for name in ("a", "b"):
            made = c.post(f"{API}/libraries", json={"name": name}, headers=root)
            assert made.status_code == 201 and made.json()["url"].endswith(f"/libraries/{name}")
        assert c.post(f"{API}/libraries", json={"name": "a"}, headers=root).status_code == 409
        assert c.post(f"{API}/libraries", json={"name": "A!"}, headers=root).status_code == 422
        listed = c.get(f"{API}/libraries", headers=root).json()["libraries"]
        assert [x["name"] for x in listed] == ["default", "a", "b"]
        shown = c.get(f"{API}/libraries", headers=as_reader).json()["libraries"]
        assert [x["name"] for x in shown] == ["a"]  # only what the key may see
        # A read key cannot upload; a write key for `a` can, into `a` only.
        refused = c.post(f"{API}/libraries/a/documents", files=files, headers=as_reader)
        assert refused.status_code == 403
        assert "may only read library 'a'" in refused.json()["detail"]
        assert "--role write" in refused.json()["detail"]
        up = c.post(f"{API}/libraries/a/documents", files=files, headers=as_writer)
        assert up.status_code == 202, up.text
        assert "/api/v1/libraries/a/jobs/" in up.headers["location"]
        assert wait_job(c, up.headers["location"], as_writer)["stage"] == "done"
        # The reader finds it in `a`; `b` and the default library are out of its scope.
        hits = c.post(f"{API}/libraries/a/search", json={"query": "alpha"}, headers=as_reader)
        assert hits.status_code == 200 and {h["title"] for h in hits.json()["hits"]} == {
            "alpha.pdf"
        }
        assert "/api/v1/libraries/a/documents/" in hits.json()["hits"][0]["image_url"]
        image = c.get(hits.json()["hits"][0]["image_url"], headers=as_reader)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        for path in (f"{API}/libraries/b/search", f"{API}/search"):
            out = c.post(path, json={"query": "alpha"}, headers=as_reader)
            assert out.status_code == 403, path
            assert "not library" in out.json()["detail"]
        # Another library does not see `a`'s document.
        b_hits = c.post(f"{API}/libraries/b/search", json={"query": "alpha"}, headers=root)
        assert b_hits.status_code == 200 and b_hits.json()["hits"] == []
        assert c.get(f"{API}/documents", headers=root).json()["documents"] == []
        [doc] = c.get(f"{API}/libraries/a/documents", headers=root).json()["documents"]
        other = c.get(f"{API}/libraries/b/documents/{doc['doc_id']}", headers=root)
        assert other.status_code == 404
        # Unknown library: 404; no key: 401; the default one cannot go.
        assert c.get(f"{API}/libraries/zz/documents", headers=root).status_code == 404
        assert c.get(f"{API}/libraries/a/documents").status_code == 401
        assert c.delete(f"{API}/libraries/default", headers=root).status_code == 400
        # Deleting a library needs admin; then its routes are gone.
        assert c.delete(f"{API}/libraries/a", headers=as_writer).status_code == 403
        assert c.delete(f"{API}/libraries/a", headers=root).status_code == 200
        assert c.get(f"{API}/libraries/a/documents", headers=root).status_code == 404
        assert not libraries.library_dir(service.settings, "a").exists()
    service.close()


def test_mcp_endpoint_takes_scoped_keys(make_serving_service: Callable[..., PageRAG]) -> None:
    """/mcp acts on the server's library: a key for another library gets 403 before the MCP
    SDK sees the request, a key for it passes (the SDK then answers the protocol)."""
    service = make_serving_service("libs-mcp")
    keys = keys_path(service.settings)
    other = add_key(keys, "b-reader", "read", ["b"])
    mine = add_key(keys, "default-reader", "read", ["default"])
    hello = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    with TestClient(create_app(service, ui=False, warm_up=False)) as c:
        assert c.post("/mcp", json=hello, headers=accept).status_code == 401
        out = c.post("/mcp", json=hello, headers={**accept, "Authorization": f"Bearer {other}"})
        assert out.status_code == 403 and "not library 'default'" in out.json()["detail"]
        ok = c.post("/mcp", json=hello, headers={**accept, "Authorization": f"Bearer {mine}"})
        assert ok.status_code not in (401, 403), ok.text
    service.close()
