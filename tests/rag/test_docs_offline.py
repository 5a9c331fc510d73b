"""/docs works offline (issue 11, item 12): Swagger UI's files come from the server itself, not a
CDN, and are public like /docs and /openapi.json, with API keys set too. Checked over HTTP and in
a real browser that is refused every request to another host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from rag.config import Settings
from rag.server.app import create_app
from rag.service import PageRAG
from tests.serving import running_server

pytestmark = [
    # Gradio's queue still uses pandas options that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

# Starlette takes the type from the system's mimetypes table: .js is either name for it.
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole server, web UI mounted at / and API keys on; no model is needed for /docs."""
    data = tmp_path_factory.mktemp("docs")
    settings = Settings(
        _env_file=None,
        data_dir=data,
        retriever_model=str(data / "no-model"),
        device="cpu",
        api_keys="docs-key",
    )
    service = PageRAG(settings)
    try:
        with running_server(create_app(service, warm_up=False)) as url:
            yield url
    finally:
        service.close()


def test_docs_page_and_its_assets_are_served_here(server: str) -> None:
    page = httpx.get(server + "/docs")  # no key: the docs are public, as before
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text.replace("window.location.origin", "")  # no other host at all
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {Path(a).suffix for a in assets} == set(CONTENT_TYPES)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//")
        answer = httpx.get(server + asset)
        assert answer.status_code == 200, asset
        assert answer.headers["content-type"].startswith(CONTENT_TYPES[Path(asset).suffix]), asset
    # The stylesheet pulls in nothing either (its images are data: URLs).
    css = httpx.get(server + next(a for a in assets if a.endswith(".css"))).text
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", css)
    [spec] = re.findall(r"url: '([^']+)'", page.text)
    assert httpx.get(server + spec).json()["info"]["title"] == "PageRAG"
    # No ReDoc page (it would load its script and fonts from a CDN).
    assert httpx.get(server + "/redoc").status_code == 404


@pytest.mark.browser
def test_docs_render_in_a_browser_without_network(server: str) -> None:
    from tests.ui.test_browser import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium found (install Debian's `chromium`, or set PAGERAG_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api")
    origin = urlsplit(server).netloc
    elsewhere: list[str] = []

    def only_here(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).netloc == origin or url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_here)
            page.goto(server + "/docs")
            page.wait_for_selector(".opblock-summary", timeout=30_000)
            operations = page.locator(".opblock-summary").count()
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    assert operations == sum(len(methods & set(ops)) for ops in paths.values()) > 0
    assert title.startswith("PageRAG")
    assert elsewhere == []
