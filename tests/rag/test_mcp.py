"""The MCP server on the tiny models, driven by the MCP SDK's own client over both transports:
streamable HTTP at /mcp of a running server (API keys, the shared model queue) and stdio
(`python -m rag.server.mcp`, with `add_files`): tools, search, answers, page images, and the
bad inputs that must come back as tool errors with a clear message."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, ImageContent, TextContent

from rag.server.app import create_app
from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG
from tests.serving import make_library, running_server

KEY, OTHER_KEY = "mcp-test-key", "another-key"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(main)


def text(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def images(result: CallToolResult) -> list[bytes]:
    return [base64.b64decode(c.data) for c in result.content if isinstance(c, ImageContent)]


def error(result: CallToolResult) -> str:
    assert result.is_error, result
    return text(result)


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    make_serving_service: Callable[..., PageRAG],
    corpus: Path,
) -> Iterator[PageRAG]:
    svc = make_serving_service("mcp", api_keys=f"{KEY},{OTHER_KEY}")
    library = make_library(tmp_path_factory.mktemp("mcp-library"))
    shutil.copy(corpus / "hello_structure.pdf", library / "hello.pdf")  # a real PDF, 2 pages
    report = svc.ingest([library])
    assert report.indexed_documents == 3 and not report.failed, report
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service: PageRAG) -> Iterator[tuple[str, Any]]:
    """The whole app `pagerag serve` runs (web UI included: /mcp must win over its catch-all
    mount at /), under uvicorn; yields the /mcp URL and the app."""
    app = create_app(service)
    with running_server(app) as base:
        yield f"{base}/mcp", app


@asynccontextmanager
async def connect(url: str, key: str | None = KEY, mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, read_timeout_seconds=60) as client:
            yield client


def doc_id(service: PageRAG, source: str) -> str:
    [doc] = [d for d in service.documents() if d.source == source]
    return doc.doc_id


# -- streamable HTTP -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # 2025 sessions; the 2026 per-request wire
def test_http_tools_search_ask_and_images(
    server: tuple[str, Any], service: PageRAG, mode: str
) -> None:
    url, _ = server
    report = doc_id(service, "report.pdf")

    async def main() -> None:
        async with connect(url, mode=mode) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            # add_files opens local paths: stdio only, never over the network.
            assert set(tools) == {"search_pages", "ask", "list_documents", "get_page_image"}
            search_schema = tools["search_pages"].input_schema["properties"]
            assert search_schema["top_k"]["maximum"] == 100  # the REST API's limits
            assert search_schema["query"]["maxLength"] == 4000
            assert tools["search_pages"].annotations.read_only_hint

            found = await client.call_tool(
                "search_pages",
                {"query": "Total 2015", "top_k": 4, "mode": "visual", "include_images": True},
            )
            assert not found.is_error, text(found)
            hits = found.structured_content["hits"]
            assert [h["rank"] for h in hits] == [1, 2, 3, 4]
            assert {"doc_id", "source", "title", "page", "score"} <= set(hits[0])
            assert json.loads(text(found))["hits"] == hits  # the text carries the same
            pictures = images(found)
            assert len(pictures) == found.structured_content["images"] == 4
            assert all(p.startswith(PNG_MAGIC) for p in pictures)
            # The first image is the best hit's stored page, byte for byte.
            best = hits[0]
            stored = service.library.images.path(best["doc_id"], best["page"]).read_bytes()
            assert pictures[0] == stored

            only = await client.call_tool(
                "search_pages", {"query": "Total", "doc_ids": [report[:8]], "top_k": 10}
            )
            assert {h["doc_id"] for h in only.structured_content["hits"]} == {report}
            assert not images(only)

            answer = await client.call_tool("ask", {"question": "What is the total?", "top_k": 2})
            assert not answer.is_error, text(answer)
            body = answer.structured_content
            assert [c["label"] for c in body["citations"]] == [1, 2]
            assert text(answer).startswith(body["answer"])
            for c in body["citations"]:
                assert f"[{c['label']}] {c['source']}, page {c['page']}" in text(answer)

            listed = await client.call_tool("list_documents", {})
            docs = listed.structured_content
            assert docs["total"] == 3
            assert {d["source"] for d in docs["documents"]} == {
                "report.pdf",
                "minutes.pdf",
                "hello.pdf",
            }
            assert (
                len(
                    (await client.call_tool("list_documents", {"limit": 1})).structured_content[
                        "documents"
                    ]
                )
                == 1
            )

            page = await client.call_tool("get_page_image", {"doc_id": report[:6], "page": 3})
            assert not page.is_error, text(page)
            [png] = images(page)
            assert png == service.library.images.path(report, 3).read_bytes()
            assert report in text(page)

    run(main)


def test_http_bad_inputs_are_tool_errors(server: tuple[str, Any], service: PageRAG) -> None:
    url, _ = server
    report = doc_id(service, "report.pdf")

    async def main() -> None:
        async with connect(url) as client:

            async def call(name: str, **args: Any) -> str:
                return error(await client.call_tool(name, args))

            assert "query" in await call("search_pages", query="")
            assert "at least 1 character" in await call("search_pages", query="")
            assert "the question is empty" in await call("search_pages", query="   ")
            assert "top_k" in await call("search_pages", query="a", top_k=0)
            assert "less than or equal to 100" in await call("search_pages", query="a", top_k=101)
            assert "less than or equal to 20" in await call("ask", question="a", top_k=21)
            assert "mode" in await call("search_pages", query="a", mode="fuzzy")
            # Ids are checked as the REST routes check them (rag/ids.py), worded for tools.
            bad = await call("get_page_image", doc_id="../../etc/passwd", page=1)
            assert "is not a document id" in bad and "list_documents lists them" in bad
            assert "too short" in await call("get_page_image", doc_id="ab", page=1)
            missing = await call("get_page_image", doc_id="abcdef12", page=1)
            assert "no document with id 'abcdef12'" in missing
            assert "list_documents" in missing
            assert "no page 99" in await call("get_page_image", doc_id=report, page=99)
            assert "less than or equal to" in await call(
                "get_page_image", doc_id=report, page=10**9
            )
            assert "is not a document id" in await call(
                "search_pages", query="a", doc_ids=["not-hex!"]
            )
            assert "no document with id" in await call("ask", question="a", doc_ids=["abcdef12"])
            # The server still works after all that.
            assert not (await client.call_tool("search_pages", {"query": "Budget"})).is_error

    run(main)


def test_http_full_queue_is_a_tool_error(server: tuple[str, Any]) -> None:
    """MCP waits in the same model queue as the REST API: a full line refuses at once."""
    url, app = server
    original = app.state.work
    app.state.work = WorkQueue(max_waiting=0, timeout=5)
    held = app.state.work.acquire()  # the model is busy
    try:

        async def main() -> str:
            async with connect(url) as client:
                return error(await client.call_tool("search_pages", {"query": "Total"}))

        message = run(main)
        assert "the server is busy" in message and "try again in" in message
    finally:
        held.release()
        app.state.work = original


def test_http_deadline_answers_in_time_and_holds_the_model_until_done(
    server: tuple[str, Any], service: PageRAG
) -> None:
    """Past PAGERAG_REQUEST_TIMEOUT the caller is answered at once, but the model's place in
    the queue stays taken until the abandoned work has really ended."""
    url, app = server
    original = app.state.work
    work = app.state.work = WorkQueue(max_waiting=4, timeout=1.0)
    try:

        async def main() -> str:
            async with connect(url) as client:
                started = anyio.current_time()
                result = await client.call_tool("search_pages", {"query": "a", "mode": "visual"})
                assert anyio.current_time() - started < 10
                return error(result)

        with service._model_lock:  # the model is busy: the admitted search cannot finish
            message = run(main)
            assert "did not finish within its 1 s deadline" in message
            assert "PAGERAG_REQUEST_TIMEOUT" in message
            assert work.stats()["running"] == 1  # still held by the search's thread
        deadline = time.monotonic() + 10
        while work.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert work.stats()["running"] == 0 and work.stats()["served"] == 1
    finally:
        app.state.work = original


def test_http_needs_the_api_key(server: tuple[str, Any]) -> None:
    url, _ = server
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.post(url, json=hello, headers=headers)
        assert response.status_code == 401, response.text
        assert "PAGERAG_API_KEYS" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"

    async def main(key: str | None) -> None:
        async with connect(url, key=key) as client:
            await client.list_tools()

    for key in (None, "wrong-key"):  # the SDK's client reports the 401 as an MCPError
        with pytest.raises(BaseExceptionGroup) as caught:
            run(lambda key=key: main(key))
        assert caught.group_contains(MCPError)

    # A 2025-protocol session answers only the key that opened it.
    wire = {"Accept": "application/json, text/event-stream"}
    opened = httpx.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        headers={**wire, "Authorization": f"Bearer {KEY}"},
    )
    assert opened.status_code == 200, opened.text
    session = {**wire, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
    session["MCP-Protocol-Version"] = "2025-06-18"
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    other = httpx.post(
        url, json=listing, headers={**session, "Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert other.status_code == 404, other.text
    mine = httpx.post(url, json=listing, headers={**session, "Authorization": f"Bearer {KEY}"})
    assert mine.status_code == 200 and "search_pages" in mine.text
    httpx.delete(url, headers={**session, "Authorization": f"Bearer {KEY}"})


# -- stdio ---------------------------------------------------------------------------------------


def test_stdio_add_files_then_search_ask_and_image(
    tmp_path: Path, corpus: Path, tiny_colqwen_dir: Path, tiny_generator_dir: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(corpus / "hello_structure.pdf", folder / "hello.pdf")
    shutil.copy(corpus / "password-example.pdf", folder / "locked.pdf")  # encrypted
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PAGERAG_")},
        "PAGERAG_DATA_DIR": str(tmp_path / "data"),
        "PAGERAG_RETRIEVER_MODEL": str(tiny_colqwen_dir),
        "PAGERAG_GENERATOR_MODEL": str(tiny_generator_dir),
        "PAGERAG_DEVICE": "cpu",
        "PAGERAG_DTYPE": "float32",
        "PAGERAG_MAX_VISUAL_TOKENS": "32",
        "PAGERAG_RENDER_DPI": "50",
        "PAGERAG_GEN_MIN_PIXELS": str(4 * 28 * 28),
        "PAGERAG_GEN_MAX_PIXELS": str(16 * 28 * 28),
        "PAGERAG_VISUAL_TOKEN_BUDGET": "64",
        "PAGERAG_MAX_NEW_TOKENS": "4",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "rag.server.mcp"], env=env, cwd=str(tmp_path)
    )

    async def main() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {"search_pages", "ask", "list_documents", "get_page_image", "add_files"}

            empty = await client.call_tool("ask", {"question": "anything?"})
            assert "add_files" in text(empty)  # nothing indexed: says how to add documents

            relative = error(await client.call_tool("add_files", {"paths": ["docs"]}))
            assert "not an absolute path" in relative
            assert "does not exist" in error(
                await client.call_tool("add_files", {"paths": [str(tmp_path / "nope")]})
            )
            added = await client.call_tool("add_files", {"paths": [str(folder)], "tags": ["t"]})
            assert not added.is_error, text(added)
            assert added.structured_content["finished"] is True
            assert added.structured_content["indexed_documents"] == 1
            assert added.structured_content["indexed_pages"] == 2
            [locked] = added.structured_content["failed"]
            assert locked["source"] == "locked.pdf"
            assert 'add_files as passwords={"NAME.pdf"' in locked["problem"]  # worded for tools
            again = await client.call_tool("add_files", {"paths": [str(folder / "hello.pdf")]})
            assert again.structured_content["skipped_documents"] == 1

            [doc] = (await client.call_tool("list_documents", {})).structured_content["documents"]
            assert (doc["source"], doc["pages"], doc["tags"]) == ("hello.pdf", 2, ["t"])

            found = await client.call_tool(
                "search_pages", {"query": "hello", "tags": ["t"], "include_images": True}
            )
            assert not found.is_error, text(found)
            assert [h["page"] for h in found.structured_content["hits"]] in ([1, 2], [2, 1])
            assert all(p.startswith(PNG_MAGIC) for p in images(found)) and images(found)

            answer = await client.call_tool("ask", {"question": "What does it say?"})
            assert not answer.is_error, text(answer)
            assert answer.structured_content["citations"]

            page = await client.call_tool("get_page_image", {"doc_id": doc["doc_id"], "page": 2})
            assert images(page)[0].startswith(PNG_MAGIC)
            assert "is not a document id" in error(
                await client.call_tool("get_page_image", {"doc_id": "/etc/passwd", "page": 1})
            )

    run(main)
