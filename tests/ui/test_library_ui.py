"""Each library's web UI (/libraries/NAME/) behind scoped keys, against the real server
(uvicorn, the UI mounted, gradio_client as the browser's stand-in): a key logs in only where
it may read, under its own name; a read key sees documents but cannot change them; the page's
library list offers what the key may open; the guard's checks hold under the library path."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag.keys import add_key, keys_path
from rag.server.app import create_app
from rag.service import PageRAG
from tests.pdfs import make_pdf
from tests.serving import running_server

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
ROOT = {"Authorization": "Bearer root-key"}


def ui(url: str, user: str, key: str) -> Any:
    from gradio_client import Client

    return Client(url, auth=(user, key), verbose=False, download_files=False)


def cannot_log_in(url: str, user: str, key: str) -> bool:
    answer = httpx.post(f"{url}/login", data={"username": user, "password": key})
    return answer.status_code == 400  # Gradio's answer to a failed login


def login(url: str, user: str, key: str) -> httpx.Cookies:
    answer = httpx.post(f"{url}/login", data={"username": user, "password": key})
    assert answer.status_code == 200, answer.text
    return answer.cookies


def listed(url: str, user: tuple[str, str] | None) -> list[str] | int:
    """The UI addresses on the library list of the UI at `url` (its status when not 200)."""
    cookies = login(url, *user) if user else None
    page = httpx.get(f"{url}/libraries", cookies=cookies)
    if page.status_code != 200:
        return page.status_code
    return re.findall(r'<li><a href="([^"]+)"', page.text)


def add_document(url: str, library: str, path: Path) -> None:
    with path.open("rb") as fh:
        up = httpx.post(
            f"{url}/api/v1/libraries/{library}/documents",
            files={"files": (path.name, fh.read())},
            headers=ROOT,
        )
    assert up.status_code == 202, up.text
    end = time.monotonic() + 120
    location = httpx.URL(url).join(up.headers["location"])
    while (job := httpx.get(location, headers=ROOT).json())["stage"] not in ("done", "failed"):
        assert time.monotonic() < end, job
        time.sleep(0.2)
    assert job["stage"] == "done", job


def test_library_uis_follow_the_keys(
    make_serving_service: Callable[..., PageRAG], tmp_path: Path
) -> None:
    service = make_serving_service("libs-ui", api_keys="root-key")
    keys = keys_path(service.settings)
    reader = add_key(keys, "a-reader", "read", ["a"])
    writer = add_key(keys, "a-writer", "write", ["a"])
    default_reader = add_key(keys, "d-reader", "read", ["default"])
    app = create_app(service, warm_up=False)
    with running_server(app) as url:
        for name in ("a", "b"):
            made = httpx.post(f"{url}/api/v1/libraries", json={"name": name}, headers=ROOT)
            assert made.status_code == 201, made.text
        pdf = make_pdf(tmp_path / "alpha.pdf", ["Alpha page one", "Alpha page two"])
        add_document(url, "a", pdf)
        a_ui = f"{url}/libraries/a"

        # A keys-file key logs in under its own name, where it may read; nowhere else.
        assert cannot_log_in(a_ui, "someone", reader)  # not the key's name
        assert cannot_log_in(f"{url}/libraries/b", "a-reader", reader)
        assert cannot_log_in(url, "a-reader", reader)  # the UI at / is the default library
        # The root key takes any other name, but never a keys-file key's name.
        assert cannot_log_in(a_ui, "a-writer", "root-key")

        # The reader sees library a's documents (not the default library's), and cannot
        # change anything: the events refuse, naming the key it would need.
        as_reader = ui(a_ui, "a-reader", reader)
        assert [d["source"] for d in as_reader.predict(api_name="/documents")] == ["alpha.pdf"]
        [doc] = as_reader.predict(api_name="/documents")
        refused = as_reader.predict(doc["doc_id"], api_name="/delete")
        assert "may only read library 'a'" in refused and "--role write" in refused
        from gradio_client import handle_file

        *_, report = as_reader.predict([handle_file(str(pdf))], "", api_name="/upload")
        assert report.startswith("**Not added:**") and "may only read" in report
        # The writer may delete there.
        as_writer = ui(a_ui, "a-writer", writer)
        done = as_writer.predict(doc["doc_id"], api_name="/delete")
        assert done.startswith("Deleted **alpha.pdf**")
        assert as_writer.predict(api_name="/documents") == []
        # The UI at / refuses a read key's changes as well.
        at_root = ui(url, "d-reader", default_reader)
        *_, report = at_root.predict([handle_file(str(pdf))], "", api_name="/upload")
        assert report.startswith("**Not added:**") and "may only read library 'default'" in report
        assert at_root.predict(api_name="/documents") == []

        # The root key opens every library's UI under any name.
        assert ui(f"{url}/libraries/b", "admin", "root-key").predict(api_name="/documents") == []

        # Each UI links to the libraries its session may open: only those, as links to their
        # UIs; nothing without a login (the cookie of a library's UI is scoped to its path).
        assert listed(a_ui, None) == 401
        assert listed(a_ui, ("a-reader", reader)) == ["/libraries/a/"]
        assert listed(url, ("d-reader", default_reader)) == ["/"]
        assert listed(url, ("admin", "root-key")) == ["/", "/libraries/a/", "/libraries/b/"]
        config = httpx.get(f"{a_ui}/config", cookies=login(a_ui, "a-reader", reader)).text
        assert "/libraries/a/libraries" in config  # the link in the page's header

        # The guard's checks apply under a library's path as at the root.
        proxy = httpx.get(f"{a_ui}/gradio_api/file=http://127.0.0.1:1/x")
        assert proxy.status_code == 403
        beat = httpx.get(f"{a_ui}/gradio_api/heartbeat/abc")
        assert beat.status_code == 401
        # No such library: 404 naming the fix; the default library's UI is the one at /.
        missing = httpx.get(f"{url}/libraries/zz/")
        assert missing.status_code == 404 and "pagerag libraries" in missing.text
        moved = httpx.get(f"{url}/libraries/default/", follow_redirects=False)
        assert moved.status_code in (302, 307) and moved.headers["location"] == "/"
        # A deleted library's UI goes with it.
        assert httpx.delete(f"{url}/api/v1/libraries/b", headers=ROOT).status_code == 200
        assert httpx.get(f"{url}/libraries/b/").status_code == 404
    service.close()
